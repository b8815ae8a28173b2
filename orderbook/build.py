"""Which build of the hot modules runs: the pure-Python modules or their mypyc-compiled versions.

Rule 1: the pure-Python modules are the reference and the fallback; a compiled build
        (`bash scripts/setup.sh`, i.e. scripts/build_compiled.py) must behave
        identically (golden streams, digests) and is used only while it is fresh.
Rule 2: a compiled build lives outside the source tree, in build/compiled/orderbook/ (and
        build/compiled/exchange/ for the exchange's apply path) next to the packages' own
        directories (gitignored), never as .so files beside the .py files: an extension module
        there would shadow its source for every user of that tree, even after the source
        changed. `activate()` (run first by orderbook/__init__.py) puts that directory ahead of
        the sources on the package's __path__ only when its manifest's sha256 of every compiled
        source (both packages'), Python version and extension suffix match the running ones.
Rule 3: the environment variable MU_ORDERBOOK_BUILD chooses: `auto` (default: compiled when a
        fresh build exists, else pure, with one line on stderr if a build exists but is stale),
        `pure` (never the compiled build), `compiled` (the compiled build or ImportError with
        the reason). `engine_build()` says which one runs; `python -m orderbook bench` and
        `bench-liquibook` print it.
Rule 4: the build is one unit: the engine's modules and the exchange's apply path
        (`EXCHANGE_COMPILED_MODULES`: the dedup table and the state machine, which every replica
        runs for every order) are compiled together, in one mypyc group whose shared library is
        orderbook/native__mypyc, and are used together: `activate_exchange()` (run by
        exchange/__init__.py, after `import orderbook` chose) puts build/compiled/exchange/ on
        the exchange package's __path__ exactly when the engine runs compiled. A change to any
        compiled source makes the whole build stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

COMPILED_MODULES = ("constants", "keys", "events", "side", "matching", "book", "market")
"""The hot modules compiled by mypyc, in orderbook/ (each is mypy --strict clean). Not types.py:
a compiled command class would check its field types on construction and raise where the pure
one builds a command that the book then rejects with a reason (orderbook.types Rule 1)."""
EXCHANGE_COMPILED_MODULES = ("dedup", "state_machine")
"""The exchange's apply path, compiled with the engine (Rule 4), in exchange/."""
BUILD_ENV = "MU_ORDERBOOK_BUILD"
BUILD_CHOICES = ("auto", "pure", "compiled")
MANIFEST_NAME = "MANIFEST.json"
SOURCE_DIR = Path(__file__).resolve().parent
COMPILED_DIR_ENV = "MU_ORDERBOOK_COMPILED_DIR"
COMPILED_DIR = Path(os.environ.get(COMPILED_DIR_ENV)
                    or SOURCE_DIR.parent / "build" / "compiled" / "orderbook")
"""Where scripts/build_compiled.py puts the extension modules (Rule 2); MU_ORDERBOOK_COMPILED_DIR
names another directory (tests build one in a temporary directory)."""

def compiled_sources(source_dir: Path = SOURCE_DIR) -> dict[str, Path]:
    """Every compiled module's source by name (``book``, ``exchange.state_machine``): the
    engine's in ``source_dir``, the exchange's beside it (Rule 4)."""
    sources = {name: source_dir / f"{name}.py" for name in COMPILED_MODULES}
    for name in EXCHANGE_COMPILED_MODULES:
        sources[f"exchange.{name}"] = source_dir.parent / "exchange" / f"{name}.py"
    return sources


def source_digests(source_dir: Path = SOURCE_DIR) -> dict[str, str]:
    """sha256 of every compiled module's source, by name (as ``compiled_sources``)."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in compiled_sources(source_dir).items()}


def exchange_dir(engine_dir: Path) -> Path:
    """Where the exchange's compiled modules are for the engine's ``engine_dir`` (Rule 4):
    beside it."""
    return engine_dir.parent / "exchange"


def runtime_tag() -> dict[str, str]:
    """What an extension module must have been built for: this interpreter's version and
    extension suffix."""
    return {"python": sys.version.split()[0],
            "ext_suffix": str(sysconfig.get_config_var("EXT_SUFFIX"))}


def stale_reason(compiled_dir: Path | None = None) -> str | None:
    """Why the build in `compiled_dir` (default COMPILED_DIR) cannot be used (None: fresh)."""
    compiled_dir = COMPILED_DIR if compiled_dir is None else compiled_dir
    manifest_path = compiled_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"no compiled build in {compiled_dir}"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable {manifest_path}: {error}"
    if manifest.get("runtime") != runtime_tag():
        return f"built for {manifest.get('runtime')}, running {runtime_tag()}"
    digests = source_digests()
    changed = [name for name in digests if manifest.get("sources", {}).get(name) != digests[name]]
    if changed:
        path = compiled_sources()[changed[0]]
        return f"{path.parent.name}/{path.name} changed since it was compiled"
    return None


def activate(package_path: list[str]) -> str:
    """Choose the build (Rule 3) by editing the package's __path__; returns "pure" or
    "compiled". Called once, before any compiled module is imported."""
    choice = os.environ.get(BUILD_ENV, "auto")
    if choice not in BUILD_CHOICES:
        raise ImportError(f"{BUILD_ENV}={choice!r}: expected one of {', '.join(BUILD_CHOICES)}")
    if choice == "pure":
        return "pure"
    reason = stale_reason()
    if reason is not None:
        if choice == "compiled":
            raise ImportError(f"{BUILD_ENV}=compiled but {reason} "
                              f"(build it: bash scripts/setup.sh --compiled)")
        if (COMPILED_DIR / MANIFEST_NAME).is_file():
            print(f"orderbook: running pure Python: {reason} "
                  f"(rebuild: bash scripts/setup.sh --compiled)", file=sys.stderr)
        return "pure"
    assert (COMPILED_DIR / MANIFEST_NAME).is_file()
    package_path.insert(0, str(COMPILED_DIR))
    return "compiled"


def activate_exchange(package_path: list[str], engine: str) -> str:
    """Rule 4: put the exchange's compiled modules first on its package's __path__ when the
    engine runs compiled (``engine``: what ``activate`` chose, ``orderbook.BUILD``); returns
    "pure" or "compiled"."""
    if engine != "compiled":
        return "pure"
    directory = exchange_dir(COMPILED_DIR)
    if not all((directory / f"{name}{runtime_tag()['ext_suffix']}").is_file()
               for name in EXCHANGE_COMPILED_MODULES):
        if os.environ.get(BUILD_ENV) == "compiled":
            raise ImportError(f"{BUILD_ENV}=compiled but {directory} lacks the exchange's "
                              f"modules (rebuild: bash scripts/setup.sh --compiled)")
        print(f"exchange: running pure Python: {directory} lacks compiled modules "
              f"(rebuild: bash scripts/setup.sh --compiled)", file=sys.stderr)
        return "pure"
    package_path.insert(0, str(directory))
    return "compiled"


def engine_build() -> str:
    """One phrase naming the build that runs, e.g. for benchmark headers."""
    import orderbook.book

    path = orderbook.book.__file__ or ""
    if path.endswith(".py"):
        return "pure Python (orderbook/book.py)"
    return (f"compiled with mypyc ({Path(path).name} in {Path(path).parent}; "
            f"with exchange.{' and exchange.'.join(EXCHANGE_COMPILED_MODULES)})")
