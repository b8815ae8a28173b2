"""House rules checked as tests (TigerBeetle's tidy.zig is the model).

Rule 1: a consensus core module (the protocol code that runs under the deterministic simulator:
        consensus/runtime.py Rule 1 lists what may touch the clock, threads and randomness, and
        these modules are not on that list) imports none of ``time``, ``threading``, ``random``,
        ``os``: it asks its ``Runtime``. Fabrics, registries, the CLI, the benches and
        ``runtime`` itself are outside the core.
Rule 3: every "Rule N" cross-reference in a comment or docstring resolves: ``Rule N`` alone
        names a "Rule N:" (or "Rule N (title):") line of the same module's docstring;
        ``<module> Rule N`` (``pump Rule 6``, ``base Rule 4``, ```consensus.fabric.verbs`` Rule
        5``) one of the module of that name (a sibling, the parent package's, a subpackage's or
        a top package's); ``design Rule N`` the "(design Rule N)" label in docs/consensus.md.
Rule 2: no function is longer than ``FUNCTION_LINES_MAX`` lines, except the short, named list
        ``LONG_FUNCTIONS``; an entry that is no longer needed fails the test too, so the list only
        shrinks.
"""

from __future__ import annotations

import ast
import re
from functools import cache
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


_DEFINITION = re.compile(r"^Rule (\d+)(?: \([^)]*\))?:", re.M)
_REFERENCE = re.compile(r"(?:`*([\w.]+)`*\s+)?Rules?\s+(\d+)(?!\s*:)(?! \([^)]*\):)")


@cache
def _defined_rules(path: Path) -> frozenset[int]:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return frozenset(int(number) for number in _DEFINITION.findall(docstring))


def _targets(path: Path, word: str | None) -> list[Path]:
    if word is None:
        return [path]
    name = word.rsplit(".", 1)[-1].lower()  # "Book Rule 6": orderbook/book.py
    candidates = [path.parent / f"{name}.py", path.parent.parent / f"{name}.py",
                  *path.parent.glob(f"*/{name}.py"),
                  *(ROOT / package / f"{name}.py" for package in PACKAGES)]
    found = [candidate for candidate in candidates if candidate.is_file()]
    return found or [path]  # an ordinary word before "Rule": the same module


def test_rule_cross_references_resolve() -> None:
    design = (ROOT / "docs" / "consensus.md").read_text()
    dangling = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in _REFERENCE.finditer(line):
                word, rule = match.group(1), int(match.group(2))
                if word == "design":
                    ok = f"(design Rule {rule})" in design
                else:
                    ok = any(rule in _defined_rules(target) for target in _targets(path, word))
                if not ok:
                    dangling.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}")
    assert not dangling, dangling
