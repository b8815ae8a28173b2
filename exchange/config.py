"""Server configuration: the original's environment variables, parsed and checked.

Rule 1: every setting has one source of truth: a command-line flag, else the original's environment
        variable (``SERVER_URIS``, ``SID``, ``DORY_REGISTRY_IP``), else a default named here.
Rule 2: bad configuration raises ``ConfigError`` with a message naming the setting and the value;
        the CLI prints it as one line (no traceback).

The instrument list (``--symbols A,B,C`` or ``--symbols-file FILE``, else ``SYMBOLS_DEFAULT``) is
what this server proposes when the cluster has none yet; once an entry fixed it, the replicated
list wins (exchange.state_machine Rule 7, exchange.node Rule 9).

``SERVER_URIS`` is ``1=host:port,2=host:port,3=host:port``: replica id -> the gRPC address traders
use for that server (the original used the same variable for its eRPC endpoints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exchange.tls import ServerTls

FABRIC_KINDS = ("shm", "verbs")
# The instrument list of a server started without --symbols/--symbols-file: the symbols the demo,
# the benchmark, the load generator and the dashboard use (traders.workload.DEFAULT_SYMBOLS).
SYMBOLS_DEFAULT = ("AAPL", "AMZN", "GOOG", "MSFT")
SYMBOLS_FILE_BYTES_MAX = 64 * 1024  # a --symbols-file larger than this is refused
DEFAULT_CLUSTER_ID = "mu-exchange"
DEFAULT_FIFO_TEMPLATE = "/tmp/fifo-{id}"
REPLICA_ID_MAX = 255  # consensus proposal numbers reserve one byte for the replica id
GRPC_WORKERS_DEFAULT = 32  # handler threads: order entry, sessions (<= 1/2), market data (<= 1/4)
# Consensus log payload, a per-slot size: the leader packs the requests that arrive while a
# proposal is in flight into one batch entry (exchange.state_machine Rule 5) of at most this many
# bytes. A request is 18 bytes of batch framing + its command (29 fixed bytes + order id <= 64 +
# symbol <= 16 = 127 at most, about 60 for usual ids), so a slot carries 15-30 requests; with
# consensus's 48-byte slot overhead the slot is 2 KiB. (A single-request entry is <= 141 bytes.)
PAYLOAD_SIZE_MAX_BYTES = 2048 - 48
# A paused or slow replica can rejoin from the log only while the log still holds every entry it
# missed: 32,768 slots of 2 KiB = 64 MiB per replica, 30 s of unary orders at the rates Python
# reaches here, minutes of batched streaming orders.
LOG_SLOTS_DEFAULT = 32_768
BATCH_REQUESTS_MAX = 64  # requests in one consensus entry (the byte bound usually binds first)
assert PAYLOAD_SIZE_MAX_BYTES >= 16 + 29 + 64 + 16
assert PAYLOAD_SIZE_MAX_BYTES >= 8 + 1 + 2 + 18 + 29 + 64 + 16  # a batch of one always fits
# Heartbeat period of an exchange server. Consensus's 200 us suit a process that only replicates;
# here every wake-up of a consensus thread takes the GIL from the gRPC handlers (see
# docs/exchange.md, "Consensus threads in a gRPC server"). With the native heartbeat (a C thread
# beats every 300 us) the Python heartbeat only refreshes the liveness token (1 s TTL), at least
# every 10 ms (consensus NATIVE_TOKEN_REFRESH_US), whatever this says; without the native beat
# it moves the counter, and 1500 keeps 13 beats inside the 20 ms threshold.
HEARTBEAT_INTERVAL_US_DEFAULT = 1500
# Failure-detector scan period (the background thread: scanner, switcher, election) while all is
# calm, and while a peer's counter stood still in the last scan or no leader is known (consensus
# election Rule 9). A silent leader is detected within the dead-after threshold plus a scan, and a
# candidate's permission request is answered at the peer's next scan, so fail-over needs the fast
# period (issue 14: a fixed 2 ms scan gave the servers' own fail-over 8-12 ms, bench-failover).
# Every wake-up takes the GIL from the gRPC handlers; the calm period is 1 ms (it was 2 ms until
# 2026-12-01 12:40: a silent leader was noticed up to 2 ms late).
SCAN_INTERVAL_US_DEFAULT = 1000
SCAN_FAST_INTERVAL_US_DEFAULT = 250
# How often an idle consensus pump looks for new entries (consensus ReplicaConfig.pump_poll_us):
# a follower applies within this; the leader's handlers apply their own entries and do not wait.
PUMP_POLL_US_DEFAULT = 2000


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def parse_server_uris(text: str) -> dict[int, str]:
    """Parse ``1=host:port,2=host:port`` into ``{1: "host:port", ...}`` (ids sorted)."""
    addresses: dict[int, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, address = item.partition("=")
        if not sep or not key.strip().isdigit():
            raise ConfigError(f"SERVER_URIS item {item!r} is not of the form <id>=<host>:<port>")
        replica_id = int(key)
        if not 1 <= replica_id <= REPLICA_ID_MAX:
            raise ConfigError(f"SERVER_URIS: replica id {replica_id} not in 1..{REPLICA_ID_MAX}")
        address = address.strip()
        check_address(address, f"SERVER_URIS entry {replica_id}")
        if replica_id in addresses:
            raise ConfigError(f"SERVER_URIS names replica {replica_id} twice")
        addresses[replica_id] = address
    if not addresses:
        raise ConfigError("SERVER_URIS is empty; expected e.g. 1=127.0.0.1:31850,2=...")
    return dict(sorted(addresses.items()))


def check_address(address: str, what: str) -> None:
    """Raise ``ConfigError`` unless ``address`` is ``host:port`` with a valid port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {address!r} is not host:port")


