"""TLS and client-id authorization with real certificates, real gRPC and real server processes.

A module-scoped 3-replica cluster serves mutual TLS with certificates made by
``exchange.certs``; traders alice (ids 1000-1999) and bob (2000-2999, plus 77 from a
``--client-map``) trade, mallory holds a certificate of another CA. The last tests pause the
leader (failover over TLS) and kill -9 a follower (rejoin by a snapshot fetched over TLS).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from exchange.certs import make_certs
from exchange.cluster import LocalCluster, free_ports
from exchange.config import ConfigError
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.state_transfer import TransferFailed, fetch_snapshot
from exchange.tls import (
    ClientTls,
    check_listen,
    identity_of,
    is_loopback,
    load_server_tls,
    open_channel,
    parse_client_map,
    parse_id_ranges,
)
from traders.client import ClusterConnection, ExchangeUnreachable, RequestRejected, TraderClient
from traders.load import ACKED, _outcome
from traders.session import SessionClient

LEADER_TIMEOUT_S = 15.0
CATCH_UP_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 20.0
RESTART_TIMEOUT_S = 60.0  # every server restarted at once on a loaded 2-core machine


# ---- units: id lists, client maps, listen addresses, bad files ------------------------------

def test_id_ranges_and_client_maps_parse_or_fail_with_the_line():
    assert parse_id_ranges("5, 100-199") == ((5, 5), (100, 199))
    mapping = parse_client_map("# traders\nalice = 1000-1999\nbob=7 # one id\nbob = 9\n", "m")
    assert mapping == {"alice": ((1000, 1999),), "bob": ((7, 7), (9, 9))}
    with pytest.raises(ConfigError, match=r"^m:2: expected 'identity = ids'"):
        parse_client_map("a = 1\nno equals sign\n", "m")
    with pytest.raises(ConfigError, match=r"^m:1: 'x' is not an id"):
        parse_client_map("a = x\n", "m")
    with pytest.raises(ConfigError, match="FIRST <= LAST"):
        parse_id_ranges("0")


def test_plaintext_is_refused_on_a_non_loopback_listen_address():
    check_listen("127.0.0.1:5000", None, insecure=False)
    check_listen("localhost:5000", None, insecure=False)
    check_listen("[::1]:5000", None, insecure=False)
    for address in ("0.0.0.0:5000", "[::]:5000", "192.0.2.7:5000", "no-such-host.invalid:1"):
        assert not is_loopback(address.rpartition(":")[0])
        with pytest.raises(ConfigError, match="refusing plaintext gRPC on non-loopback"):
            check_listen(address, None, insecure=False)
        check_listen(address, None, insecure=True)


def test_bad_tls_files_are_one_clear_error(tmp_path, certs):
    server = (str(certs / "server-1.crt"), str(certs / "server-1.key"))
    with pytest.raises(ConfigError, match=r"^--tls-key .*server-2.key is not the key of"):
        load_server_tls(server[0], str(certs / "server-2.key"), None, None, None)
    with pytest.raises(ConfigError, match=r"^--tls-cert .*missing.crt: No such file"):
        load_server_tls(str(tmp_path / "missing.crt"), server[1], None, None, None)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^--client-ca .*junk.pem: not a PEM certificate"):
        load_server_tls(*server, str(junk), None, None)
    with pytest.raises(ConfigError, match="--client-map needs --client-ca"):
        load_server_tls(*server, None, None, str(junk))
    with pytest.raises(ConfigError, match="--client-ca needs --tls-cert"):
        load_server_tls(None, None, str(certs / "ca.crt"), None, None)
    with pytest.raises(ConfigError, match="need --tls-ca"):
        ClientTls.from_files(None, server[0], server[1])


# ---- the cluster ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certs(directory, 3, "alice,bob", [], 1000, new_ca=False)
    (directory / "extra-ids.txt").write_text("bob = 77\n")
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("other-ca")
    make_certs(directory, 1, "mallory=1000-1999", [], 1000, new_ca=False)
    return directory


def _client_tls(directory: Path, name: str | None, ca: Path | None = None) -> ClientTls:
    tls = ClientTls.from_files(str((ca or directory) / "ca.crt"),
                               None if name is None else str(directory / f"{name}.crt"),
                               None if name is None else str(directory / f"{name}.key"))
    assert tls is not None
    return tls


@pytest.fixture(scope="module")
def secure(certs):
    with LocalCluster(3, name="t-tls", tls_dir=certs, symbols=("TLS", "SHT"),
                      extra_args=("--client-map", str(certs / "extra-ids.txt"))) as cluster:
        yield cluster


def _trader(cluster: LocalCluster, tls: ClientTls, client_id: int, first: int | None = None,
            give_up_s: float = 15.0) -> TraderClient:
    addresses = tuple(cluster.addresses.values())
    connection = ClusterConnection(addresses, tls)
    if first is not None:
        connection.leader_guess = cluster.addresses[first]
    return TraderClient(connection, client_id, give_up_s=give_up_s,
                        first_seq=time.time_ns() // 1000)


def _acked(reply: pb.OrderReply) -> bool:
    """Executed by the exchange and accepted by the engine."""
    return reply.log_index > 0 and _outcome(reply) == ACKED


def _orders_applied(cluster: LocalCluster) -> int:
    leader = cluster.wait_for_leader(LEADER_TIMEOUT_S)
    return cluster.status(leader).orders_applied


@pytest.mark.slow
def test_an_order_is_acknowledged_over_mutual_tls_after_a_follower_redirect(secure, certs):
    leader = secure.wait_for_leader(LEADER_TIMEOUT_S)
    follower = next(i for i in secure.addresses if i != leader)
    alice = _trader(secure, _client_tls(certs, "trader-alice"), 1000, first=follower)
    result = alice.submit("TLS", pb.BUY, 100, 5)
    assert _acked(result.reply) and result.reply.log_index > 0, result.reply
    assert result.redirects >= 1 and result.server == secure.addresses[leader]
    log = secure.servers[leader].log_path.read_text()
    assert "mutual TLS" in log  # the start line says which security is on


@pytest.mark.slow
def test_a_client_id_the_certificate_does_not_allow_is_permission_denied(secure, certs):
    alice_tls = _client_tls(certs, "trader-alice")
    before = _orders_applied(secure)
    for call in (lambda c: c.submit("TLS", pb.SELL, 101, 1), lambda c: c.cancel("2000.1"),
                 lambda c: c.replace("2000.1", new_price=99)):
        with pytest.raises(RequestRejected, match=r"PERMISSION_DENIED: client id 2000 is not "
                           r"allowed for certificate 'alice' \(its client ids: 1000-1999\)"):
            call(_trader(secure, alice_tls, 2000))
    bob = _trader(secure, _client_tls(certs, "trader-bob"), 77)  # from --client-map
    assert _acked(bob.submit("TLS", pb.SELL, 150, 1).reply)
    assert _orders_applied(secure) == before + 1  # nothing refused reached the log


@pytest.mark.slow
def test_a_session_message_with_one_foreign_client_id_is_refused_whole(secure, certs):
    connection = ClusterConnection(tuple(secure.addresses.values()),
                                   _client_tls(certs, "trader-alice"))
    connection.leader_guess = secure.addresses[secure.wait_for_leader(LEADER_TIMEOUT_S)]
    session = SessionClient(connection, 1001, first_seq=time.time_ns() // 1000)
    try:
        session.send([session.submit_order("TLS", pb.BUY, 90, 1)])
        assert [_acked(r) for r in session.receive()] == [True]
        before = _orders_applied(secure)
        mine = session.submit_order("TLS", pb.BUY, 91, 1)
        foreign = pb.SessionOrder(submit=pb.SubmitOrderRequest(
            client_id=2001, seq=session.next_seq(), symbol="TLS", side=pb.BUY, price=91,
            quantity=1))
        session.send([mine, foreign])
        with pytest.raises(RequestRejected, match="PERMISSION_DENIED: client id 2001 is not "
                           "allowed for certificate 'alice'"):
            session.receive()
        assert _orders_applied(secure) == before  # neither order of the message ran
    finally:
        session.close()
        connection.close()


def _status(address: str, tls: ClientTls | None) -> pb.Status:
    with open_channel(address, tls) as channel:
        stub = pb_grpc.ExchangeStub(channel)
        status: pb.Status = stub.GetStatus(pb.StatusRequest(), timeout=3)
        return status


@pytest.mark.slow
def test_callers_without_a_certificate_of_the_ca_are_refused(secure, certs, other_ca):
    address = secure.addresses[1]
    assert _status(address, _client_tls(certs, "trader-bob")).replica_id == 1
    refused = {
        "no certificate": _client_tls(certs, None),
        "another CA's certificate": _client_tls(other_ca, "trader-mallory", ca=certs),
        "plaintext": None,
    }
    for what, tls in refused.items():
        with pytest.raises(grpc.RpcError) as caught:
            _status(address, tls)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, what
    anonymous = _trader(secure, _client_tls(certs, None), 1000, give_up_s=1.0)
    with pytest.raises(ExchangeUnreachable, match="closes connections without one: pass "
                       "--tls-cert/--tls-key"):
        anonymous.submit("TLS", pb.BUY, 100, 1)
    mallory = _trader(secure, _client_tls(other_ca, "trader-mallory", ca=certs), 1000,
                      give_up_s=1.0)
    with pytest.raises(ExchangeUnreachable, match="refuses the TLS handshake"):
        mallory.submit("TLS", pb.BUY, 100, 1)
    plain = TraderClient(ClusterConnection((address,)), 1000, give_up_s=1.0)
    with pytest.raises(ExchangeUnreachable, match="closes plaintext connections: pass --tls-ca"):
        plain.submit("TLS", pb.BUY, 100, 1)
    with pytest.raises(grpc.RpcError):  # a client that does not trust the servers' CA
        _status(address, _client_tls(certs, "trader-bob", ca=other_ca))


@pytest.mark.slow
def test_only_server_certificates_may_fetch_a_snapshot(secure, certs):
    address = secure.addresses[secure.wait_for_leader(LEADER_TIMEOUT_S)]
    with pytest.raises(TransferFailed, match="PERMISSION_DENIED: FetchSnapshot serves exchange "
                       "servers only"):
        fetch_snapshot(address, 9, lambda i, t: None, lambda d: None,
                       tls=_client_tls(certs, "trader-alice"))
    index, data = fetch_snapshot(address, 2, lambda i, t: None, lambda d: None,
                                 tls=_client_tls(certs, "server-2"))
    assert index > 0 and data


@pytest.mark.slow
def test_traders_load_runs_over_mutual_tls_with_the_certificates_ids(secure, certs, tmp_path):
    command = [sys.executable, "-m", "traders", "load", "--servers", secure.server_uris,
               "--traders", "2", "--test-ms", "800", "--no-progress", "--no-plots",
               "--latency-file", "", "--tls-ca", str(certs / "ca.crt"),
               "--tls-cert", str(certs / "trader-bob.crt"),
               "--tls-key", str(certs / "trader-bob.key")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mutual TLS, client ids 2000..2001" in out.stdout, out.stdout
    assert "failed 0" in out.stdout, out.stdout
    for mode in ([], ["--stream"]):  # ids the certificate does not allow: stopped at once
        started = time.monotonic()
        out = subprocess.run([*command[:-6], "--test-ms", "20000", "--client-ids", "1000-1001",
                              *command[-6:], *mode], capture_output=True, text=True,
                             timeout=120, check=False, cwd=tmp_path)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "load: stopped: the exchange refused this caller: PERMISSION_DENIED: client id " \
            "100" in out.stderr and "certificate 'bob'" in out.stderr, out.stderr
        assert time.monotonic() - started < 20, "the run went on after the refusal"


@pytest.mark.slow
def test_the_shell_trades_over_mutual_tls_as_its_certificates_first_id(secure, certs):
    tls = ["--tls-ca", str(certs / "ca.crt"), "--tls-cert", str(certs / "trader-bob.crt"),
           "--tls-key", str(certs / "trader-bob.key")]
    for mode in ([], ["--unary"]):
        out = subprocess.run(
            [sys.executable, "-m", "traders", "shell", "--servers", secure.server_uris, *tls,
             *mode], input="buy SHT 3 70\nbook SHT\nstatus\nquit\n", text=True,
            capture_output=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        seq = out.stdout.split("client id 2000, first seq ")[1].split(";")[0]
        assert int(seq) > 10**15  # the time in microseconds: above any earlier run's seqs
        assert f"accept 2000.{seq}" in out.stdout, out.stdout
        assert "leader" in out.stdout and "error" not in out.stdout, out.stdout


@pytest.mark.slow
def test_the_watcher_polls_and_probes_over_mutual_tls(secure, certs):
    from exchange.watch import Watcher

    watcher = Watcher(secure.addresses, ("TLS",), probe_rate=20.0,
                      tls=_client_tls(certs, "trader-alice"))
    watcher.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            with watcher.lock:
                roles = sorted(view.role for view in watcher.model.servers.values())
                probed = watcher.model.latency_percentiles_us()[0]
            if roles == ["follower", "follower", "leader"] and probed >= 3:
                break
            assert time.monotonic() < deadline, (roles, probed)
            time.sleep(0.05)
    finally:
        watcher.stop()


@pytest.mark.slow
def test_failover_over_tls(secure, certs):
    alice = _trader(secure, _client_tls(certs, "trader-alice"), 1002)
    assert _acked(alice.submit("TLS", pb.BUY, 80, 1).reply)
    leader = secure.wait_for_leader(LEADER_TIMEOUT_S)
    secure.control(leader, "p")
    try:
        new_leader = secure.wait_for_leader(LEADER_TIMEOUT_S, exclude=leader)
        result = alice.submit("TLS", pb.BUY, 81, 1)
        assert _acked(result.reply) and result.server == secure.addresses[new_leader]
    finally:
        secure.control(leader, "r")
    statuses = secure.wait_converged(CONVERGE_TIMEOUT_S)
    assert len({s.state_digest for s in statuses.values()}) == 1


@pytest.mark.slow
def test_a_follower_killed_and_restarted_rejoins_over_tls(secure, certs):
    alice = _trader(secure, _client_tls(certs, "trader-alice"), 1003)
    for i in range(20):
        alice.submit("TLS", pb.BUY if i % 2 else pb.SELL, 100 + i % 5, 1)
    leader = secure.wait_for_leader(LEADER_TIMEOUT_S)
    follower = next(i for i in secure.addresses if i != leader)
    secure.kill_server(follower)
    for i in range(20):
        alice.submit("TLS", pb.BUY if i % 2 else pb.SELL, 100 + i % 5, 1)
    secure.start_server(follower)  # the same command line
    status = secure.wait_caught_up(follower, CATCH_UP_TIMEOUT_S)
    assert status.role in ("follower", "leader")
    statuses = secure.wait_converged(CONVERGE_TIMEOUT_S)
    assert len({s.state_digest for s in statuses.values()}) == 1
    deadline = time.monotonic() + 10  # logged within a role-poll period
    while "caught up at index" not in (log := secure.servers[follower].log_path.read_text()):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "bytes from server" in log, log  # a peer's snapshot, fetched over mutual TLS


@pytest.mark.slow
def test_a_durable_cluster_cold_starts_over_tls_after_every_server_is_killed(certs, tmp_path):
    with LocalCluster(3, name="t-tls-dur", tls_dir=certs, data_dir=tmp_path / "data",
                      symbols=("DUR",)) as cluster:
        alice = _trader(cluster, _client_tls(certs, "trader-alice"), 1004)
        for i in range(10):
            assert _acked(alice.submit("DUR", pb.BUY, 100 + i, 1).reply)
        for replica_id in cluster.addresses:  # the start gate asks its peers over mutual TLS
            cluster.kill_server(replica_id)
        for replica_id in cluster.addresses:
            cluster.start_server(replica_id)
        cluster.wait_for_leader(RESTART_TIMEOUT_S)
        statuses = cluster.wait_converged(RESTART_TIMEOUT_S)
        assert {s.orders_applied for s in statuses.values()} == {10}, statuses
        assert len({s.state_digest for s in statuses.values()}) == 1
        logs = "".join(cluster.servers[i].log_path.read_text() for i in cluster.addresses)
        assert "cold start at index" in logs


@pytest.mark.slow
def test_the_demo_runs_over_mutual_tls(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--tls", "--seconds", "3", "--traders", "2",
         "--no-progress", "--no-plots"],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mutual TLS, certificates in" in out.stdout
    assert "replicas' digests: ALL EQUAL" in out.stdout and "failed 0" in out.stdout
    certs_dir = out.stdout.split("certificates in ")[1].split(")")[0]
    assert not Path(certs_dir).exists()  # removed at the end


# ---- serve's command line -------------------------------------------------------------------

def _serve(args: list[str], port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "exchange", "serve", "--id", "1", "--server-uris",
               f"1=127.0.0.1:{port}", "--replicas", "1", "--no-fifo", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _non_loopback_ip() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5,
                             check=False).stdout.split()
        for address in out:
            if ":" not in address and not is_loopback(address):
                return address
    return "0.0.0.0"


@pytest.mark.slow
def test_serve_refuses_plaintext_on_a_non_loopback_address_without_insecure(certs):
    port = free_ports(1)[0]
    for host in sorted({"0.0.0.0", _non_loopback_ip()}):
        server = _serve(["--listen", f"{host}:{port}"], port)
        _, err = server.communicate(timeout=60)
        assert server.returncode == 2, err
        assert err.count("\n") == 1 and "refusing plaintext gRPC on non-loopback address " \
            f"{host}:{port}" in err and "--insecure" in err, err
    for extra in (["--insecure"], ["--tls-cert", str(certs / "server-1.crt"),
                                   "--tls-key", str(certs / "server-1.key")]):
        server = _serve(["--listen", f"0.0.0.0:{port}", *extra], port)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line.startswith("READY 1 "), (line, server.stderr.read()
                                                  if server.poll() is not None else "")
        finally:
            server.terminate()
            server.communicate(timeout=30)


@pytest.mark.slow
def test_serve_with_a_key_of_another_certificate_exits_with_one_line(certs):
    port = free_ports(1)[0]
    server = _serve(["--tls-cert", str(certs / "server-1.crt"), "--tls-key",
                     str(certs / "trader-alice.key"), "--client-ca", str(certs / "ca.crt")], port)
    _, err = server.communicate(timeout=60)
    assert server.returncode == 2 and err.count("\n") == 1, err
    assert "is not the key of --tls-cert" in err and "Traceback" not in err


def test_the_identity_of_a_certificate_includes_client_map_ids(certs):
    bob = identity_of((certs / "trader-bob.crt").read_bytes(), {"bob": ((77, 77),)})
    assert bob.may_use(77) and bob.may_use(2000) and not bob.may_use(1000)
    assert socket.gethostname() in identity_of((certs / "server-1.crt").read_bytes(), {}).names
