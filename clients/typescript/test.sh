#!/bin/sh
# The TypeScript client's own checks, with no service running: the committed generated code matches the .proto
# (regenerated into a temporary directory and compared), the type check (strict), ESLint and Prettier, then the
# unit tests against an in-process gRPC server.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
sh "$here/build.sh"
# The TLS tests make their CA and certificates with openssl.
command -v openssl >/dev/null 2>&1 || sh "$here/../../tools/ensure_packages.sh" openssl

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
sh "$here/generate.sh" "$fresh"
if ! diff -r "$here/src/gen" "$fresh"; then
	echo "clients/typescript/src/gen does not match proto/: run clients/typescript/generate.sh and commit the result" >&2
	exit 1
fi
echo "generated code: matches proto/"

npm run --silent typecheck
npm run --silent lint
npm test
