#!/bin/sh
# The C++ client's own checks; no service needed:
#   1. the committed generated code in gen/ is what generate.sh makes from proto/ today;
#   2. the unit tests (GoogleTest, ctest) against an in-process fake service;
#   3. the installed package works: `cmake --install` into a temporary prefix, then a project outside this tree
#      finds it with find_package(entitlements_client) and builds against entitlements::client.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

sh "$here/build.sh"

sh "$here/generate.sh" "$tmp/gen"
if ! diff -ru "$here/gen" "$tmp/gen"; then
    echo "clients/cpp/gen does not match proto/: run clients/cpp/generate.sh and commit the result" >&2
    exit 1
fi
echo "clients/cpp: generated code matches proto/"

cmake --build "$build" --parallel "$jobs" --target entitlements_client_tests
ctest --test-dir "$build" --output-on-failure --parallel "$jobs"

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$here/tests/consumer" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/consumer.log" 2>&1 &&
    cmake --build "$tmp/consumer" --parallel "$jobs" >>"$tmp/consumer.log" 2>&1 &&
    "$tmp/consumer/consumer" >>"$tmp/consumer.log" 2>&1 || {
    cat "$tmp/consumer.log" >&2
    echo "clients/cpp: a project using the installed package (find_package(entitlements_client)) failed" >&2
    exit 1
}
echo "clients/cpp: the installed package builds a consumer"
