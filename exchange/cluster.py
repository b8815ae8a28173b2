"""A cluster of exchange servers on this host, as subprocesses (demo, benchmark, tests); the
launching, waiting and cleaning up are ``exchange.launcher``'s (shared with kvstores).

Rule 1: launching, waiting, killing and cleaning up keep ``exchange.launcher``'s rules: the
        cluster owns its processes, FIFOs, logs and shared memory and removes them at ``stop``;
        fresh cluster id and ports; ``start`` returns once every server agrees on a leader.
Rule 2: with ``data_dir`` every server gets ``--data-dir data_dir/server-<id>`` (and
        ``--durability``); the directories outlive ``stop`` (they are the point), and a restarted
        server reuses its own. ``cluster_id`` fixes the cluster id (a data directory belongs to
        one cluster: a second run on the same directories must pass the same id).
Rule 3: with ``tls_dir`` (a directory ``python -m exchange certs`` made) every server serves
        mutual TLS with ``server-<id>.crt`` and ``--client-ca ca.crt``, and the launcher's own
        status calls present server 1's certificate (a launcher holds its servers' keys; a
        server certificate names no client id, so the launcher can read but not trade).
Rule 4: ``symbols`` is every server's ``--symbols`` (None: the servers' default list,
        exchange.config.SYMBOLS_DEFAULT); a restarted server gets the same list.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

from exchange.config import format_server_uris
from exchange.launcher import (
    ClusterError,
    ProcessCluster,
    ServerProcess,
    View,
    cleanup_shared_memory,
    free_ports,
)
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls
from traders.client import open_channel

STATUS_TIMEOUT_S = 1.0

__all__ = ["ClusterError", "LocalCluster", "ServerProcess", "cleanup_shared_memory",
           "free_ports", "local_cluster"]


class LocalCluster(ProcessCluster[pb.Status]):
    """``replicas`` servers (1 = the unreplicated baseline) on 127.0.0.1 (see module rules)."""

    query_errors = (grpc.RpcError,)
    query_timeout_s = STATUS_TIMEOUT_S
    env_drop = ("SID", "SERVER_URIS", "MU_DATA_DIR")

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
        super().__init__(replicas, name, extra_args, cluster_id, workdir_prefix="mu")
        self.tls_dir = None if tls_dir is None else Path(tls_dir)  # Rule 3
        self.tls = None if self.tls_dir is None else ClientTls.from_files(
            str(self.tls_dir / "ca.crt"), str(self.tls_dir / "server-1.crt"),
            str(self.tls_dir / "server-1.key"))
        self.symbols = symbols  # Rule 4
        self.fabric = fabric
        # Rule 2: server N keeps its journal and snapshots in ``data_dir/server-N``.
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.durability = durability
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, pb_grpc.ExchangeStub] = {}

    @property
    def server_uris(self) -> str:
        return format_server_uris(self.addresses)

    def command(self, replica_id: int, fifo_path: str) -> list[str]:
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
        return command

    def server_data_dir(self, replica_id: int) -> Path:
        """Server ``replica_id``'s data directory (Rule 2)."""
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

    def query(self, replica_id: int, timeout_s: float) -> pb.Status:
        return self.status(replica_id, timeout_s)

    def view(self, status: pb.Status) -> View:
        return View(status.replica_id, status.role, status.leader_id or None,
                    status.applied_index, status.commit_index)

    def forget(self, replica_id: int) -> None:
        channel = self._channels.pop(replica_id, None)  # its successor listens on a new socket
        self._stubs.pop(replica_id, None)
        if channel is not None:
            channel.close()

    def close_clients(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()


@contextlib.contextmanager
def local_cluster(replicas: int = 3, name: str = "cluster") -> Iterator[LocalCluster]:
    with LocalCluster(replicas, name=name) as cluster:
        yield cluster
