"""Every limit and timing of the consensus protocol, each a named constant with its unit last.

Rule 1: a constant says why it has its value in the comment beside it.
Rule 2: relations between constants are asserted at import, so a bad edit fails at once.
Rule 3: timings here are defaults; ``ReplicaConfig`` lets a deployment (or the simulator) override
        the ones that depend on the machine (heartbeat, scan, dead threshold, timeouts).
"""

from __future__ import annotations

# --- cluster ----------------------------------------------------------------------------------
MEMBERS_MIN = 1  # a single replica is its own majority (useful for tests of the fast path)
MEMBERS_MAX = 9  # majorities of up to 5 are what Mu targets; 9 keeps the ctrl region small
REPLICA_ID_MAX = 255  # proposal numbers are round * PROPOSAL_ROUND_STRIDE + replica id
PROPOSAL_ROUND_STRIDE = 256  # > REPLICA_ID_MAX, so proposal numbers of two replicas never collide

# --- log --------------------------------------------------------------------------------------
LOG_SLOTS_MIN = 8  # a smaller circular log would make every proposal wait for recycling
LOG_SLOTS_MAX = 1 << 20  # 1 Mi slots: a 64 MiB region at 64-byte payloads is plenty
LOG_SLOTS_DEFAULT = 4096  # ~20 ms of traffic at 200 k commits/s before recycling must keep up
PAYLOAD_BYTES_MAX = 1 << 20  # one entry never exceeds 1 MiB (the slot size is a power of two)
PAYLOAD_BYTES_DEFAULT = 512  # an order-book command fits with room to spare

# --- replication ------------------------------------------------------------------------------
PROPOSALS_INFLIGHT_MAX = 256  # propose_many writes at most this many entries before waiting
PROPOSE_TIMEOUT_S_DEFAULT = 1.0  # how long propose waits for log space before ProposalTimeout
RECYCLE_WAIT_SLEEP_S = 0.00005  # back-off while waiting for replicas to apply (log full)
HEARTBEAT_EVERY_ENTRIES = 16  # the fast path bumps the heartbeat every 16 entries (fate sharing)

# --- pump -------------------------------------------------------------------------------------
PUMP_BATCH_MAX = 64  # entries applied before the pump publishes applied and yields the GIL
PUMP_SPINS_IDLE = 64  # empty polls (yielding) before the pump starts sleeping
PUMP_SLEEP_S_MIN = 0.00002  # first sleep of an idle pump
PUMP_SLEEP_S_MAX = 0.0005  # an idle pump still notices a new entry within half a millisecond
PUMP_LEADER_IDLE_S = 0.05  # a caught-up leader's pump waits for a step-down this long at most

