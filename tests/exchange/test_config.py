"""Configuration parsing: SERVER_URIS, SID, --replicas; errors name the setting."""

import pytest

from exchange.config import (
    SYMBOLS_DEFAULT,
    ConfigError,
    instruments_setting,
    parse_server_uris,
    resolve_server_config,
)


def test_parse_server_uris():
    assert parse_server_uris("2=h2:2, 1=h1:1,") == {1: "h1:1", 2: "h2:2"}


@pytest.mark.parametrize("text", ["", "1=h1", "x=h:1", "1=h:1,1=h:2", "0=h:1", "1=h:99999"])
def test_bad_server_uris(text):
    with pytest.raises(ConfigError, match="SERVER_URIS"):
        parse_server_uris(text)


def test_environment_is_the_fallback(monkeypatch):
    monkeypatch.setenv("SID", "2")
    monkeypatch.setenv("SERVER_URIS", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3")
    monkeypatch.setenv("DORY_REGISTRY_IP", "127.0.0.1:9999")
    config = resolve_server_config(None, None, None, "shm", None, None, None, None)
    assert config.replica_id == 2 and config.replicas == 3
    assert config.registry_address == "127.0.0.1:9999"
    assert config.listen == "127.0.0.1:2"
    assert config.members == (1, 2, 3)


def test_replicas_must_be_one_or_all(monkeypatch):
    monkeypatch.delenv("SID", raising=False)
    uris = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"
    with pytest.raises(ConfigError, match="--replicas"):
        resolve_server_config(1, uris, 2, "shm", None, None, None, None)
    with pytest.raises(ConfigError, match="replica id"):
        resolve_server_config(None, uris, None, "shm", None, None, None, None)
    single = resolve_server_config(3, uris, 1, "shm", None, None, None, None)
    assert single.members == (3,)


def test_durability_settings(monkeypatch):
    from exchange.config import durability_settings

    monkeypatch.delenv("MU_DATA_DIR", raising=False)
    assert durability_settings(None, None, 10) == (None, "sync", 10)
    assert durability_settings("/d", "async", 10) == ("/d", "async", 10)
    monkeypatch.setenv("MU_DATA_DIR", "/from-env")
    assert durability_settings(None, None, 10) == ("/from-env", "sync", 10)
    monkeypatch.delenv("MU_DATA_DIR")
    with pytest.raises(ConfigError, match="--durability sync needs --data-dir"):
        durability_settings(None, "sync", 10)
    with pytest.raises(ConfigError, match="--snapshot-entries"):
        durability_settings("/d", None, 0)


def test_instrument_list_from_flag_file_or_default(tmp_path):
    assert instruments_setting(None, None) == SYMBOLS_DEFAULT
    assert instruments_setting("MSFT, AAPL,IBM", None) == ("MSFT", "AAPL", "IBM")
    listed = tmp_path / "symbols.txt"
    listed.write_text("# our instruments\nAAPL MSFT\nIBM,  # big blue\n")
    assert instruments_setting(None, str(listed)) == ("AAPL", "MSFT", "IBM")


@pytest.mark.parametrize(("symbols", "message"), [
    ("", "holds 1..100 symbols"),
    ("A,A", "names a symbol twice"),
    ("SEVENTEEN_BYTES_X", "not 1..16 UTF-8 bytes"),
    (",".join(f"S{n}" for n in range(101)), "got 101"),
])
def test_bad_instrument_lists_are_one_line_errors(symbols, message):
    with pytest.raises(ConfigError, match=message):
        instruments_setting(symbols, None)


def test_symbols_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="give --symbols or --symbols-file, not both"):
        instruments_setting("A", "f")
    with pytest.raises(ConfigError, match="No such file"):
        instruments_setting(None, str(tmp_path / "missing"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        instruments_setting(None, str(binary))
    big = tmp_path / "big"
    big.write_text("A " * 40_000)
    with pytest.raises(ConfigError, match="larger than"):
        instruments_setting(None, str(big))


def test_detector_timings_scan_slowly_when_calm_and_fast_otherwise():
    """docs/exchange.md: 2 ms scans while all peers beat, 250 us otherwise; the gap cap follows
    the calm period, and a fast period above the calm one is clamped to it."""
    from exchange.replication import detector_timings

    timings = detector_timings(2000, 0, 1500, 2000, 250)
    assert timings == {"pump_poll_us": 2000, "heartbeat_interval_us": 1500,
                       "scan_interval_us": 2000, "scan_gap_cap_us": 2000,
                       "scan_fast_interval_us": 250}
    assert detector_timings(0, 0, 2000)["scan_interval_us"] == 2000  # kvstores: one period
    assert "scan_fast_interval_us" not in detector_timings(0, 0, 2000)
    assert detector_timings(0, 0, 1500, 500, 900)["scan_fast_interval_us"] == 500
