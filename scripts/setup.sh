#!/usr/bin/env bash
# Set up a fresh machine for mu-exchange: system packages (memcached for the registry tests,
# multi-host runs and kvstores; redis-server and redis-tools for kvstores) and the Python
# package with its test extra. Idempotent; safe to run again.
#
# By default it also compiles the hot modules (the matching engine's and the exchange's apply
# path) with mypyc into build/compiled/ (scripts/build_compiled.py; needs gcc and the Python
# headers, present on this project's machines). When they cannot be built, setup says so in one
# line and the pure-Python modules run: they are the reference and the fallback. `python -m
# orderbook bench` prints which build runs; MU_ORDERBOOK_BUILD=pure|compiled forces one.
#
# Options:
#   --pure       do not compile, and remove an existing compiled build (the pure modules run)
#   --compiled   compile (the default; kept for older instructions)
set -euo pipefail
cd "$(dirname "$0")/.."

compiled=1
for arg in "$@"; do
    case "$arg" in
        --compiled) compiled=1 ;;
        --pure) compiled=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup: unknown option $arg (see bash scripts/setup.sh --help)" >&2; exit 2 ;;
    esac
done

need_apt=()
command -v memcached >/dev/null 2>&1 || need_apt+=(memcached)
# kvstores replicates real servers and is tested with the real clients (redis-cli, redis-benchmark).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# pyverbs (rdma-core) for the verbs fabric; without an RDMA device it only fails clearly, but then it
# fails saying the device is missing rather than the library.
[ -d /usr/lib/python3/dist-packages/pyverbs ] || need_apt+=(python3-pyverbs)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need_apt[*]} with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: warning: ${need_apt[*]} missing and apt-get unavailable (not root?);" \
             "tests that need it will be skipped" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
echo "setup: installing mu-exchange into $($PYTHON -c 'import sys; print(sys.prefix)')" >&2
$PYTHON -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'
if [ -f scripts/gen_proto.sh ]; then
    bash scripts/gen_proto.sh
fi
if [ "$compiled" -eq 1 ]; then
    $PYTHON scripts/build_compiled.py || echo "setup: warning: no compiled build; the matching" \
        "engine and the apply path run pure Python" >&2
else
    $PYTHON scripts/build_compiled.py --clean
fi
