#!/bin/sh
# Regenerates the committed Go code in gen/ from proto/entitlements/v1/*.proto.
#
# Usage: clients/go/generate.sh [OUTPUT_DIR]
#
# OUTPUT_DIR defaults to clients/go; test.sh passes a temporary one and compares it with the committed files.
# Every tool is pinned so a regeneration is byte-identical: protoc is grpcio-tools' (pinned in pyproject.toml,
# run from the project's .venv), protoc-gen-go and protoc-gen-go-grpc are the versions go.mod's `tool` lines
# name.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here}
python=${PYTHON:-$root/.venv/bin/python}
module=github.com/xsolla-entitlements/entitlements/clients/go
gopkg=$module/gen/entitlements/v1

if ! "$python" -c 'import grpc_tools' 2>/dev/null; then
    echo "generate.sh: $python has no grpc_tools; run 'make install' at the repository root first" >&2
    exit 1
fi

plugins=$(mktemp -d)
trap 'rm -rf "$plugins"' EXIT
(cd "$here" && go build -o "$plugins/" google.golang.org/protobuf/cmd/protoc-gen-go \
    google.golang.org/grpc/cmd/protoc-gen-go-grpc)

include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p "$out/gen/entitlements/v1"
rm -f "$out"/gen/entitlements/v1/*.pb.go

cd "$root/proto"
"$python" -m grpc_tools.protoc -I. -I"$include" \
    --plugin=protoc-gen-go="$plugins/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$plugins/protoc-gen-go-grpc" \
    --go_out="$out" --go_opt=module=$module \
    --go-grpc_out="$out" --go-grpc_opt=module=$module \
    entitlements/v1/entitlements.proto entitlements/v1/events.proto
