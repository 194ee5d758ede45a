#!/bin/sh
# Builds the TypeScript client: installs its dependencies as package-lock.json pins them (npm ci), then compiles
# the library (dist/esm, dist/cjs) and, against it, the conformance runner, the example and the unit tests
# (dist-tools). Idempotent; quick when nothing changed (npm ci only when the lock file changed, tsc -b skips
# what is up to date). Needs Node.js 20.3 or later with npm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	sh "$here/../../tools/ensure_packages.sh" nodejs npm
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "clients/typescript/build.sh: Node.js and npm are needed (Debian: apt-get install nodejs npm)" >&2
	exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 3) ? 0 : 1)'; then
	echo "clients/typescript/build.sh: Node.js 20.3 or later is needed, not $(node --version)" >&2
	exit 1
fi

# npm ci starts from an empty node_modules every time: run it only when the lock file differs from the one
# installed last.
stamp=node_modules/.installed-package-lock.json
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
	npm ci --no-audit --no-fund --loglevel=error
	cp package-lock.json "$stamp"
fi

npm run --silent build
