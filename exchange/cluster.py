"""A cluster of exchange servers on this host, as subprocesses (demo, benchmark, tests).

Rule 1: ``LocalCluster`` owns everything it starts: the server processes, their FIFOs, their log
        files and the cluster's shared memory; ``stop`` removes all of it (also after a failed start
        and on Ctrl-C, through the context manager), and each server is stopped by its own pid.
        Servers also exit by themselves when the launching process dies (``--parent-pid``).
Rule 2: every cluster gets a fresh cluster id and fresh ports, so runs never see each other's
        registry entries or regions; stale shared memory of the same id is removed before start.
Rule 4: with ``data_dir`` every server gets ``--data-dir data_dir/server-<id>`` (and
        ``--durability``); the directories outlive ``stop`` (they are the point), and a restarted
        server reuses its own. ``cluster_id`` fixes the cluster id (a data directory belongs to
        one cluster: a second run on the same directories must pass the same id).
Rule 5: with ``tls_dir`` (a directory ``python -m exchange certs`` made) every server serves
        mutual TLS with ``server-<id>.crt`` and ``--client-ca ca.crt``, and the launcher's own
        status calls present server 1's certificate (a launcher holds its servers' keys; a
        server certificate names no client id, so the launcher can read but not trade).
Rule 6: ``symbols`` is every server's ``--symbols`` (None: the servers' default list,
        exchange.config.SYMBOLS_DEFAULT); a restarted server gets the same list.
Rule 3: ``start`` returns only when every server answers and (replicated) they agree on a leader;
        otherwise it raises ``ClusterError`` with the tail of the servers' logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from exchange.config import format_server_uris
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls
from traders.client import open_channel

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 15


class ClusterError(RuntimeError):
    """The cluster did not start or did not reach the expected state; the message says why."""


@dataclass(slots=True)
class ServerProcess:
    replica_id: int
    address: str
    fifo_path: str
    log_path: Path
    process: subprocess.Popen[bytes]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports the kernel just reported free on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cleanup_shared_memory(cluster_id: str) -> int:
    """Remove the cluster's shared-memory regions and registry entries (if consensus is here)."""
    try:
        from consensus.fabric.shm import cleanup
    except ImportError:
        return 0
    try:
        return cleanup(cluster_id)
    except (OSError, ValueError):
        return 0


