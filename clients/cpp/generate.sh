#!/bin/sh
# Regenerates the committed protobuf and gRPC C++ code in clients/cpp/gen from proto/.
#
# Usage: clients/cpp/generate.sh [OUTPUT_DIR]   (default: clients/cpp/gen; test.sh passes a temporary one)
#
# The code must come from Debian's protoc and grpc_cpp_plugin (packages protobuf-compiler and
# protobuf-compiler-grpc): generated protobuf C++ only compiles against the runtime headers of the same protobuf
# release (3.21.x here, libprotobuf-dev), and the gRPC stubs against the same gRPC (1.51.x, libgrpc++-dev).
# It refuses another protoc, so the committed files do not change with the machine that regenerated them
# (grpc_cpp_plugin has no version flag: it comes from the same Debian release as protoc).
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/gen}"

expected_protoc="libprotoc 3.21.12"
if ! command -v protoc >/dev/null 2>&1 || ! command -v grpc_cpp_plugin >/dev/null 2>&1; then
    echo "generate.sh: protoc or grpc_cpp_plugin missing: sh tools/ensure_packages.sh protobuf-compiler protobuf-compiler-grpc" >&2
    exit 1
fi
actual_protoc="$(protoc --version)"
if [ "$actual_protoc" != "$expected_protoc" ]; then
    echo "generate.sh: need $expected_protoc (Debian bookworm's protobuf-compiler), found $actual_protoc" >&2
    exit 1
fi

mkdir -p "$out"
rm -rf "$out/entitlements" "$out/google"
# google/api/{annotations,http}.proto carry the HTTP rules entitlements.proto imports; its generated code refers
# to their descriptors, so they are compiled into the library too (they declare no service: no gRPC stubs).
protoc -I"$root/proto" --cpp_out="$out" google/api/annotations.proto google/api/http.proto
protoc -I"$root/proto" --cpp_out="$out" --grpc_out="$out" \
    --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" entitlements/v1/entitlements.proto
