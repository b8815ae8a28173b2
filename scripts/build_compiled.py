"""Compile the hot modules with mypyc into build/compiled/ (orderbook.build Rules 2 and 4).

Usage: python scripts/build_compiled.py [--clean]   (bash scripts/setup.sh runs it; --pure cleans)

Needs mypyc (it comes with mypy, in the test extra), a C compiler and the Python headers. On
success build/compiled/orderbook/ holds one extension module per name in
orderbook.build.COMPILED_MODULES, the shared library they all call into, and MANIFEST.json (the
sha256 of each source, the Python version and extension suffix), and build/compiled/exchange/ one
per name in EXCHANGE_COMPILED_MODULES (the exchange's apply path); `import orderbook` and
`import exchange` use them while they match the sources (MU_ORDERBOOK_BUILD=pure forces the
pure-Python modules). Nothing is
written beside the sources. Exit status 0 on success, 1 (with one line saying why) when the
build is impossible or fails; the pure-Python modules then keep running.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["MU_ORDERBOOK_BUILD"] = "pure"  # this script never needs the build it replaces

from orderbook.build import (  # noqa: E402
    COMPILED_DIR,
    COMPILED_MODULES,
    EXCHANGE_COMPILED_MODULES,
    MANIFEST_NAME,
    compiled_sources,
    exchange_dir,
    runtime_tag,
    source_digests,
)

GROUP_NAME = "orderbook.native"
"""mypyc's shared library becomes orderbook/native__mypyc*.so, inside the package directory."""

SETUP_TEMPLATE = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="orderbook-compiled", packages=[],
      ext_modules=mypycify({paths!r}, group_name={group!r}, opt_level="3",
                           target_dir={c_dir!r}),
      script_args=["build_ext", "--build-lib", {lib!r}, "--build-temp", {temp!r}])
"""


def missing_tool() -> str | None:
    """Why a build cannot even start (None: mypyc, a C compiler and Python.h are present)."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install mypy)"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip install setuptools)"
    compiler = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler} not found; apt-get install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        return f"no Python headers ({include} missing; apt-get install python3-dev)"
    return None


def build(out_dir: Path) -> None:
    """Compile into `out_dir` (the orderbook/ directory of the compiled build; the exchange's
    modules go to its sibling exchange/) and write the manifest last, so a failed or
    interrupted build is never taken for a fresh one."""
    digests_before = source_digests()
    with tempfile.TemporaryDirectory(prefix="orderbook-mypyc-") as temp:
        lib = Path(temp) / "lib"
        paths = [str(path.relative_to(ROOT)) for path in compiled_sources().values()]
        script = SETUP_TEMPLATE.format(paths=paths, group=GROUP_NAME, lib=str(lib),
                                       temp=str(Path(temp) / "obj"), c_dir=str(Path(temp) / "c"))
        env = dict(os.environ, MYPYC_OPT_LEVEL="3")
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            errors = [line for line in lines if "error" in line.lower()] or lines or ["?"]
            raise RuntimeError(f"mypyc failed: {errors[0][:300]}")
        suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
        for package, names in (("orderbook", {*COMPILED_MODULES, "native__mypyc"}),
                               ("exchange", set(EXCHANGE_COMPILED_MODULES))):
            built = sorted((lib / package).glob("*" + suffix))
            found = {path.name.split(".")[0] for path in built}
            if found != names:
                raise RuntimeError(f"mypyc built {package}/{sorted(found)}, "
                                   f"expected {sorted(names)}")
        if source_digests() != digests_before:
            raise RuntimeError("the sources changed during the build; run it again")
        for package, target in (("orderbook", out_dir), ("exchange", exchange_dir(out_dir))):
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for path in sorted((lib / package).glob("*" + suffix)):
                shutil.copy2(path, target / path.name)
    manifest = {"sources": digests_before, "runtime": runtime_tag(), "group": GROUP_NAME}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--clean", action="store_true",
                        help="remove the compiled build (the pure-Python modules then run)")
    parser.add_argument("--out", type=Path, default=COMPILED_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clean:
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.rmtree(exchange_dir(args.out), ignore_errors=True)
        print(f"build_compiled: removed {args.out} and {exchange_dir(args.out)}", file=sys.stderr)
        return 0
    reason = missing_tool()
    if reason is not None:
        print(f"build_compiled: cannot compile: {reason}; the engine runs pure Python",
              file=sys.stderr)
        return 1
    try:
        build(args.out)
    except (RuntimeError, OSError) as error:
        print(f"build_compiled: {error}; the engine runs pure Python", file=sys.stderr)
        return 1
    print(f"build_compiled: compiled {', '.join(COMPILED_MODULES)} into {args.out} and "
          f"{', '.join(EXCHANGE_COMPILED_MODULES)} into {exchange_dir(args.out)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