class LocalCluster:
    """``replicas`` servers (1 = the unreplicated baseline) on 127.0.0.1 (see module rules)."""

    def __init__(
        self,
        replicas: int = 3,
        fabric: str = "shm",
        name: str = "cluster",
        extra_args: tuple[str, ...] = (),
        data_dir: str | Path | None = None,
        durability: str | None = None,
        cluster_id: str | None = None,
        tls_dir: str | Path | None = None,
        symbols: tuple[str, ...] | None = None,
    ) -> None:
        assert replicas == 1 or replicas >= 3, replicas
        self.tls_dir = None if tls_dir is None else Path(tls_dir)  # Rule 5
        self.tls = None if self.tls_dir is None else ClientTls.from_files(
            str(self.tls_dir / "ca.crt"), str(self.tls_dir / "server-1.crt"),
            str(self.tls_dir / "server-1.key"))
        self.symbols = symbols  # Rule 6
        self.replicas = replicas
        self.fabric = fabric
        self.cluster_id = cluster_id or f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.extra_args = extra_args
        # Rule 4: server N keeps its journal and snapshots in ``data_dir/server-N``.
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.durability = durability
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mu-{name}-"))
        ports = free_ports(replicas)
        self.addresses = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.servers: dict[int, ServerProcess] = {}
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, pb_grpc.ExchangeStub] = {}

    @property
    def server_uris(self) -> str:
        return format_server_uris(self.addresses)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        cleanup_shared_memory(self.cluster_id)
        for replica_id in self.addresses:
            self.start_server(replica_id)
        deadline = time.monotonic() + timeout_s
        for replica_id in self.addresses:
            self._wait_answering(replica_id, deadline)
        if self.replicas > 1:
            self.wait_for_leader(deadline - time.monotonic())

    def start_server(self, replica_id: int) -> ServerProcess:
        """Start (or restart) server ``replica_id``; it answers shortly after."""
        fifo_path = str(self.workdir / f"fifo-{replica_id}")
        log_path = self.workdir / f"server-{replica_id}.log"
        command = [
            sys.executable, "-m", "exchange", "serve", "--id", str(replica_id),
            "--server-uris", self.server_uris, "--replicas", str(self.replicas),
            "--fabric", self.fabric, "--cluster-id", self.cluster_id, "--fifo", fifo_path,
            "--parent-pid", str(os.getpid()), *self.extra_args,
        ]
        if self.tls_dir is not None:
            command += ["--tls-cert", str(self.tls_dir / f"server-{replica_id}.crt"),
                        "--tls-key", str(self.tls_dir / f"server-{replica_id}.key"),
                        "--client-ca", str(self.tls_dir / "ca.crt")]
        if self.symbols is not None:
            command += ["--symbols", ",".join(self.symbols)]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.server_data_dir(replica_id))]
            if self.durability is not None:
                command += ["--durability", self.durability]
        env = {k: v for k, v in os.environ.items()
               if k not in ("SID", "SERVER_URIS", "MU_DATA_DIR")}
        # Ctrl-C must not land between the fork and the bookkeeping (an untracked server would
        # outlive stop()): hold SIGINT until the server is recorded.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    command, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                )
            server = ServerProcess(replica_id, self.addresses[replica_id], fifo_path, log_path,
                                   process)
            self.servers[replica_id] = server
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return server

    def server_data_dir(self, replica_id: int) -> Path:
        """Server ``replica_id``'s data directory (Rule 4)."""
        assert self.data_dir is not None
        return self.data_dir / f"server-{replica_id}"

    def stub(self, replica_id: int) -> pb_grpc.ExchangeStub:
        stub = self._stubs.get(replica_id)
        if stub is None:
            channel = open_channel(self.addresses[replica_id], self.tls)
            self._channels[replica_id] = channel
            stub = pb_grpc.ExchangeStub(channel)  # type: ignore[no-untyped-call]
            self._stubs[replica_id] = stub
        return stub

    def status(self, replica_id: int, timeout_s: float = STATUS_TIMEOUT_S) -> pb.Status:
        status: pb.Status = self.stub(replica_id).GetStatus(pb.StatusRequest(), timeout=timeout_s)
        return status

    def statuses(self) -> dict[int, pb.Status | None]:
        result: dict[int, pb.Status | None] = {}
        for replica_id in self.addresses:
            try:
                result[replica_id] = self.status(replica_id)
            except grpc.RpcError:
                result[replica_id] = None
        return result

    def _wait_answering(self, replica_id: int, deadline: float) -> None:
        server = self.servers[replica_id]
        while True:
            if server.process.poll() is not None:
                raise ClusterError(
                    f"server {replica_id} exited with status {server.process.returncode}"
                    f"\n{self.log_tail(replica_id)}"
                )
            try:
                self.status(replica_id, timeout_s=0.5)
                return
            except grpc.RpcError:
                pass
            if time.monotonic() >= deadline:
                raise ClusterError(f"server {replica_id} did not answer within "
                                   f"{START_TIMEOUT_S:.0f} s\n{self.log_tail(replica_id)}")
            time.sleep(POLL_INTERVAL_S)

    def wait_for_leader(self, timeout_s: float, exclude: int | None = None) -> int:
        """Wait until a leader (other than ``exclude``) is elected and every live, unpaused
        server names it; return its id."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        last: dict[int, pb.Status | None] = {}
        while True:
            last = self.statuses()
            live = [s for s in last.values() if s is not None and s.role != "paused"]
            leaders = {s.replica_id for s in live if s.role == "leader"}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader != exclude and all(s.leader_id == leader for s in live):
                    return leader
            if time.monotonic() >= deadline:
                roles = {i: (s.role, s.leader_id) if s else None for i, s in last.items()}
                raise ClusterError(f"no agreed leader within {timeout_s:.1f} s: {roles}\n"
                                   + "\n".join(self.log_tail(i) for i in self.addresses))
            time.sleep(POLL_INTERVAL_S)

    def leader_id(self) -> int | None:
        """The server most servers name as leader (a deposed leader may claim the role for one
        more scan, until it reads that a majority granted another), or None."""
        votes: dict[int, int] = {}
        for status in self.statuses().values():
            if status is not None and status.role != "paused" and status.leader_id:
                votes[status.leader_id] = votes.get(status.leader_id, 0) + 1
        if not votes:
            return None
        return max(votes, key=lambda replica_id: (votes[replica_id], -replica_id))

    def control(self, replica_id: int, command: str) -> None:
        """Write one line (``p`` or ``r``) into server ``replica_id``'s control FIFO."""
        fd = os.open(self.servers[replica_id].fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def wait_converged(self, timeout_s: float) -> dict[int, pb.Status]:
        """Wait until every server answers, none is paused, and all applied the same index;
        return their statuses (the caller compares digests)."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.statuses()
            ready = {i: s for i, s in statuses.items() if s is not None and s.role != "paused"}
            if len(ready) == len(self.addresses):
                indexes = {s.applied_index for s in ready.values()}
                commit = max(s.commit_index for s in ready.values())
                if len(indexes) == 1 and indexes.pop() >= commit:
                    return ready
            if time.monotonic() >= deadline:
                shown = {i: (s.role, s.commit_index, s.applied_index) if s else None
                         for i, s in statuses.items()}
                raise ClusterError(f"servers did not converge within {timeout_s:.1f} s: {shown}")
            time.sleep(POLL_INTERVAL_S)

    def log_tail(self, replica_id: int, lines: int = LOG_TAIL_LINES) -> str:
        server = self.servers.get(replica_id)
        if server is None or not server.log_path.exists():
            return f"(no log for server {replica_id})"
        text = server.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- server {replica_id} log tail ---\n" + "\n".join(text)

    def stop_server(self, replica_id: int, sig: int = signal.SIGTERM) -> None:
        server = self.servers.get(replica_id)
        if server is None or server.process.poll() is not None:
            return
        server.process.send_signal(sig)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(STOP_TIMEOUT_S)

    def kill_server(self, replica_id: int) -> None:
        """``kill -9`` server ``replica_id`` (it loses its memory; ``start_server`` restarts it
        with the same command, and it rejoins by snapshot)."""
        server = self.servers.get(replica_id)
        if server is None or server.process.poll() is not None:
            return
        server.process.kill()
        server.process.wait(STOP_TIMEOUT_S)
        channel = self._channels.pop(replica_id, None)  # its successor listens on a new socket
        self._stubs.pop(replica_id, None)
        if channel is not None:
            channel.close()

    def wait_caught_up(self, replica_id: int, timeout_s: float) -> pb.Status:
        """Wait until server ``replica_id`` answers as a follower or leader (not recovering) and
        has applied what the leader had committed when the wait began; return its status."""
        deadline = time.monotonic() + timeout_s
        target = 0
        leader = self.leader_id()
        if leader is not None and leader != replica_id:
            with contextlib.suppress(grpc.RpcError):
                target = self.status(leader).commit_index
        status: pb.Status | None = None
        while True:
            with contextlib.suppress(grpc.RpcError):
                status = self.status(replica_id)
                if status.role in ("follower", "leader") and status.applied_index >= target:
                    return status
            if time.monotonic() >= deadline:
                shown = (status.role, status.applied_index) if status else "no answer"
                raise ClusterError(f"server {replica_id} did not catch up to {target} within "
                                   f"{timeout_s:.1f} s: {shown}\n{self.log_tail(replica_id)}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every server, remove FIFOs, shared memory and (unless ``keep_logs``) logs."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()
        for replica_id in list(self.servers):
            server = self.servers[replica_id]
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for replica_id in list(self.servers):
            self.stop_server(replica_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.servers[replica_id].fifo_path)
        cleanup_shared_memory(self.cluster_id)
        if not keep_logs:
            for path in self.workdir.glob("*"):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.workdir.rmdir()


@contextlib.contextmanager
def local_cluster(replicas: int = 3, name: str = "cluster") -> Iterator[LocalCluster]:
    with LocalCluster(replicas, name=name) as cluster:
        yield cluster
