"""orderbook/build.py: which build runs, and a stale compiled build is never used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orderbook import build


def _fake_build(directory: Path, **changes: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"sources": build.source_digests(), "runtime": build.runtime_tag()} | changes
    (directory / build.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_fresh_manifest_is_accepted_and_put_first_on_the_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "COMPILED_DIR", tmp_path)
    monkeypatch.delenv(build.BUILD_ENV, raising=False)
    _fake_build(tmp_path)
    assert build.stale_reason() is None
    path = ["/src/orderbook"]
    assert build.activate(path) == "compiled"
    assert path == [str(tmp_path), "/src/orderbook"]


def test_the_exchange_runs_compiled_exactly_when_the_engine_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    engine_dir, exchange_dir = tmp_path / "orderbook", tmp_path / "exchange"
    monkeypatch.setattr(build, "COMPILED_DIR", engine_dir)
    monkeypatch.delenv(build.BUILD_ENV, raising=False)
    path = ["/src/exchange"]
    assert build.activate_exchange(path, build.activate([])) == "pure"
    assert path == ["/src/exchange"]
    _fake_build(engine_dir)
    engine = build.activate([])
    assert engine == "compiled"
    assert build.activate_exchange(path, engine) == "pure" and path == ["/src/exchange"]
    assert "lacks compiled modules" in capsys.readouterr().err
    monkeypatch.setenv(build.BUILD_ENV, "compiled")
    with pytest.raises(ImportError, match="lacks the exchange's modules"):
        build.activate_exchange(path, engine)
    exchange_dir.mkdir()
    for name in build.EXCHANGE_COMPILED_MODULES:
        (exchange_dir / f"{name}{build.runtime_tag()['ext_suffix']}").write_bytes(b"")
    assert build.activate_exchange(path, engine) == "compiled"
    assert path == [str(exchange_dir), "/src/exchange"]


def test_a_changed_exchange_source_makes_the_whole_build_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "COMPILED_DIR", tmp_path)
    sources = build.source_digests() | {"exchange.state_machine": "0" * 64}
    _fake_build(tmp_path, sources=sources)
    assert build.stale_reason() == "exchange/state_machine.py changed since it was compiled"


@pytest.mark.parametrize(("changes", "words"), [
    ({"sources": {name: "0" * 64 for name in build.COMPILED_MODULES}}, "changed since"),
    ({"runtime": {"python": "3.0.0", "ext_suffix": ".so"}}, "built for"),
])
def test_stale_build_runs_pure_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            changes: dict[str, object], words: str) -> None:
    monkeypatch.setattr(build, "COMPILED_DIR", tmp_path)
    monkeypatch.delenv(build.BUILD_ENV, raising=False)
    _fake_build(tmp_path, **changes)
    path: list[str] = []
    assert build.activate(path) == "pure" and path == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "--compiled" in err
    monkeypatch.setenv(build.BUILD_ENV, "compiled")
    with pytest.raises(ImportError, match=words):
        build.activate(path)


def test_no_build_is_silent_and_env_choices_are_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(build, "COMPILED_DIR", tmp_path / "none")
    monkeypatch.delenv(build.BUILD_ENV, raising=False)
    assert build.activate([]) == "pure"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(build.BUILD_ENV, "pure")
    _fake_build(tmp_path / "none")
    assert build.activate([]) == "pure"
    monkeypatch.setenv(build.BUILD_ENV, "fast")
    with pytest.raises(ImportError, match="expected one of auto, pure, compiled"):
        build.activate([])


def test_package_reports_the_build_that_runs() -> None:
    import orderbook.book

    compiled = not (orderbook.book.__file__ or "").endswith(".py")
    expected = "compiled" if compiled else "pure"
    assert expected == orderbook.BUILD
    assert build.engine_build().startswith("compiled" if compiled else "pure Python")


def test_forcing_pure_in_a_subprocess_imports_the_sources() -> None:
    code = "import orderbook, orderbook.market as m; print(orderbook.BUILD, m.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"MU_ORDERBOOK_BUILD": "pure", "PYTHONPATH": ":".join(sys.path)},
                            timeout=60, check=True)
    build_name, path = result.stdout.split()
    assert build_name == "pure" and path.endswith("orderbook/market.py")
