"""The verbs fabric on the fake RDMA device: one test per defect found in review (each failed on
the verbs.py before the redesign), and a multi-threaded stress of one fabric with revocations.

The tests use only ``VerbsFabric(replica_id, cluster_id, registry)``, the regions and the fake's
fault hooks, so they run against any version of consensus/fabric/verbs.py."""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consensus.fabric import FabricError, WriteRejected
from consensus.fabric.fake_verbs import FakeRdma
from consensus.registry import InProcessRegistry

OP_TIMEOUT_S = 1.0  # as long as the old code's completion timeout: the tests are about order
SLOW_S = 0.2  # a one-way delay that keeps one write in flight while others run
SETTLE_S = 10.0
STRESS_OP_TIMEOUT_S = 0.05  # a revoked writer's first write waits this long (its responder is gone)


class Rig:
    """A fake device installed as ``pyverbs`` and verbs endpoints on it."""

    def __init__(self, cluster_id: str, **options: Any) -> None:
        self.cluster_id = cluster_id
        self.fake = FakeRdma(**options)
        self._installed = self.fake.install()
        self._installed.__enter__()
        self.store: dict[str, bytes] = {}
        self.fabrics: list[Any] = []

    def fabric(self, replica_id: int, op_timeout_s: float = OP_TIMEOUT_S) -> Any:
        from consensus.fabric.verbs import VerbsFabric

        extra = {}
        if "op_timeout_s" in inspect.signature(VerbsFabric).parameters:
            extra["op_timeout_s"] = op_timeout_s
        fabric = VerbsFabric(replica_id, self.cluster_id,
                             InProcessRegistry(self.cluster_id, self.store), **extra)
        self.fabrics.append(fabric)
        return fabric

    def close(self) -> None:
        for fabric in self.fabrics:
            fabric.close()
        self._installed.__exit__(None, None, None)


@pytest.fixture
def make_rig(cluster_id: str) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**options: Any) -> Rig:
        made.append(Rig(cluster_id, **options))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def two_owners(rig: Rig, grant_first: bool = True,
               writer_timeout_s: float = OP_TIMEOUT_S) -> tuple[Any, ...]:
    """Owners 1 and 3 with a ``log`` region each, writer 2 connected to both."""
    owner1, writer, owner3 = rig.fabric(1), rig.fabric(2, writer_timeout_s), rig.fabric(3)
    region1, region3 = owner1.register("log", 4096), owner3.register("log", 4096)
    region3.grant_write(2)
    if grant_first:
        region1.grant_write(2)
    remote1, remote3 = writer.connect(1, "log", 5.0), writer.connect(3, "log", 5.0)
    return owner1, writer, owner3, region1, region3, remote1, remote3


def during_first_post_to(rig: Rig, owner: Any, action: Callable[[], None]) -> None:
    """Run ``action`` in another thread, to completion, right after the first work request
    towards ``owner`` is posted (before its poster waits for anything)."""
    fired = threading.Event()

    def hook(qp: Any, _wr: Any) -> None:
        if qp.dlid == owner.endpoint.context.lid and not fired.is_set():
            fired.set()
            thread = threading.Thread(target=action)
            thread.start()
            thread.join(SETTLE_S)

    rig.fake.on_post = hook


def write_eventually(remote: Any, offset: int, data: bytes) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            remote.write(offset, data)
            return
        except FabricError:
            assert time.monotonic() < deadline, "the link never came back"
            time.sleep(0.005)


# ---- one test per defect ------------------------------------------------------------------------


def test_write_returns_only_after_its_own_completion(make_rig: Callable[..., Rig]) -> None:
    """Defect: wait_sync waited for the latest request id, so a writer whose write was overtaken
    by another thread's returned before its own write had landed."""
    rig = make_rig()
    owner1, writer, _, region1, region3, remote1, remote3 = two_owners(rig, writer_timeout_s=5.0)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, SLOW_S)
    during_first_post_to(rig, owner1, lambda: remote3.write(0, b"B" * 32))
    remote1.write(0, b"A" * 32)
    assert bytes(region1.buf[:32]) == b"A" * 32, "write returned before it landed"
    assert bytes(region3.buf[:32]) == b"B" * 32


def test_rejected_write_is_reported_to_its_own_writer(make_rig: Callable[..., Rig]) -> None:
    """Defect: the REM_ACCESS_ERR of a write overtaken by another thread's was parked in a list
    nobody read and the write reported success: a leader would count an acknowledgement it does
    not have (a commit without a majority)."""
    rig = make_rig()
    owner1, writer, _, region1, _, remote1, remote3 = two_owners(rig, grant_first=False,
                                                                 writer_timeout_s=5.0)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, SLOW_S)
    during_first_post_to(rig, owner1, lambda: remote3.write(0, b"B" * 32))
    with pytest.raises(WriteRejected):
        remote1.write(0, b"A" * 32)
    rig.fake.quiesce()
    assert bytes(region1.buf[:32]) == bytes(32)


