#!/usr/bin/env bash
# Generate the Python gRPC stubs (exchange/proto/exchange_pb2*.py and .pyi) from
# exchange/proto/exchange.proto with grpcio-tools. The generated files are committed too, so a fresh
# clone works without this step; run it again after editing the .proto. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
$PYTHON -m grpc_tools.protoc -I . \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    exchange/proto/exchange.proto
# The .pyi stub is for mypy; ruff's exclude covers only *_pb2*.py, so mark the stub as generated.
stub=exchange/proto/exchange_pb2.pyi
if ! head -1 "$stub" | grep -q "ruff: noqa"; then
    { echo "# ruff: noqa"; cat "$stub"; } > "$stub.tmp" && mv "$stub.tmp" "$stub"
fi
echo "gen_proto: generated exchange/proto/exchange_pb2.py, exchange_pb2.pyi, exchange_pb2_grpc.py" >&2
