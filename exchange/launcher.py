"""Launching a cluster of server processes on this host (demo, benchmarks, tests): the part that
the exchange's ``LocalCluster`` and kvstores' ``LocalKvCluster`` share.

Rule 1: ``ProcessCluster`` owns everything it starts: the server processes (each in its own
        session, stopped by its own pid), their FIFOs, their log files, its work directory and the
        cluster's shared memory; ``stop`` removes all of it (also after a failed start and on
        Ctrl-C, through the context manager). Servers also exit by themselves when the launching
        process dies (the subclass passes ``--parent-pid``).
Rule 2: every cluster gets a fresh cluster id (unless one is given) and fresh ports, so runs never
        see each other's registry entries or regions; stale shared memory of the same id is
        removed before start.
Rule 3: ``start`` returns only when every server answers and (replicated) they agree on a leader;
        otherwise it raises ``ClusterError`` with the tail of the servers' logs.
Rule 4: a subclass says how a server is started (``command``) and how one is asked for its status
        (``query``, raising one of ``query_errors`` when it does not answer) and what that status
        says (``view``); waiting, killing, restarting and cleaning up are here, once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 0.5  # one status query while waiting for a server to answer
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 15

StatusT = TypeVar("StatusT")


class ClusterError(RuntimeError):
    """The cluster did not start or did not reach the expected state; the message says why."""


@dataclass(slots=True)
class ServerProcess:
    replica_id: int
    address: str
    fifo_path: str
    log_path: Path
    process: subprocess.Popen[bytes]


@dataclass(frozen=True, slots=True)
class View:
    """What the launcher reads from a server's status (Rule 4)."""

    replica_id: int
    role: str  # leader | follower | paused | recovering | ...
    leader_id: int | None
    applied: int
    commit: int


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports the kernel just reported free on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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


