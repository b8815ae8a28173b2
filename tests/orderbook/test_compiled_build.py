"""The mypyc build (scripts/build_compiled.py) passes the golden, digest, reject and exchange
state-machine tests unchanged.

Built into a temporary directory (MU_ORDERBOOK_COMPILED_DIR), so the checkout's own build and the
rest of the test run are untouched; skipped with the builder's reason where no C compiler exists.
And the other way round: when the run itself imports the checkout's compiled build (setup.sh's
default), the same tests run against the pure-Python modules in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAME_BEHAVIOUR_TESTS = [
    "tests/orderbook/test_golden.py", "tests/orderbook/test_snapshot.py",
    "tests/orderbook/test_rejects.py", "tests/orderbook/test_order_reuse.py",
    "tests/orderbook/test_market.py", "tests/orderbook/test_keys.py",
    "tests/exchange/test_state_machine.py", "tests/exchange/test_snapshot.py",
    "tests/exchange/test_dedup.py", "tests/exchange/test_limits.py",
    "tests/exchange/test_snapshot_batches.py", "tests/exchange/test_batching.py",
    "tests/exchange/test_node.py", "tests/exchange/test_fuzz.py",
]


def _env(**changes: str) -> dict[str, str]:
    """This environment with the checkout first on the path and ``changes``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
                **changes)


def _python(code: str, env: dict[str, str]) -> str:
    """What ``python -c code`` prints in ``env``."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout


def _same_behaviour_tests(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *SAME_BEHAVIOUR_TESTS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800, check=False)


@pytest.mark.slow
def test_compiled_build_behaves_like_the_sources(tmp_path: Path) -> None:
    env = _env(MU_ORDERBOOK_COMPILED_DIR=str(tmp_path / "orderbook"),
               MU_ORDERBOOK_BUILD="compiled")  # the builder must not need what it builds
    built = subprocess.run([sys.executable, "scripts/build_compiled.py"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1800, check=False)
    if built.returncode != 0 and "cannot compile" in built.stderr:
        pytest.skip(built.stderr.strip())
    assert built.returncode == 0, built.stderr
    probe = _python("import orderbook.build as b, orderbook; "
                    "print(orderbook.BUILD, b.engine_build())", env)
    assert probe.startswith("compiled compiled with mypyc"), probe
    assert str(tmp_path) in probe
    probe = _python("import exchange, exchange.state_machine as m; "
                    "print(exchange.BUILD, m.__file__)", env)
    build_name, path = probe.split()
    assert build_name == "compiled" and path.startswith(str(tmp_path / "exchange")), probe
    tests = _same_behaviour_tests(env)
    assert tests.returncode == 0, tests.stdout[-3000:]


@pytest.mark.slow
def test_the_pure_modules_pass_the_same_tests() -> None:
    """setup.sh compiles by default, so the suite itself usually imports the compiled build:
    the reference modules (orderbook.build Rule 1) then get the same tests in a subprocess that
    forces them."""
    import orderbook

    if orderbook.BUILD == "pure":
        pytest.skip("this run imports the pure modules already: the whole suite tests them")
    env = _env(MU_ORDERBOOK_BUILD="pure")
    probe = _python("import orderbook, exchange, exchange.dedup as d; print(orderbook.BUILD, "
                    "exchange.BUILD, d.__file__)", env)
    assert probe.split() == ["pure", "pure", str(ROOT / "exchange" / "dedup.py")]
    tests = _same_behaviour_tests(env)
    assert tests.returncode == 0, tests.stdout[-3000:]
