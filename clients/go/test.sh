#!/bin/sh
# Checks the Go client without a running service: formatting, go vet, go.mod/go.sum tidy, the unit tests
# (against an in-process gRPC server) and that the committed generated code is what the .proto gives.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
    echo "clients/go/test.sh: not gofmt-formatted (run gofmt -w clients/go):" >&2
    echo "$unformatted" >&2
    exit 1
fi
go mod tidy -diff
go vet ./...

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
./generate.sh "$fresh"
if ! diff -r gen "$fresh/gen"; then
    echo "clients/go/test.sh: gen/ does not match the .proto files: run clients/go/generate.sh and commit" >&2
    exit 1
fi
echo "generated code matches proto/"

go test -count=1 ./...
# The cache is read by many goroutines while its stream applies changes: its tests again under the race detector.
go test -count=1 -race -run 'Cache|Watch' .