def format_server_uris(addresses: dict[int, str]) -> str:
    return ",".join(f"{replica_id}={address}" for replica_id, address in sorted(addresses.items()))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    replica_id: int
    addresses: dict[int, str]  # every server's trader-facing address, by replica id
    listen: str  # where this server's gRPC port binds
    replicas: int  # 1 = unreplicated baseline (no consensus)
    fabric: str
    registry_address: str | None  # memcached host:port, or None for the embedded registry
    cluster_id: str
    fifo_path: str | None
    grpc_workers: int
    log_slots: int
    heartbeat_interval_us: int = HEARTBEAT_INTERVAL_US_DEFAULT  # 0 = the consensus default
    scan_interval_us: int = SCAN_INTERVAL_US_DEFAULT  # 0 = the heartbeat interval
    scan_fast_interval_us: int = SCAN_FAST_INTERVAL_US_DEFAULT  # 0 = scan_interval_us
    dead_after_us: int = 0  # 0 = the consensus default
    parent_pid: int = 0  # exit when this process is gone (launchers set it); 0 = never
    pump_poll_us: int = PUMP_POLL_US_DEFAULT  # 0 = consensus's adaptive polling
    data_dir: str | None = None  # None = memory only (exchange.durability)
    durability: str = "sync"  # sync | async (with data_dir)
    snapshot_entries: int = 100_000  # entries between two stored snapshots
    tls: ServerTls | None = None  # None = plaintext (exchange.tls)
    instruments: tuple[str, ...] = SYMBOLS_DEFAULT  # proposed when the cluster has no list

    @property
    def members(self) -> tuple[int, ...]:
        if self.replicas == 1:
            return (self.replica_id,)
        return tuple(sorted(self.addresses))


def parse_symbols(text: str, what: str) -> tuple[str, ...]:
    """The instrument list in ``text``: symbols separated by commas or whitespace (``#`` starts
    a comment to the end of the line). Raises ``ConfigError`` naming ``what`` when it is not a
    valid list (exchange.state_machine.check_instruments)."""
    from exchange.state_machine import check_instruments

    symbols: list[str] = []
    for line in text.splitlines():
        symbols.extend(item for item in line.partition("#")[0].replace(",", " ").split())
    why = check_instruments(tuple(symbols))
    if why is not None:
        raise ConfigError(f"{what}: {why}")
    return tuple(symbols)


