"""State transfer between exchange servers: a rejoining server fetches a peer's snapshot over gRPC.

Rule 1: the provider takes the snapshot under the node's lock (``ExchangeNode.take_snapshot``), so
        its index and bytes agree; it serves only while it is not recovering itself (then it
        answers FAILED_PRECONDITION and the requester asks another peer), except a durable
        server whose state came from its own disk (the cold-start gate's source, see
        ``exchange.server``).
Rule 2: the stream is one ``SnapshotChunk`` with ``index`` and ``total_bytes``, then the bytes in
        chunks of at most ``CHUNK_BYTES``; the requester checks that exactly ``total_bytes``
        arrived. The bytes carry their own version and checksum (``exchange.snapshot``), checked
        when installed.
Rule 3: every failure of a fetch (peer down, refused, cut short, too slow) is one
        ``TransferFailed`` with the reason; the caller (consensus's rejoin) asks another peer.
Rule 4: why gRPC rather than a region read one-sidedly through the fabric: a snapshot's size
        is known only once it is taken and changes every time, while fabric regions are fixed-size
        and registered once (RDMA memory registration is costly and pins memory); the stream
        needs no new fabric operation, works the same on shm and verbs, and is off the
        replication fast path. The log itself still moves only through the fabric.
Rule 5: with mutual TLS (``exchange.tls`` Rule 3) the provider serves only callers presenting a
        server certificate (a snapshot holds every trader's orders); the requester presents its
        own server certificate (``tls``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from exchange.limits import GRPC_CLIENT_OPTIONS, GRPC_RESPONSE_BYTES_MAX
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import Authorizer, ClientTls, open_channel

CHUNK_BYTES = 1 << 20  # well under the response bound (a chunk is one response)
assert CHUNK_BYTES + 64 <= GRPC_RESPONSE_BYTES_MAX
FETCH_DEADLINE_S = 30.0  # a whole transfer (100k resting orders is ~10 MB: well under a second)

log = logging.getLogger("exchange.state_transfer")


class TransferFailed(Exception):
    """A snapshot could not be fetched from a peer; the message says why (Rule 3)."""


class SnapshotService(pb_grpc.ReplicationServicer):
    """Serves this server's snapshot to a rejoining peer (Rule 1)."""

    def __init__(self, take_snapshot: Callable[[], tuple[int, bytes]],
                 recovering: Callable[[], bool], authorizer: Authorizer | None = None) -> None:
        self.take_snapshot = take_snapshot
        self.recovering = recovering
        self.authorizer = authorizer

    def FetchSnapshot(  # noqa: N802 (gRPC method name)
        self, request: pb.SnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        if self.authorizer is not None:  # Rule 5
            caller = self.authorizer.caller(context)
            if caller is None or caller.server_id is None:
                who = "no certificate" if caller is None else f"certificate {caller.name!r}"
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"FetchSnapshot serves exchange servers only; the caller presented "
                              f"{who}, not a server certificate (urn:mu-exchange:server:<id>)")
        if self.recovering():
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this server is recovering itself; ask another peer")
        index, data = self.take_snapshot()
        log.info("serving a snapshot of index %d (%d bytes) to server %d", index, len(data),
                 request.requester_id)
        yield pb.SnapshotChunk(index=index, total_bytes=len(data))
        view = memoryview(data)
        for start in range(0, len(data), CHUNK_BYTES):
            yield pb.SnapshotChunk(data=bytes(view[start : start + CHUNK_BYTES]))


def fetch_snapshot(
    address: str, requester_id: int, begin: Callable[[int, int], None],
    advance: Callable[[int], None], deadline_s: float = FETCH_DEADLINE_S,
    tls: ClientTls | None = None,
) -> tuple[int, bytes]:
    """Fetch the snapshot of the server at ``address`` (Rule 2): ``(index, bytes)``. Calls
    ``begin(index, total_bytes)`` once the header arrives (it may raise to abort) and
    ``advance(done_bytes)`` after each chunk; over TLS with ``tls`` (Rule 5). Raises
    ``TransferFailed``."""
    options = list(GRPC_CLIENT_OPTIONS)
    with open_channel(address, tls, options) as channel:
        stub = pb_grpc.ReplicationStub(channel)  # type: ignore[no-untyped-call]
        try:
            stream = stub.FetchSnapshot(pb.SnapshotRequest(requester_id=requester_id),
                                        timeout=deadline_s)
            header = next(stream, None)
            if header is None:
                raise TransferFailed(f"{address} sent no snapshot header")
            index, total = int(header.index), int(header.total_bytes)
            begin(index, total)
            data = bytearray()
            for chunk in stream:
                data += chunk.data
                if len(data) > total:
                    raise TransferFailed(f"{address} sent more than the {total} bytes announced")
                advance(len(data))
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            details = error.details() if hasattr(error, "details") else str(error)
            raise TransferFailed(f"{address}: {code.name if code else 'error'}: {details}") \
                from None
    if len(data) != total:
        raise TransferFailed(f"{address} sent {len(data)} of the {total} bytes announced")
    return index, bytes(data)
