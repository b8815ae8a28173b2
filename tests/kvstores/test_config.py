"""Settings from flags and the original's environment (kvstores.config)."""

import pytest

from kvstores.config import ConfigError, parse_ids, resolve


def settings(**overrides):
    values = {"replica_id": None, "ids": None, "port": 6379, "bind": "127.0.0.1",
              "advertise": None, "replicas": None, "fabric": "shm", "registry_address": None,
              "cluster_id": None, "fifo_path": None}
    values.update(overrides)
    return resolve("redis", **values)


def test_environment_like_the_original(monkeypatch):
    monkeypatch.setenv("SID", "2")
    monkeypatch.setenv("IDS", "3,1,2")
    monkeypatch.setenv("DORY_REGISTRY_IP", "10.0.0.9:9999")
    config = settings()
    assert (config.replica_id, config.members, config.replicas) == (2, (1, 2, 3), 3)
    assert config.registry_address == "10.0.0.9:9999"
    assert config.advertise == "127.0.0.1:6379"
    assert config.cluster_id == "kvstores-redis"


def test_flags_win_and_unreplicated_needs_no_ids(monkeypatch):
    monkeypatch.delenv("SID", raising=False)
    monkeypatch.setenv("IDS", "1,2,3")
    assert settings(replica_id=3).replica_id == 3
    config = settings(replicas=1)
    assert (config.replica_id, config.members, config.replicas) == (1, (1,), 1)


@pytest.mark.parametrize("overrides, words", [
    ({"replica_id": 4, "ids": "1,2,3"}, "not in IDS"),
    ({"replica_id": 1, "ids": "1,2"}, "at least 3"),
    ({"replica_id": 1, "ids": "1,2,3", "replicas": 2}, "--replicas 2"),
    ({"replica_id": 1, "ids": "1,2,3", "fabric": "udp"}, "--fabric"),
    ({"replica_id": 1, "ids": "1,2,3", "registry_address": "nohost"}, "DORY_REGISTRY_IP"),
    ({"replica_id": 1, "ids": "1,2,3", "port": 0}, "port 0"),
])
def test_bad_settings_name_themselves(monkeypatch, overrides, words):
    monkeypatch.delenv("SID", raising=False)
    monkeypatch.delenv("DORY_REGISTRY_IP", raising=False)
    with pytest.raises(ConfigError, match=words):
        settings(**overrides)


@pytest.mark.parametrize("text", ["", "1,x", "1,1", "0,1,2", "1,2,300"])
def test_bad_ids(text):
    with pytest.raises(ConfigError):
        parse_ids(text)
