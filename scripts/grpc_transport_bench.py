"""What Python gRPC's two APIs allow a bidi stream of one order per message on this machine.

Usage:
    python scripts/grpc_transport_bench.py [--rounds R] [--seconds S] [--streams N]

A bare session server (it decodes each message and answers it, nothing else) and a client of N
closed-loop streams with 4 messages in flight each, as ``traders load --stream --batch 1`` runs
them, in separate processes. Four pairings per round, alternated: the synchronous API on both
ends (what ``exchange serve`` and ``traders load`` use today), asyncio (``grpc.aio``) on both
ends, and each mixed pairing. Prints messages/s, the server's CPU per message and the median of
each pairing over the rounds, with its ratio to sync/sync measured in the same rounds (issue 18:
at one order per message the transport is the ceiling).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTO = """syntax = "proto3";
package bare;
message Req { uint64 seq = 1; string symbol = 2; int64 price = 3; uint64 quantity = 4; }
message Rep { uint64 seq = 1; uint64 order_id = 2; }
service Bare { rpc Session(stream Req) returns (stream Rep); }
"""

SERVER = """
import asyncio, sys
from concurrent import futures
import grpc
import bare_pb2 as pb, bare_pb2_grpc as pbg

class Sync(pbg.BareServicer):
    def Session(self, requests, context):
        for request in requests:
            yield pb.Rep(seq=request.seq, order_id=request.seq * 3)

class Aio(pbg.BareServicer):
    async def Session(self, requests, context):
        async for request in requests:
            yield pb.Rep(seq=request.seq, order_id=request.seq * 3)

async def serve_aio(port):
    server = grpc.aio.server()
    pbg.add_BareServicer_to_server(Aio(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()

mode, port = sys.argv[1], sys.argv[2]
if mode == "sync":
    server = grpc.server(futures.ThreadPoolExecutor(16))
    pbg.add_BareServicer_to_server(Sync(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()
else:
    asyncio.run(serve_aio(port))
"""

CLIENT = """
import asyncio, queue, sys, threading, time
import grpc
import bare_pb2 as pb, bare_pb2_grpc as pbg

mode, port, seconds, streams = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
WINDOW = 4
counts = [0] * streams

def request(seq):
    return pb.Req(seq=seq, symbol="AAPL", price=100, quantity=1)

def sync_stream(stub, stop, number):
    outbox = queue.SimpleQueue()
    def requests():
        while (item := outbox.get()) is not None:
            yield item
    for seq in range(1, WINDOW + 1):
        outbox.put(request(seq))
    seq = WINDOW
    for _reply in stub.Session(requests()):
        counts[number] += 1
        if time.monotonic() > stop:
            outbox.put(None)
            break
        seq += 1
        outbox.put(request(seq))

async def aio_stream(stub, stop, number):
    call = stub.Session()
    for seq in range(1, WINDOW + 1):
        await call.write(request(seq))
    seq = WINDOW
    while time.monotonic() < stop:
        await call.read()
        counts[number] += 1
        seq += 1
        await call.write(request(seq))
    call.cancel()

async def run_aio():
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pbg.BareStub(channel)
        stop = time.monotonic() + seconds
        await asyncio.gather(*(aio_stream(stub, stop, n) for n in range(streams)))

if mode == "sync":
    stub = pbg.BareStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=sync_stream, args=(stub, stop, n)) for n in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
else:
    asyncio.run(run_aio())
print(sum(counts), flush=True)
"""

PAIRINGS = (("sync", "sync"), ("aio", "aio"), ("sync", "aio"), ("aio", "sync"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_pairing(workdir: Path, server_mode: str, client_mode: str, seconds: float,
                streams: int) -> tuple[float, float]:
    """(messages/s, server CPU microseconds per message) of one run."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(workdir / "server.py"), server_mode,
                               str(port)], cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit("grpc_transport_bench: the bare server did not start")
        before = _cpu_seconds(server.pid)
        client = subprocess.run([sys.executable, str(workdir / "client.py"), client_mode,
                                 str(port), str(seconds), str(streams)], cwd=workdir,
                                capture_output=True, text=True, timeout=seconds + 60)
        after = _cpu_seconds(server.pid)
    finally:
        server.kill()
        server.wait()
    if client.returncode != 0:
        raise SystemExit(f"grpc_transport_bench: client failed: {client.stderr[-400:]}")
    messages = int(client.stdout.split()[-1])
    return messages / seconds, (after - before) / max(messages, 1) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four pairings (3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--streams", type=int, default=8, help="client streams (8 traders)")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.streams < 1:
        parser.error("--rounds, --seconds and --streams must be positive")
    with tempfile.TemporaryDirectory(prefix="grpc-bare-") as directory:
        workdir = Path(directory)
        (workdir / "bare.proto").write_text(PROTO)
        (workdir / "server.py").write_text(SERVER)
        (workdir / "client.py").write_text(CLIENT)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                        "--grpc_python_out=.", "bare.proto"], cwd=workdir, check=True)
        rates: dict[tuple[str, str], list[float]] = {pairing: [] for pairing in PAIRINGS}
        for round_number in range(1, args.rounds + 1):
            for server_mode, client_mode in PAIRINGS:
                rate, server_us = run_pairing(workdir, server_mode, client_mode, args.seconds,
                                              args.streams)
                rates[(server_mode, client_mode)].append(rate)
                print(f"round {round_number}: server {server_mode:4} client {client_mode:4}: "
                      f"{rate:8,.0f} messages/s, server CPU {server_us:5.0f} us/message",
                      flush=True)
                time.sleep(0.2)
        baseline = statistics.median(rates[("sync", "sync")])
        for (server_mode, client_mode), values in rates.items():
            median = statistics.median(values)
            print(f"server {server_mode} client {client_mode}: median {median:,.0f} messages/s "
                  f"(rounds {min(values):,.0f}-{max(values):,.0f}), x{median / baseline:.2f} "
                  "of sync/sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