# --- background plane -------------------------------------------------------------------------
HEARTBEAT_INTERVAL_US = 200  # the heartbeat thread bumps the counter this often when idle
SCAN_INTERVAL_US = 250  # the scanner reads peers' counters this often
# A LEADING peer is dead after its counter stayed still for this long, counted in scan gaps
# capped at SCAN_GAP_CAP_US so the scanner's own stalls (GC, descheduling) never count against a
# peer. 20 ms: on this shared 2-core machine at load 5-10 a runnable process waits 10+ ms for a
# CPU, and 8 ms caused leader changes in fault-free runs. A leader that steps down (pause hook,
# stop) is replaced within CANDIDATE_DEAD_AFTER_US instead; see docs/consensus.md.
DEAD_AFTER_US = 20_000
SCAN_GAP_CAP_US = 1000  # one scan gap never counts for more than this
# For "am I the lowest live id?" only: a silent peer that does not lead is skipped after 2 ms.
# Misjudging a non-leader deposes nobody (a live leader is never preempted), so this may be short.
CANDIDATE_DEAD_AFTER_US = 2000
# --- native heartbeat (consensus.native_beat; the real runtime only) ---------------------------
NATIVE_BEAT_INTERVAL_US = 300  # the C thread bumps the word this often (GIL-free); see below
# Python must refresh the liveness token this often or the C beat stops (fate sharing). 1 s: a
# stale token on a live leader is a spurious fail-over, and interpreters on this shared 2-core
# machine were measured not running for 100-275 ms at a time (exchange bench-steady at nice 19,
# load average 14-17: 69 leader changes in 10 min with 100 ms, every one a withheld beat); a
# hung interpreter (a deadlock, a C call holding the GIL) is still replaced within about 1 s.
# A stopped or crashed process stops the beat at once (this bounds only the hung-interpreter
# case).
NATIVE_TOKEN_TTL_US = 1_000_000
# With the native beat the Python heartbeat activity only refreshes that token (and watches for a
# stuck proposal): it runs this often at least, 100 times per TTL. At the heartbeat interval
# (1 ms in an exchange server) its wake-ups took 3-4% of a core per replica, each taking the GIL.
NATIVE_TOKEN_REFRESH_US = 10_000
NATIVE_BEAT_RT_PRIORITY = 10  # SCHED_FIFO priority of the C thread (0: do not ask)
# The standby beat thread (native_beat Rule 9), pinned to another CPU than the beat thread: it
# bumps the word only when it stood still for this long, so a beat thread whose CPU stalls (a vCPU
# the host did not run; 3-14 ms gaps measured here under load) does not silence a live replica.
NATIVE_STANDBY_INTERVAL_US = 1000
# Why 300 us and not 100: every beat is a SCHED_FIFO wake-up that preempts whatever runs on its
# core; three replicas beating every 100 us on 2 cores made a replicated order's p50 x1.9-x5.7 of
# the unreplicated server's (2026-12-01 11:50, load 4, /tmp A/B of 2 rounds: 300 us gave x1.31-
# x1.39, no native beat x1.09-x1.48). 300 us still puts 10 beats inside NATIVE_DEAD_AFTER_US.
# SCHED_FIFO priority of the background (scanner/election) thread when the native beat runs at
# real-time priority: a follower's scan otherwise waits for a CPU behind every other runnable
# process, and its stalls (not counted, detector Rule 1) delayed detection to 9-15 ms at load
# 4-8 (bench failover --sigstop, per-phase breakdown). Below the beat's, so a scanner never
# delays a beat. The thread sleeps between scans; the kernel's RT throttling still leaves 5%.
BACKGROUND_RT_PRIORITY = 5
# With adaptive scanning (scan_fast_interval_us set: exchange and kvstores servers) a leader's
# background activity runs every this many calm periods (election Rule 9): a follower scans every
# 1 ms to notice a silent leader, and at 1 ms the leader's own scans took 8-9% of a core at
# real-time priority from the order entry it serves (2026-12-01, 4 traders).
LEADER_CALM_FACTOR = 4
# A follower's calm wait in C (election Rule 11) returns to Python at least this often, so that
# what only a Python scan sees (peers' applied and holder words, restarted peers) stays current.
CALM_WAIT_MAX_US = 20_000
# A LEADING peer is dead after this much observed silence when this replica's own native beat
# runs at real-time priority (a homogeneous cluster on one machine: peers' beats do too): 10
# beats. 2 ms was tried on 2026-12-01 12:45: under 4 closed-loop traders on a quiet machine the
# followers judged a live leader dead 5 times in 2 min and deposed it once (bench-steady).
NATIVE_DEAD_AFTER_US = 3000
STARTUP_GRACE_US = 500_000  # a peer never seen beating is presumed alive this long after start
# A leader whose propose is stuck this long stops heartbeating (fate sharing). 1 s, as the token
# above: a proposing thread descheduled for 100+ ms on a loaded machine is not a hung leader.
FATE_SHARING_STUCK_US = 1_000_000
PERMISSION_WAIT_US = 20_000  # a candidate gives up waiting for a majority's answers after this
CAMPAIGN_BACKOFF_US_MAX = 2000  # random back-off after a failed campaign (ties break by id anyway)
COMMIT_FLUSH_IDLE_US = 500  # an idle leader publishes its commit index to followers after this
CONNECT_TIMEOUT_S_DEFAULT = 30.0  # start() waits this long for every peer's regions
STOP_JOIN_TIMEOUT_S = 2.0  # stop() waits this long for each activity to exit

# --- rejoin -----------------------------------------------------------------------------------
REJOIN_RETRY_US = 5000  # a recovering replica that found no usable peer asks again after this
RECONNECT_INTERVAL_US = 20_000  # a restarted peer's new regions are looked up this often

assert MEMBERS_MIN <= MEMBERS_MAX
assert REPLICA_ID_MAX < PROPOSAL_ROUND_STRIDE
assert LOG_SLOTS_MIN <= LOG_SLOTS_DEFAULT <= LOG_SLOTS_MAX
assert PROPOSALS_INFLIGHT_MAX <= LOG_SLOTS_DEFAULT // 2
assert SCAN_INTERVAL_US <= SCAN_GAP_CAP_US < CANDIDATE_DEAD_AFTER_US <= DEAD_AFTER_US
assert HEARTBEAT_INTERVAL_US * 4 <= DEAD_AFTER_US
assert DEAD_AFTER_US < FATE_SHARING_STUCK_US
assert SCAN_GAP_CAP_US < CANDIDATE_DEAD_AFTER_US <= NATIVE_DEAD_AFTER_US <= DEAD_AFTER_US
assert NATIVE_BEAT_INTERVAL_US * 10 <= NATIVE_DEAD_AFTER_US < NATIVE_TOKEN_TTL_US
assert NATIVE_BEAT_INTERVAL_US < NATIVE_STANDBY_INTERVAL_US <= NATIVE_DEAD_AFTER_US // 2
assert NATIVE_TOKEN_REFRESH_US * 10 <= NATIVE_TOKEN_TTL_US
assert 0 <= BACKGROUND_RT_PRIORITY < NATIVE_BEAT_RT_PRIORITY
assert PUMP_SLEEP_S_MIN <= PUMP_SLEEP_S_MAX
