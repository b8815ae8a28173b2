"""Server configuration: the original's environment (``SID``, ``IDS``, ``DORY_REGISTRY_IP``) and
the exchange servers' flags, parsed and checked.

Rule 1: a flag wins over the environment variable, which wins over the default named here.
Rule 2: bad configuration raises ``ConfigError`` naming the setting and the value; the CLI prints
        it as one line and exits 2.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from kvstores.constants import (
    HEARTBEAT_INTERVAL_US_DEFAULT,
    LOG_SLOTS_DEFAULT,
    PUMP_POLL_US_DEFAULT,
)

FABRIC_KINDS = ("shm", "verbs")
FOLLOWER_WRITES = ("redirect", "forward")
REPLICA_ID_MAX = 255  # consensus proposal numbers reserve one byte for the replica id
DEFAULT_FIFO_TEMPLATE = "/tmp/fifo-{id}"  # the original's path, shared with the exchange


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which."""


@dataclass(frozen=True, slots=True)
class KvConfig:
    kind: str  # "redis" | "memcached"
    replica_id: int
    members: tuple[int, ...]  # IDS; (replica_id,) when unreplicated
    bind: str
    port: int
    advertise: str  # host:port followers name in redirects
    replicas: int  # 1 = unreplicated front end (no consensus)
    fabric: str
    registry_address: str | None
    cluster_id: str
    fifo_path: str | None
    log_slots: int = LOG_SLOTS_DEFAULT
    heartbeat_interval_us: int = HEARTBEAT_INTERVAL_US_DEFAULT
    dead_after_us: int = 0  # 0 = consensus's default
    pump_poll_us: int = PUMP_POLL_US_DEFAULT
    parent_pid: int = 0  # exit when this process is gone (launchers set it)
    follower_writes: str = "redirect"  # or "forward" (kvstores.forward)


def env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def parse_ids(text: str) -> tuple[int, ...]:
    """``1,2,3`` -> (1, 2, 3), checked."""
    ids: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= REPLICA_ID_MAX:
            raise ConfigError(f"IDS item {item!r} is not a replica id in 1..{REPLICA_ID_MAX}")
        if int(item) in ids:
            raise ConfigError(f"IDS names replica {item} twice")
        ids.append(int(item))
    if not ids:
        raise ConfigError("IDS is empty; expected e.g. IDS=1,2,3")
    return tuple(sorted(ids))


def check_address(address: str, what: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {address!r} is not host:port")


def resolve(
    kind: str,
    *,
    replica_id: int | None,
    ids: str | None,
    port: int,
    bind: str,
    advertise: str | None,
    replicas: int | None,
    fabric: str,
    registry_address: str | None,
    cluster_id: str | None,
    fifo_path: str | None,
) -> KvConfig:
    """Combine flags with the environment and check the result (Rules 1-2)."""
    if replica_id is None:
        replica_id = env_int("SID")
    if replica_id is None and replicas == 1:
        replica_id = 1  # the unreplicated front end needs no id
    if replica_id is None:
        raise ConfigError("no replica id: pass --id N or set SID=N")
    if not 1 <= replica_id <= REPLICA_ID_MAX:
        raise ConfigError(f"replica id {replica_id} not in 1..{REPLICA_ID_MAX}")
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} not in 1..65535")
    if replicas == 1:
        members: tuple[int, ...] = (replica_id,)
    else:
        text = ids if ids is not None else os.environ.get("IDS", "")
        if not text.strip():
            raise ConfigError("no replica list: pass --ids 1,2,3 or set IDS=1,2,3 "
                              "(or --replicas 1 for the unreplicated front end)")
        members = parse_ids(text)
        if replica_id not in members:
            raise ConfigError(f"replica id {replica_id} is not in IDS ({text})")
        if replicas is not None and replicas != len(members):
            raise ConfigError(f"--replicas {replicas}: use 1 (unreplicated) or the number of "
                              f"IDS ({len(members)})")
        if len(members) < 3:
            raise ConfigError(f"a replicated cluster needs at least 3 servers, got {len(members)}")
    if fabric not in FABRIC_KINDS:
        raise ConfigError(f"--fabric {fabric!r}: choose one of {', '.join(FABRIC_KINDS)}")
    if registry_address is None:
        registry_address = os.environ.get("DORY_REGISTRY_IP", "").strip() or None
    if registry_address is not None:
        check_address(registry_address, "DORY_REGISTRY_IP")
    if advertise is None:
        host = socket.gethostname() if bind in ("0.0.0.0", "::", "") else bind
        advertise = f"{host}:{port}"
    check_address(advertise, "--advertise")
    return KvConfig(
        kind=kind,
        replica_id=replica_id,
        members=members,
        bind=bind,
        port=port,
        advertise=advertise,
        replicas=len(members),
        fabric=fabric,
        registry_address=registry_address,
        cluster_id=cluster_id or os.environ.get("MU_CLUSTER_ID", "") or f"kvstores-{kind}",
        fifo_path=fifo_path,
    )
