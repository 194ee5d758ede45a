#!/bin/sh
# Makes sure h2load (Debian/Ubuntu package nghttp2-client) is installed before `make bench`.
#
# Installs it with apt-get when running as root on a system that has apt-get; otherwise it only says so.
# Never fails: without h2load, `python -m bench` measures with its Python load generator alone and says so.
set -u

if command -v h2load >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "h2load not found; install nghttp2-client (apt) or nghttp2 (brew, dnf) for the h2load figures" >&2
    exit 0
fi
echo "installing h2load (apt-get install nghttp2-client)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale (fresh containers): update once, then retry.
if ! apt-get install -y -q nghttp2-client >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nghttp2-client >/dev/null 2>&1
fi
if ! command -v h2load >/dev/null 2>&1; then
    echo "could not install nghttp2-client; the benchmark falls back to its Python load generator" >&2
fi
exit 0
