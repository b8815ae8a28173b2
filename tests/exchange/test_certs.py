"""``python -m exchange certs``: files, modes, identities, a kept CA, non-overlapping ids."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.certs import make_certs
from exchange.config import ConfigError
from exchange.tls import SERVER_URI_PREFIX, ClientTls, identity_of, load_server_tls


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_command_makes_a_ca_servers_and_traders_with_private_keys(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "certs", str(tmp_path / "c"), "--traders",
         "alice,bob=7", "--servers", "2", "--hosts", "exch1.example,10.1.2.3"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    directory = tmp_path / "c"
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["ca.crt", "ca.key", "client-ids.txt", "server-1.crt", "server-1.key",
                     "server-2.crt", "server-2.key", "trader-alice.crt", "trader-alice.key",
                     "trader-bob.crt", "trader-bob.key"]
    for path in directory.glob("*.key"):
        assert _mode(path) == 0o600, path
    assert _mode(directory / "ca.crt") == 0o644
    server = identity_of((directory / "server-2.crt").read_bytes(), {})
    assert server.server_id == 2 and not server.client_ids
    assert {"localhost", "exch1.example"} <= set(server.names)
    alice = identity_of((directory / "trader-alice.crt").read_bytes(), {})
    assert alice.name == "alice" and alice.server_id is None
    assert alice.client_ids == ((1000, 1999),)
    bob = identity_of((directory / "trader-bob.crt").read_bytes(), {})
    assert bob.client_ids == ((7, 7),) and bob.may_use(7) and not bob.may_use(8)
    assert "alice = 1000-1999" in (directory / "client-ids.txt").read_text()
    # the files load as the server and the clients use them
    tls = load_server_tls(str(directory / "server-1.crt"), str(directory / "server-1.key"),
                          str(directory / "ca.crt"), None, str(directory / "client-ids.txt"))
    assert tls is not None and tls.authorizer is not None and tls.peer is not None
    assert ClientTls.from_files(str(directory / "ca.crt"), str(directory / "trader-bob.crt"),
                                str(directory / "trader-bob.key")) is not None


def test_a_second_run_keeps_the_ca_and_gives_new_traders_fresh_ids(tmp_path):
    make_certs(tmp_path, 1, "alice,bob", [], 1000, new_ca=False)
    ca = (tmp_path / "ca.crt").read_bytes()
    make_certs(tmp_path, 0, "carol,alice", [], 1000, new_ca=False)
    assert (tmp_path / "ca.crt").read_bytes() == ca
    carol = identity_of((tmp_path / "trader-carol.crt").read_bytes(), {})
    alice = identity_of((tmp_path / "trader-alice.crt").read_bytes(), {})
    assert carol.client_ids == ((3000, 3999),)  # after bob's 2000-2999
    assert alice.client_ids == ((1000, 1999),)  # re-issued with the ids it had
    make_certs(tmp_path, 0, "", [], 1000, new_ca=True)
    assert (tmp_path / "ca.crt").read_bytes() != ca


def test_bad_trader_lists_are_one_clear_error(tmp_path):
    for bad, words in (("al ice", "not a usable name"), ("bob=x", "not an id"),
                       ("bob,bob", "twice"), ("bob=5-3", "FIRST <= LAST")):
        with pytest.raises(ConfigError, match=words):
            make_certs(tmp_path / bad.replace(" ", "_").replace("=", "_"), 0, bad, [], 10,
                       new_ca=False)
    out = subprocess.run([sys.executable, "-m", "exchange", "certs", str(tmp_path / "d"),
                          "--servers", "300"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--servers 300" in out.stderr and "Traceback" not in out.stderr


def test_server_certificates_name_their_server_in_a_uri(tmp_path):
    make_certs(tmp_path, 3, "", [], 1000, new_ca=False)
    for replica_id in (1, 2, 3):
        identity = identity_of((tmp_path / f"server-{replica_id}.crt").read_bytes(), {})
        assert f"{SERVER_URI_PREFIX}{replica_id}" in identity.names
        assert identity.server_id == replica_id
