"""Every limit and default of ``kvstores``, each with the reason for its value.

Rule 1: a limit lives here once, named ``<THING>_<UNIT>_MAX`` or ``..._DEFAULT``; relations between
        limits are asserted at import.
"""

from __future__ import annotations

# -- consensus log ------------------------------------------------------------------------------
# A slot is a power of two >= 48 + payload (consensus/log.py); 4 KiB slots carry a command of up
# to 4,048 bytes (key + value + framing). Only the bytes of an entry are written, not the slot.
SLOT_BYTES = 4096
PAYLOAD_BYTES_MAX = SLOT_BYTES - 48
TAG_BYTES = 8  # each entry starts with its proposal's tag (kvstores.pipe Rule 2)
COMMAND_BYTES_MAX = PAYLOAD_BYTES_MAX - TAG_BYTES  # the largest command a write may be
# A paused replica rejoins by replaying what it missed from the leader's log while the leader
# still holds it, else by a snapshot (kvstores.snapshot): 32,768 slots (128 MiB of /dev/shm per
# replica, touched only as used) are a few seconds of writes at the rates this front end reaches.
LOG_SLOTS_DEFAULT = 32_768
# Heartbeat/scan period and pump poll of a replica that shares its process with a front end: the
# same trade-off as the exchange servers (docs/exchange.md): fewer wake-ups taking the GIL.
HEARTBEAT_INTERVAL_US_DEFAULT = 2000
PUMP_POLL_US_DEFAULT = 2000
PROPOSE_TIMEOUT_S = 0.5  # a commit takes tens of us; the event loop waits at most this
# After a failed proposal the leader waits this long for its entries to be applied anyway (a new
# leader commits what a majority holds within a failover, ~25 ms) before "outcome unknown".
UNKNOWN_WAIT_S = 2.0

# -- front end ----------------------------------------------------------------------------------
CLIENT_BUFFER_BYTES_MAX = 64 * 1024 * 1024  # unparsed bytes from one client (redis: 512 MB)
CLIENT_COMMANDS_PER_READ_MAX = 10_000  # commands parsed from one read before yielding
INFLIGHT_PER_CLIENT_MAX = 100_000  # unanswered commands of one client before it is paused
TRANSACTION_COMMANDS_MAX = 1000  # commands queued between MULTI and EXEC (a log entry bounds it)
ARGS_MAX = 1024 * 1024  # arguments of one RESP command (redis: 1,048,576 per multibulk)
INLINE_BYTES_MAX = 64 * 1024  # one inline (telnet-style) command line (redis: 64 KiB)
MEMCACHED_KEY_BYTES_MAX = 250  # memcached's own key limit
MEMCACHED_LINE_BYTES_MAX = 2048  # a memcached command line (memcached: 2048 with keys)
MEMCACHED_RELATIVE_EXPTIME_MAX_S = 60 * 60 * 24 * 30  # memcached: larger values are unix times

FORWARD_RETRY_SLEEP_S = 0.002  # a forwarded write met a leader change: try again after this
FORWARD_RETRY_S_MAX = 5.0  # ... until this long after it arrived (a failover takes ~25 ms)
QUERY_CONNECT_S = 1.0  # connecting to another server's front end (loopback or LAN)

# -- pipe to the local server -------------------------------------------------------------------
PIPE_RECV_BYTES = 256 * 1024  # one read of the local server's replies
PIPE_OUT_BYTES_SOFT_MAX = 8 * 1024 * 1024  # a non-loop thread waits while more is unsent
PIPE_WAIT_S = 0.0005  # that thread's wait between attempts
BACKEND_START_S_MAX = 10.0  # redis-server/memcached must accept connections within this
BACKEND_STOP_S_MAX = 3.0  # then SIGKILL
SIDE_CALL_TIMEOUT_S = 30.0  # a memcached metadump of a large cache on a side connection
MEMCACHED_MEMORY_MB = 1024  # -m of a local memcached; with -M it refuses instead of evicting

# -- snapshots (kvstores.snapshot) --------------------------------------------------------------
SNAPSHOT_BATCH_KEYS = 500  # keys per round trip (DUMPs, one get) while reading a snapshot
SNAPSHOT_BARRIER_WAIT_S = 30.0  # the local server answers the barrier after what it has queued
SNAPSHOT_INSTALL_WAIT_S = 30.0  # restoring a snapshot (plus 1 s per MB of snapshot)
METADUMP_ATTEMPTS_MAX = 50  # memcached runs one metadump at a time (a digest may be running)
METADUMP_RETRY_S = 0.1  # ... so a busy crawler is asked again after this
SNAPSHOT_SERVICE_WORKERS = 2  # gRPC threads serving snapshots (one snapshot at a time anyway)

# -- latencies ----------------------------------------------------------------------------------
LATENCY_SAMPLES_MAX = 2_000_000  # replication latencies kept for the SIGUSR1 dump (16 MB)
STATUS_POLL_S = 0.02  # role watcher period (logs role changes)

assert PAYLOAD_BYTES_MAX + 48 <= SLOT_BYTES
assert LOG_SLOTS_DEFAULT & (LOG_SLOTS_DEFAULT - 1) == 0
assert MEMCACHED_KEY_BYTES_MAX < MEMCACHED_LINE_BYTES_MAX
