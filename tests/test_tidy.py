"""House rules checked as tests (TigerBeetle's tidy.zig is the model).

Rule 1: a consensus core module (the protocol code that runs under the deterministic simulator:
        consensus/runtime.py Rule 1 lists what may touch the clock, threads and randomness, and
        these modules are not on that list) imports none of ``time``, ``threading``, ``random``,
        ``os``: it asks its ``Runtime``. Fabrics, registries, the CLI, the benches and
        ``runtime`` itself are outside the core.
Rule 2: no function is longer than ``FUNCTION_LINES_MAX`` lines, except the short, named list
        ``LONG_FUNCTIONS``; an entry that is no longer needed fails the test too, so the list only
        shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orderbook", "consensus", "exchange", "traders", "kvstores", "plots")
CONSENSUS_CORE = ("config", "constants", "ctrl", "detector", "election", "errors", "log", "pump",
                  "recovery", "rejoin", "replica", "replication", "state")
FORBIDDEN_IN_CORE = frozenset({"time", "threading", "random", "os"})
FUNCTION_LINES_MAX = 70
LONG_FUNCTIONS = {  # "path:function": why it stays long (each entry must still be needed)
    "orderbook/matching.py:_match_regular": "the hot matching loop: one frame per order",
    "exchange/demo.py:_run_with_cluster": "a linear demo script, read top to bottom",
    "traders/__main__.py:_run_load": "a linear CLI driver, read top to bottom",
}


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                  if "proto" not in path.relative_to(ROOT).parts)


def test_core_set_names_existing_modules() -> None:
    for name in CONSENSUS_CORE:
        assert (ROOT / "consensus" / f"{name}.py").is_file(), name


def test_consensus_core_modules_do_not_import_clock_threads_randomness_or_os() -> None:
    offences = []
    for name in CONSENSUS_CORE:
        path = ROOT / "consensus" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_IN_CORE:
                    offences.append(f"consensus/{name}.py:{node.lineno} imports {module}")
    assert not offences, offences


def test_functions_are_short_outside_the_named_exemptions() -> None:
    long: dict[str, int] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES_MAX:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    unexempted = {key: lines for key, lines in long.items() if key not in LONG_FUNCTIONS}
    assert not unexempted, f"functions over {FUNCTION_LINES_MAX} lines: {unexempted}"
    unneeded = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not unneeded, f"exemptions no longer needed (remove them): {unneeded}"