class ProcessCluster(Generic[StatusT]):
    """``replicas`` servers (1 = an unreplicated baseline) on 127.0.0.1 (see module rules)."""

    query_errors: tuple[type[Exception], ...] = (OSError,)
    query_timeout_s = 1.0  # one status query (``answer``), unless a caller says otherwise
    env_drop: tuple[str, ...] = ("SID",)  # environment a server must not inherit

    def __init__(self, replicas: int, name: str, extra_args: tuple[str, ...] = (),
                 cluster_id: str | None = None, workdir_prefix: str = "mu") -> None:
        assert replicas == 1 or replicas >= 3, replicas
        self.replicas = replicas
        self.cluster_id = cluster_id or f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.extra_args = extra_args
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{workdir_prefix}-{name}-"))
        self.server_cwd: Path | None = None  # servers' working directory (None: ours)
        ports = free_ports(replicas)
        self.addresses = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.servers: dict[int, ServerProcess] = {}

    # -- what a subclass provides (Rule 4) -------------------------------------------------------
    def command(self, replica_id: int, fifo_path: str) -> list[str]:
        """The command line of server ``replica_id`` (``--parent-pid`` included)."""
        raise NotImplementedError

    def query(self, replica_id: int, timeout_s: float) -> StatusT:
        """Server ``replica_id``'s status; raises one of ``query_errors`` without an answer."""
        raise NotImplementedError

    def view(self, status: StatusT) -> View:
        raise NotImplementedError

    def forget(self, replica_id: int) -> None:
        """Drop what is cached about server ``replica_id`` (it was killed)."""

    def close_clients(self) -> None:
        """Close whatever the subclass opened to talk to the servers."""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
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
        """Start (or restart, with the same command line) server ``replica_id``."""
        fifo_path = str(self.workdir / f"fifo-{replica_id}")
        log_path = self.workdir / f"server-{replica_id}.log"
        command = self.command(replica_id, fifo_path)
        env = {k: v for k, v in os.environ.items() if k not in self.env_drop}
        # Ctrl-C must not land between the fork and the bookkeeping (an untracked server would
        # outlive stop()): hold SIGINT until the server is recorded.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    command, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, cwd=self.server_cwd,
                    start_new_session=True,
                )
            server = ServerProcess(replica_id, self.addresses[replica_id], fifo_path, log_path,
                                   process)
            self.servers[replica_id] = server
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return server

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
        """``kill -9`` server ``replica_id``: it loses its memory; ``start_server`` restarts it
        with the same command line and it rejoins by snapshot."""
        server = self.servers.get(replica_id)
        if server is None or server.process.poll() is not None:
            return
        server.process.kill()
        server.process.wait(STOP_TIMEOUT_S)
        self.forget(replica_id)

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every server; remove FIFOs, shared memory and (unless ``keep_logs``) the work
        directory's files (logs, FIFOs, dumps)."""
        self.close_clients()
        for server in self.servers.values():
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

    # -- observing -------------------------------------------------------------------------------
    def answer(self, replica_id: int, timeout_s: float | None = None) -> StatusT | None:
        """Server ``replica_id``'s status, or None when it does not answer."""
        try:
            return self.query(replica_id, timeout_s or self.query_timeout_s)
        except self.query_errors:
            return None

    def statuses(self) -> dict[int, StatusT | None]:
        return {replica_id: self.answer(replica_id) for replica_id in self.addresses}

    def views(self) -> dict[int, View | None]:
        return {replica_id: None if status is None else self.view(status)
                for replica_id, status in self.statuses().items()}

    def _wait_answering(self, replica_id: int, deadline: float) -> None:
        server = self.servers[replica_id]
        while self.answer(replica_id, ANSWER_TIMEOUT_S) is None:
            if server.process.poll() is not None:
                raise ClusterError(f"server {replica_id} exited with status "
                                   f"{server.process.returncode}\n{self.log_tail(replica_id)}")
            if time.monotonic() >= deadline:
                raise ClusterError(f"server {replica_id} did not answer within "
                                   f"{START_TIMEOUT_S:.0f} s\n{self.log_tail(replica_id)}")
            time.sleep(POLL_INTERVAL_S)

    def wait_for_leader(self, timeout_s: float, exclude: int | None = None) -> int:
        """Wait until a leader (other than ``exclude``) is elected and every live, unpaused
        server names it; return its id."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            last = self.views()
            live = [v for v in last.values() if v is not None and v.role != "paused"]
            leaders = {v.replica_id for v in live if v.role == "leader"}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader != exclude and all(v.leader_id == leader for v in live):
                    return leader
            if time.monotonic() >= deadline:
                roles = {i: (v.role, v.leader_id) if v else None for i, v in last.items()}
                raise ClusterError(f"no agreed leader within {timeout_s:.1f} s: {roles}\n"
                                   + "\n".join(self.log_tail(i) for i in self.addresses))
            time.sleep(POLL_INTERVAL_S)

    def leader_id(self) -> int | None:
        """The server most servers name as leader (a deposed leader may claim the role for one
        more scan, until it reads that a majority granted another), or None."""
        votes: dict[int, int] = {}
        for view in self.views().values():
            if view is not None and view.role != "paused" and view.leader_id:
                votes[view.leader_id] = votes.get(view.leader_id, 0) + 1
        if not votes:
            return None
        return max(votes, key=lambda replica_id: (votes[replica_id], -replica_id))

    def wait_caught_up(self, replica_id: int, timeout_s: float) -> StatusT:
        """Wait until server ``replica_id`` answers as a follower or leader (not recovering) and
        has applied what the leader had committed when the wait began; return its status."""
        deadline = time.monotonic() + timeout_s
        target = 0
        leader = self.leader_id()
        if leader is not None and leader != replica_id:
            leader_status = self.answer(leader)
            target = 0 if leader_status is None else self.view(leader_status).commit
        view: View | None = None
        while True:
            status = self.answer(replica_id)
            if status is not None:
                view = self.view(status)
                if view.role in ("follower", "leader") and view.applied >= target:
                    return status
            if time.monotonic() >= deadline:
                shown = (view.role, view.applied) if view else "no answer"
                raise ClusterError(f"server {replica_id} did not catch up to {target} within "
                                   f"{timeout_s:.1f} s: {shown}\n{self.log_tail(replica_id)}")
            time.sleep(POLL_INTERVAL_S)

    def wait_converged(self, timeout_s: float) -> dict[int, StatusT]:
        """Wait until every server answers, none is paused, and all applied the same index, at
        least the highest commit; return their statuses (the caller compares digests)."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.statuses()
            ready = {i: s for i, s in statuses.items()
                     if s is not None and self.view(s).role != "paused"}
            if len(ready) == len(self.addresses):
                views = [self.view(s) for s in ready.values()]
                indexes = {v.applied for v in views}
                if len(indexes) == 1 and indexes.pop() >= max(v.commit for v in views):
                    return ready
            if time.monotonic() >= deadline:
                shown = {i: (v.role, v.commit, v.applied) if v else None
                         for i, v in ((i, None if s is None else self.view(s))
                                      for i, s in statuses.items())}
                raise ClusterError(f"servers did not converge within {timeout_s:.1f} s: {shown}")
            time.sleep(POLL_INTERVAL_S)

    # -- controlling -----------------------------------------------------------------------------
    def control(self, replica_id: int, command: str) -> None:
        """Write one line (``p``, ``r``, ``s``) into server ``replica_id``'s control FIFO."""
        fd = os.open(self.servers[replica_id].fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def log_tail(self, replica_id: int, lines: int = LOG_TAIL_LINES) -> str:
        server = self.servers.get(replica_id)
        if server is None or not server.log_path.exists():
            return f"(no log for server {replica_id})"
        text = server.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- server {replica_id} log tail ---\n" + "\n".join(text)
