#!/bin/sh
# Makes sure the Debian packages some tests need are installed: `tools/ensure_packages.sh PACKAGE...`
#
# `make test` runs it for prometheus (promtool checks the alert rules) and chromium chromium-driver (the
# console's browser tests). Only packages not yet installed are installed, with
# `apt-get install -y --no-install-recommends`; the package lists are updated only when that install fails
# (a fresh machine has none, or stale ones). When everything is there it returns at once and prints nothing.
#
# Exit status: 0 when every package is installed, or when this machine cannot install them (no apt-get, or not
# root and no password-free sudo): then it names what is missing and the tests that need it fail, naming the
# package. 1 when apt-get was tried and failed (its output is printed). 2 on a usage error.
set -u

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for package in "$@"; do
        is_installed "$package" || missing="$missing $package"
    done
else
    missing=" $*"
fi
missing="${missing# }"
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_packages: no apt-get here; install these yourself for the tests that need them: $missing" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "ensure_packages: not root; run: sudo apt-get install --no-install-recommends $missing" >&2
    exit 0
fi

# Another apt-get (a second worktree's `make test`) may hold dpkg's lock: wait for it rather than fail.
apt="apt-get -q -o DPkg::Lock::Timeout=600"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "ensure_packages: installing $missing" >&2
# $missing, $as_root and $apt are word-split on purpose: a list of package names, command prefixes.
# shellcheck disable=SC2086
if ! $as_root env DEBIAN_FRONTEND=noninteractive $apt install -y --no-install-recommends $missing >"$log" 2>&1; then
    # shellcheck disable=SC2086
    if ! { $as_root $apt update &&
            $as_root env DEBIAN_FRONTEND=noninteractive $apt install -y --no-install-recommends $missing
         } >"$log" 2>&1; then
        cat "$log" >&2
        echo "ensure_packages: could not install: $missing" >&2
        exit 1
    fi
fi
exit 0
