#!/bin/sh
# Builds the C++ client into clients/cpp/build: the library, the example game server and the conformance runner
# (the unit tests are built by test.sh, in the same directory).
#
# Installs what it needs from Debian first (tools/ensure_packages.sh: nothing to do when all is there). Quick
# when nothing changed: CMake is configured once, and make rebuilds only what changed. Parallel jobs:
# CMAKE_BUILD_PARALLEL_LEVEL, 2 by default.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$here/build"

# cmake, a compiler and make; gRPC C++ and protobuf (runtime, headers, and the protoc/plugin generate.sh uses);
# pkg-config (Debian's gRPC CMake package finds re2 through it); nlohmann-json (runner); GoogleTest and openssl
# (unit tests: configured with the rest, built by test.sh).
sh "$root/tools/ensure_packages.sh" cmake g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler \
    protobuf-compiler-grpc nlohmann-json3-dev libgtest-dev openssl

if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build.configure.log" 2>&1 || {
        cat "$build.configure.log" >&2
        exit 1
    }
    rm -f "$build.configure.log"
fi
cmake --build "$build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    --target entitlements_client entitlements_gameserver entitlements_conformance_runner
