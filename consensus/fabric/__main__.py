"""``python -m consensus.fabric``: benchmark the shared-memory fabric, clean up a cluster's shared
memory, or check whether the RDMA fabric can run here.

Rule 1: every command prints one clear line on failure and exits non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from consensus.fabric.base import FabricError
from consensus.registry import RegistryError


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    from consensus.fabric.bench import REVOKE_OPS_DEFAULT, WRITE_OPS_DEFAULT

    parser = argparse.ArgumentParser(
        prog="python -m consensus.fabric",
        description="Tools for the one-sided memory fabric (see docs/fabric.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "bench",
        help="per-operation latency of the shm fabric (p50/p99, net of timer overhead)",
        description="Measure 64 B / 4 KiB writes, 64 B reads and revoke+grant on the shm "
        "fabric, against a bare-copy baseline measured in the same run. Takes ~10 s.",
    )
    bench.add_argument(
        "--ops", type=positive_int, default=WRITE_OPS_DEFAULT, help="samples per write/read figure"
    )
    bench.add_argument(
        "--revoke-ops",
        type=positive_int,
        default=REVOKE_OPS_DEFAULT,
        help="samples for the revoke+grant figure",
    )
    cleanup = commands.add_parser(
        "cleanup",
        help="remove a cluster's shared-memory regions, semaphores and embedded registry entries",
    )
    cleanup.add_argument("cluster_id", help="the cluster id the replicas were started with")
    verbs = commands.add_parser(
        "check-verbs",
        help="say whether the RDMA (verbs) fabric can run on this machine",
        description="Probe the RDMA device, then run the verbs fabric between two endpoints of "
        "this process (write, read back, revoke, refused write). --fake runs the same on the "
        "fake device of the tests (no hardware needed).",
    )
    verbs.add_argument("--device", default=None, help="RDMA device name (default: the first)")
    verbs.add_argument("--probe-only", action="store_true", help="only probe the device")
    verbs.add_argument(
        "--fake", action="store_true", help="use the fake RDMA device (consensus.fabric.fake_verbs)"
    )
    return parser.parse_args(argv)


def check_verbs(device: str | None, probe_only: bool, fake: bool) -> None:
    from consensus.fabric.verbs import Verbs, probe, self_test

    if not fake:
        print(probe(device), flush=True)
        if not probe_only:
            print(self_test(device=device))
        return
    from consensus.fabric.fake_verbs import FakeRdma

    with FakeRdma().install() as network:
        verbs = Verbs(network.package)
        print(probe(device, verbs).replace("available", "available (fake device)"), flush=True)
        if not probe_only:
            print(self_test(verbs, device))


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        if arguments.command == "bench":
            from consensus.fabric.bench import report, run

            print(
                f"shm fabric, pid {os.getpid()}, load average {os.getloadavg()[0]:.2f}; "
                "per-op perf_counter_ns, timer overhead subtracted",
                flush=True,
            )
            print(report(*run(arguments.ops, arguments.revoke_ops)))
        elif arguments.command == "cleanup":
            from consensus.fabric.shm import cleanup

            print(f"removed {cleanup(arguments.cluster_id)} objects of {arguments.cluster_id!r}")
        else:
            check_verbs(arguments.device, arguments.probe_only, arguments.fake)
    except (FabricError, RegistryError, ValueError) as error:
        print(f"python -m consensus.fabric {arguments.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