def test_staging_slot_is_not_reused_while_its_write_is_in_flight(
        make_rig: Callable[..., Rig]) -> None:
    """Defect: staging slots were handed out round-robin with no owner, so a write still in
    flight had its bytes replaced by later writes (the card reads them when it sends)."""
    rig = make_rig()
    owner1, writer, _, region1, region3, remote1, remote3 = two_owners(rig, writer_timeout_s=5.0)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, SLOW_S)

    def many() -> None:  # more writes than slots: a shared slot would be reused meanwhile
        for k in range(70):
            remote3.write(0, bytes([k]) * 32)

    during_first_post_to(rig, owner1, many)
    remote1.write(0, b"A" * 32)
    rig.fake.quiesce()
    assert bytes(region1.buf[:32]) == b"A" * 32, "the write carried another write's bytes"


def test_reconnection_does_not_reuse_stale_sequence_numbers(make_rig: Callable[..., Rig]) -> None:
    """Defect: after a timeout only the writer's queue pair was reset to its first PSN while the
    owner's end expected a higher one, so later writes were acknowledged as duplicates and never
    applied."""
    rig = make_rig()
    owner1, writer, _, region1, _, remote1, _ = two_owners(rig)
    for k in range(5):
        remote1.write(0, bytes([k + 1]) * 64)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, OP_TIMEOUT_S * 1.5)
    with pytest.raises(FabricError):
        remote1.write(64, b"slow" * 16)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, 0.0)
    write_eventually(remote1, 128, b"fresh" * 8)
    assert bytes(region1.buf[128:168]) == b"fresh" * 8, "acknowledged but never applied"
    write_eventually(remote1, 128, b"again" * 8)
    assert bytes(region1.buf[128:168]) == b"again" * 8


def test_posted_writes_dropped_by_a_reset_are_still_reported(
        make_rig: Callable[..., Rig]) -> None:
    """Defect: a reset after a timeout dropped the outstanding posted writes without any
    completion; their entries leaked (after 63 leaks every later operation spun for ever) and
    their outcome was never reported."""
    rig = make_rig()
    owner1, writer, _, _, _, remote1, _ = two_owners(rig)
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, OP_TIMEOUT_S * 1.5)
    posted = list(range(100, 160))
    for wr_id in posted:
        writer.post_write(remote1, 0, b"p" * 32, wr_id)
    with pytest.raises(FabricError):
        remote1.write(64, b"sync" * 8)  # times out: the connection is reset
    rig.fake.set_delay(writer.endpoint.context, owner1.endpoint.context, 0.0)
    reported: list[int] = []
    deadline = time.monotonic() + SETTLE_S
    while sorted(reported) != posted and time.monotonic() < deadline:
        reported += [c.wr_id for c in writer.poll_completions(16)]
        time.sleep(0.001)
    assert sorted(reported) == posted, f"{len(posted) - len(reported)} posted writes unreported"
    write_eventually(remote1, 0, b"after" * 4)


def test_dead_peer_costs_one_timeout_not_one_per_operation(
        make_rig: Callable[..., Rig]) -> None:
    """Defect: every operation on a dead peer waited for the card's retry budget (~0.5 s), also
    under the protocol's role lock, so a leader stalled and a dead leader took seconds to
    detect."""
    rig = make_rig()
    owner1, writer = rig.fabric(1), rig.fabric(2, op_timeout_s=0.05)
    owner1.register("ctrl", 4096)
    remote = writer.connect(1, "ctrl", 5.0)
    assert remote.read(0, 8) == bytes(8)
    rig.fake.kill(owner1.endpoint.context)
    durations = []
    for _ in range(6):
        start = time.monotonic()
        with pytest.raises(FabricError):
            remote.read(0, 8)
        durations.append(time.monotonic() - start)
    # generous bounds for a loaded machine; waiting for the card's retries costs ~0.5 s each
    assert max(durations[1:]) < 0.3, f"every read waited: {durations}"
    assert sum(durations) < 1.5, f"reads of a dead peer took {sum(durations):.2f} s"
    rig.fake.revive(owner1.endpoint.context)
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            assert remote.read(0, 8) == bytes(8)
            break
        except FabricError:
            assert time.monotonic() < deadline, "never reconnected to the revived peer"
            time.sleep(0.005)


