"""The ctrl region's layout: the background plane's shared words, one region per replica.

Rule 1: every member may write every ctrl region (granted at start), but each word has ONE writer:
        the owner writes ``heartbeat``, ``leading``, ``applied``, ``holder``, ``my_request`` and
        ``answered[i]``; member ``i`` writes only ``request[i]`` and ``answer[i]``.
Rule 2: ``heartbeat``, ``leading``, ``applied`` and ``holder`` are adjacent so a scanner reads
        them in one 32-byte read (``SCAN``).
Rule 3: request numbers of member ``r`` are ``r, r + 2 * REPLICA_ID_MAX, ...``: they never collide
        between members, grow forever, and survive a restart because ``my_request`` lives here.
        A restart on fresh memory (which loses ``my_request``) continues above
        ``request_floor(r, incarnation)``, ``REQUESTS_PER_INCARNATION`` per incarnation (counted
        in the registry), so it never reuses a number a peer already answered.
Rule 4: ``answered[i]`` (the last request of member ``i`` this owner granted and answered) also
        lives here, so a restarted replica never grants an old request twice; it is written after
        the answer, so a request whose answer a crash lost is granted (to the same holder) again.
Rule 5: ``amnesiac`` is 1 while the owner runs on fresh memory and has not been reinstated as a
        voter (``rejoin`` Rule 1); peers never take a snapshot from, or count the ``min_proposal``
        of, an amnesiac replica.
Rule 6: ``recovering`` is 1 while the owner needs a snapshot it has not installed yet (rejoin
        phases ``snapshot`` and ``install``): a restart that re-attaches the regions then resumes
        the recovery instead of delivering from an ``applied`` index that was announced for a
        snapshot its application never received. ``amnesiac`` survives such a restart too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from consensus.constants import REPLICA_ID_MAX

U64 = struct.Struct("<Q")
SCAN = struct.Struct("<QQQQ")  # heartbeat, leading, applied, holder (Rule 2)

MAGIC = 0x4D5543_54524C31  # "MUCTRL1": marks an initialised region (a re-attach finds it)
MAGIC_OFFSET = 0
HEARTBEAT_OFFSET = 8
LEADING_OFFSET = 16  # 0 follows, 1 campaigns, 2 leads, 3 recovers (state.LEADING_*)
APPLIED_OFFSET = 24
HOLDER_OFFSET = 32  # who holds write permission on the owner's log (0: nobody)
MY_REQUEST_OFFSET = 40
AMNESIAC_OFFSET = 48  # Rule 5
RECOVERING_OFFSET = 56  # Rule 6
assert (LEADING_OFFSET, APPLIED_OFFSET, HOLDER_OFFSET) == (HEARTBEAT_OFFSET + 8,
                                                          HEARTBEAT_OFFSET + 16,
                                                          HEARTBEAT_OFFSET + 24)
ARRAYS_OFFSET = 64
REQUEST_STRIDE = 2 * REPLICA_ID_MAX


@dataclass(frozen=True, slots=True)
class CtrlLayout:
    members: int

    @property
    def region_bytes(self) -> int:
        return ARRAYS_OFFSET + 3 * 8 * self.members

    def request(self, position: int) -> int:
        """Where member ``position`` writes its permission request."""
        assert 0 <= position < self.members
        return ARRAYS_OFFSET + 8 * position

    def answer(self, position: int) -> int:
        """Where member ``position`` writes the request number of the owner it granted."""
        assert 0 <= position < self.members
        return ARRAYS_OFFSET + 8 * (self.members + position)

    def answered(self, position: int) -> int:
        """Owner-local: the last request of member ``position`` the owner granted."""
        assert 0 <= position < self.members
        return ARRAYS_OFFSET + 8 * (2 * self.members + position)


REQUESTS_PER_INCARNATION = 1 << 32  # request numbers one incarnation may use (Rule 3)


def request_floor(replica_id: int, incarnation: int) -> int:
    """The ``my_request`` a fresh incarnation starts from (Rule 3): above every number an
    earlier incarnation used, in ``replica_id``'s residue class."""
    assert 0 < replica_id <= REPLICA_ID_MAX and incarnation > 0
    base = incarnation * REQUESTS_PER_INCARNATION
    floor = base - base % REQUEST_STRIDE + replica_id
    assert floor % REQUEST_STRIDE == replica_id % REQUEST_STRIDE
    return floor


def next_request(replica_id: int, previous: int) -> int:
    """The request number after ``previous`` for ``replica_id`` (Rule 3)."""
    assert 0 < replica_id <= REPLICA_ID_MAX
    nxt = replica_id if previous == 0 else previous + REQUEST_STRIDE
    assert nxt % REQUEST_STRIDE == replica_id % REQUEST_STRIDE
    return nxt
