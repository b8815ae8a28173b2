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