def test_revoke_waits_for_a_write_already_past_the_check(make_rig: Callable[..., Rig]) -> None:
    """Defect: revoking by changing the access flags has no drain: a write whose check passed
    before the change landed after the revoke returned."""
    rig = make_rig(dma_delay_s=0.05)
    owner1, writer = rig.fabric(1), rig.fabric(2)
    region = owner1.register("log", 4096)
    region.grant_write(2)
    remote = writer.connect(1, "log", 5.0)
    checked = threading.Event()
    rig.fake.on_check = lambda qp, opcode, addr, length: checked.set()
    thread = threading.Thread(target=lambda: _swallow(lambda: remote.write(0, b"W" * 64)))
    thread.start()
    assert checked.wait(SETTLE_S)
    region.revoke_write(2)
    region.buf[:64] = bytes(64)
    rig.fake.quiesce()
    thread.join(SETTLE_S)
    assert bytes(region.buf[:64]) == bytes(64), "a write landed after revoke_write returned"


def _swallow(action: Callable[[], None]) -> None:
    try:
        action()
    except FabricError:
        pass


# ---- multi-threaded stress ----------------------------------------------------------------------


def test_scanner_and_proposers_with_revocations(make_rig: Callable[..., Rig], seed: int) -> None:
    """One writer fabric: a scanner thread reads the owners' ctrl regions while proposer threads
    write unique records to their log regions, and the owners revoke and grant under them. No
    write reported successful may be missing, and nothing may land while revoked."""
    rng = random.Random(seed)
    rig = make_rig(latency_s=0.0002)
    owners = {r: rig.fabric(r) for r in (1, 3)}
    writer = rig.fabric(2, op_timeout_s=STRESS_OP_TIMEOUT_S)
    logs = {r: f.register("log", 64 * 1024) for r, f in owners.items()}
    for r, f in owners.items():
        f.register("ctrl", 64).buf[:8] = r.to_bytes(8, "little")
        logs[r].grant_write(2)
    remotes = {r: writer.connect(r, "log", 5.0) for r in owners}
    ctrls = {r: writer.connect(r, "ctrl", 5.0) for r in owners}
    stop = threading.Event()
    succeeded: list[tuple[int, int, bytes]] = []
    problems: list[str] = []

    def scanner() -> None:
        while not stop.is_set():
            for r, ctrl in ctrls.items():
                try:
                    if ctrl.read(0, 8) != r.to_bytes(8, "little"):
                        problems.append(f"scanner read stale bytes of {r}")
                except FabricError:
                    pass

    def proposer(index: int) -> None:
        for seq in range(150):
            record = f"p{index}-{seq:04d}-".encode().ljust(32, b"x")
            offset = (index * 150 + seq) * 32
            for r, remote in remotes.items():
                try:
                    remote.write(offset, record)
                    succeeded.append((r, offset, record))
                except FabricError:
                    pass

    threads = [threading.Thread(target=scanner)] + [
        threading.Thread(target=proposer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads[1:]):
            r = rng.choice(list(logs))
            logs[r].revoke_write(2)
            frozen = bytes(logs[r].buf)
            time.sleep(rng.random() * 0.003)
            if bytes(logs[r].buf) != frozen:
                problems.append(f"a write landed on {r} while revoked")
            logs[r].grant_write(2)
            time.sleep(0.02 + rng.random() * 0.03)
    finally:
        stop.set()
        for thread in threads:
            thread.join(SETTLE_S)
    rig.fake.quiesce()
    assert not problems, problems[:5]
    missing = [(r, o) for r, o, record in succeeded if bytes(logs[r].buf[o:o + 32]) != record]
    assert not missing, f"{len(missing)} writes reported successful never landed: {missing[:5]}"
    assert len(succeeded) > 100


def test_grant_on_a_device_refusing_in_place_access_changes(make_rig: Callable[..., Rig]) -> None:
    """Some devices refuse RTS->RTS access-flag changes: the grant then replaces the responder
    and the writer's link is renewed with write access."""
    rig = make_rig(refuse_access_modify=True)
    owner1, writer = rig.fabric(1), rig.fabric(2, op_timeout_s=0.1)
    region = owner1.register("log", 4096)
    remote = writer.connect(1, "log", 5.0)
    with pytest.raises(WriteRejected):
        remote.write(0, b"early")
    region.grant_write(2)
    write_eventually(remote, 0, b"granted")
    assert bytes(region.buf[:7]) == b"granted"
    region.revoke_write(2)
    with pytest.raises(WriteRejected):
        remote.write(0, b"revoked")
    assert bytes(region.buf[:7]) == b"granted"
