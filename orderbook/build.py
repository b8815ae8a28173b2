"""Which build of the engine runs: the pure-Python modules or their mypyc-compiled versions.

Rule 1: the pure-Python modules are the reference and the fallback; a compiled build
        (`bash scripts/setup.sh --compiled`, i.e. scripts/build_compiled.py) must behave
        identically (golden streams, digests) and is used only while it is fresh.
Rule 2: a compiled build lives outside the source tree, in build/compiled/orderbook/ next to the
        package's own directory (gitignored), never as .so files beside the .py files: an
        extension module there would shadow its source for every user of that tree, even after
        the source changed. `activate()` (run first by orderbook/__init__.py) puts that directory
        ahead of the sources on the package's __path__ only when its manifest's sha256 of every
        compiled source, Python version and extension suffix match the running ones.
Rule 3: the environment variable MU_ORDERBOOK_BUILD chooses: `auto` (default: compiled when a
        fresh build exists, else pure, with one line on stderr if a build exists but is stale),
        `pure` (never the compiled build), `compiled` (the compiled build or ImportError with
        the reason). `engine_build()` says which one runs; `python -m orderbook bench` and
        `bench-liquibook` print it.
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
BUILD_ENV = "MU_ORDERBOOK_BUILD"
BUILD_CHOICES = ("auto", "pure", "compiled")
MANIFEST_NAME = "MANIFEST.json"
SOURCE_DIR = Path(__file__).resolve().parent
COMPILED_DIR_ENV = "MU_ORDERBOOK_COMPILED_DIR"
COMPILED_DIR = Path(os.environ.get(COMPILED_DIR_ENV)
                    or SOURCE_DIR.parent / "build" / "compiled" / "orderbook")
"""Where scripts/build_compiled.py puts the extension modules (Rule 2); MU_ORDERBOOK_COMPILED_DIR
names another directory (tests build one in a temporary directory)."""

def source_digests(source_dir: Path = SOURCE_DIR) -> dict[str, str]:
    """sha256 of every compiled module's source, by module name."""
    return {name: hashlib.sha256((source_dir / f"{name}.py").read_bytes()).hexdigest()
            for name in COMPILED_MODULES}


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
    changed = [name for name in COMPILED_MODULES
               if manifest.get("sources", {}).get(name) != digests[name]]
    if changed:
        return f"orderbook/{changed[0]}.py changed since it was compiled"
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


def engine_build() -> str:
    """One phrase naming the build that runs, e.g. for benchmark headers."""
    import orderbook.book

    path = orderbook.book.__file__ or ""
    if path.endswith(".py"):
        return "pure Python (orderbook/book.py)"
    return f"compiled with mypyc ({Path(path).name} in {Path(path).parent})"
