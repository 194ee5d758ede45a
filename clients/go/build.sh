#!/bin/sh
# Builds the Go client: fetches the modules go.sum pins (from the Go module proxy, once per machine), then
# compiles the library, the example and the conformance runner into clients/go/bin (ignored by git).
# Quick when nothing changed: Go's module and build caches do the work.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! command -v go >/dev/null 2>&1; then
    echo "clients/go/build.sh: the go command is not installed (Go 1.26 or later is needed)" >&2
    exit 1
fi

go mod download
# The two programs import the library and the generated package, so this compiles all three.
go build -o bin/ ./cmd/conformance-runner ./examples/gameserver
