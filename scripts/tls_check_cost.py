"""What the per-RPC client-id check of a mutual-TLS server costs, beside a unary mTLS round trip.

Run: ``PYTHONPATH=. python scripts/tls_check_cost.py [--rounds 5] [--calls 2000]``. Makes a
development CA in a temporary directory (``exchange.certs``), serves one gRPC health service over
mutual TLS on loopback and, per round: the median round trip of ``--calls`` unary calls from a
client presenting a trader certificate (the baseline), and inside one handler the cost of
``--calls`` checks as ``ExchangeService`` runs them on every order-entry RPC
(``Authorizer.caller`` = the auth-context read + the cached identity, then ``refusal``). Prints
both per round, then the medians and the check's share of a round trip with its spread.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from exchange.certs import make_certs
from exchange.tls import Authorizer, ClientTls, load_server_tls, open_channel

MEASURE = "measure-check"  # the health service name that asks the handler to time the check


class _Timed(health.HealthServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer, calls: int) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.calls = calls
        self.check_us = 0.0

    def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service == MEASURE:
            authorizer = self.authorizer
            start = time.perf_counter_ns()
            for _ in range(self.calls):
                refusal = authorizer.refusal(authorizer.caller(context), 1500)
            self.check_us = (time.perf_counter_ns() - start) / self.calls / 1000
            assert refusal == "", refusal
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="mu-tls-cost-"))
    make_certs(directory, 1, "alice=1000-1999", [], 1, new_ca=True)
    tls = load_server_tls(str(directory / "server-1.crt"), str(directory / "server-1.key"),
                          str(directory / "ca.crt"), None, None)
    assert tls is not None and tls.authorizer is not None
    servicer = _Timed(tls.authorizer, args.calls)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    server.start()
    client = ClientTls.from_files(str(directory / "ca.crt"), str(directory / "trader-alice.crt"),
                                  str(directory / "trader-alice.key"))
    channel = open_channel(f"127.0.0.1:{port}", client)
    stub = health_pb2_grpc.HealthStub(channel)
    plain = health_pb2.HealthCheckRequest()
    rows: list[tuple[float, float]] = []
    for _ in range(50):
        stub.Check(plain, timeout=10)  # warm the channel
    for round_index in range(args.rounds):
        samples = []
        for _ in range(args.calls):
            start = time.perf_counter_ns()
            stub.Check(plain, timeout=10)
            samples.append((time.perf_counter_ns() - start) / 1000)
        stub.Check(health_pb2.HealthCheckRequest(service=MEASURE), timeout=60)
        rows.append((statistics.median(samples), servicer.check_us))
        print(f"round {round_index + 1}/{args.rounds}: unary mTLS round trip p50 "
              f"{rows[-1][0]:.1f} us; client-id check {rows[-1][1]:.2f} us")
    channel.close()
    server.stop(None)
    shutil.rmtree(directory, ignore_errors=True)
    shares = sorted(check / trip for trip, check in rows)
    trip = statistics.median(r[0] for r in rows)
    check = statistics.median(r[1] for r in rows)
    print(f"medians over {args.rounds} rounds: round trip {trip:.1f} us, check {check:.2f} us: "
          f"x{statistics.median(shares):.3f} of a round trip (rounds x{shares[0]:.3f}-"
          f"x{shares[-1]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
