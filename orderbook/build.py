"""Which build of the engine runs: the pure-Python modules or their mypyc-compiled versions.

Rule 1: the pure-Python modules are the reference and the fallback; a compiled build (see
        scripts/build_compiled.py) must behave identically (golden streams, digests).
"""

from __future__ import annotations

import orderbook.book


def engine_build() -> str:
    """One phrase naming the build that runs, e.g. for benchmark headers."""
    path = orderbook.book.__file__ or ""
    if path.endswith(".py"):
        return "pure Python (orderbook/book.py)"
    return f"compiled with mypyc ({path})"
