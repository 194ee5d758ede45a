#!/bin/sh
# Regenerates the committed protobuf code in src/gen from proto/ (or into the directory given as $1: test.sh
# passes a temporary one to check that the committed code matches the .proto files).
#
# protoc is grpcio-tools' (the project's .venv, pinned in pyproject.toml) and protoc-gen-es is the version pinned
# in package-lock.json, so a regeneration is byte-identical to what is committed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-"$here/src/gen"}
python=${PYTHON:-"$root/.venv/bin/python"}
plugin="$here/node_modules/.bin/protoc-gen-es"

if [ ! -x "$python" ]; then
	echo "generate.sh: $python not found: run 'make install' at the repository root first" >&2
	exit 1
fi
if [ ! -x "$plugin" ]; then
	(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

rm -rf "$out"
mkdir -p "$out"
# google/api/annotations.proto and http.proto are generated too: the service's file descriptor embeds its
# dependencies, and the well-known types (duration, timestamp) come from @bufbuild/protobuf/wkt.
cd "$root"
"$python" -m grpc_tools.protoc \
	-Iproto \
	--plugin=protoc-gen-es="$plugin" \
	--es_out="$out" \
	--es_opt=target=ts,import_extension=js \
	proto/entitlements/v1/entitlements.proto \
	proto/google/api/annotations.proto \
	proto/google/api/http.proto
