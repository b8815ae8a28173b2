#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the linters and the whole test suite. CI calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
echo "== ruff" >&2
$PYTHON -m ruff check .
echo "== mypy" >&2
$PYTHON -m mypy orderbook consensus exchange traders kvstores plots
echo "== pytest" >&2
$PYTHON -m pytest "$@"