def instruments_setting(symbols: str | None, symbols_file: str | None) -> tuple[str, ...]:
    """``--symbols`` or ``--symbols-file`` (not both), else ``SYMBOLS_DEFAULT``."""
    if symbols is not None and symbols_file is not None:
        raise ConfigError("give --symbols or --symbols-file, not both")
    if symbols is not None:
        return parse_symbols(symbols, f"--symbols {symbols!r}")
    if symbols_file is None:
        return SYMBOLS_DEFAULT
    try:
        with open(symbols_file, "rb") as file:
            data = file.read(SYMBOLS_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"--symbols-file {symbols_file}: {exc.strerror or exc}") from None
    if len(data) > SYMBOLS_FILE_BYTES_MAX:
        raise ConfigError(f"--symbols-file {symbols_file}: larger than "
                          f"{SYMBOLS_FILE_BYTES_MAX} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"--symbols-file {symbols_file}: not UTF-8 text") from None
    return parse_symbols(text, f"--symbols-file {symbols_file}")


def env_int(name: str, default: int) -> int:
    """An integer environment variable, or ``default`` when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def durability_settings(data_dir: str | None, durability: str | None,
                        snapshot_entries: int) -> tuple[str | None, str, int]:
    """``--data-dir`` (else ``MU_DATA_DIR``), ``--durability``, ``--snapshot-entries``, checked."""
    if data_dir is None:
        data_dir = os.environ.get("MU_DATA_DIR", "").strip() or None
    if data_dir is None and durability is not None:
        raise ConfigError(f"--durability {durability} needs --data-dir DIR (or MU_DATA_DIR)")
    if snapshot_entries < 1:
        raise ConfigError(f"--snapshot-entries {snapshot_entries}: need at least 1")
    return data_dir, durability or "sync", snapshot_entries


def resolve_server_config(
    replica_id: int | None,
    server_uris: str | None,
    replicas: int | None,
    fabric: str,
    registry_address: str | None,
    cluster_id: str | None,
    fifo_path: str | None,
    listen: str | None,
    grpc_workers: int = GRPC_WORKERS_DEFAULT,
    log_slots: int = LOG_SLOTS_DEFAULT,
) -> ServerConfig:
    """Combine flags (given first) with the environment and check the result."""
    if replica_id is None:
        replica_id = env_int("SID", 0) or None
    if replica_id is None:
        raise ConfigError("no replica id: pass --id N or set SID=N")
    uris = server_uris if server_uris is not None else os.environ.get("SERVER_URIS", "")
    if not uris.strip():
        raise ConfigError("no server list: pass --server-uris or set SERVER_URIS=1=host:port,...")
    addresses = parse_server_uris(uris)
    if replica_id not in addresses:
        raise ConfigError(f"replica id {replica_id} is not in SERVER_URIS ({uris})")
    if replicas is None:
        replicas = len(addresses)
    if replicas != 1 and replicas != len(addresses):
        raise ConfigError(
            f"--replicas {replicas}: use 1 (unreplicated) or the number of SERVER_URIS entries "
            f"({len(addresses)})"
        )
    if replicas != 1 and replicas < 3:
        raise ConfigError(f"a replicated cluster needs at least 3 servers, got {replicas}")
    if fabric not in FABRIC_KINDS:
        raise ConfigError(f"--fabric {fabric!r}: choose one of {', '.join(FABRIC_KINDS)}")
    if registry_address is None:
        registry_address = os.environ.get("DORY_REGISTRY_IP", "").strip() or None
    if registry_address is not None:
        check_address(registry_address, "DORY_REGISTRY_IP")
    listen_address = listen if listen is not None else addresses[replica_id]
    check_address(listen_address, "--listen")
    if grpc_workers < 2:
        raise ConfigError(f"--grpc-workers {grpc_workers}: need at least 2")
    return ServerConfig(
        replica_id=replica_id,
        addresses=addresses,
        listen=listen_address,
        replicas=replicas,
        fabric=fabric,
        registry_address=registry_address,
        cluster_id=cluster_id or os.environ.get("MU_CLUSTER_ID", "") or DEFAULT_CLUSTER_ID,
        fifo_path=fifo_path,
        grpc_workers=grpc_workers,
        log_slots=log_slots,
    )
