# Every target the README and .ci/run use. `make test` and `make run` set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(wildcard proto/entitlements/v1/*.proto)
GEN_OUT := clients/python

.PHONY: install proto openapi run run-cluster demo test lint typecheck bench clients test-clients clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Regenerate the Python stubs from proto/ (committed; tests/test_generated.py checks they match).
proto: $(STAMP)
	$(BIN)/python tools/genproto.py

## Regenerate the HTTP/JSON API's OpenAPI document from proto/ (committed; conformance/test_openapi_drift.py checks it;
## needs Go for the pinned protoc-gen-openapiv2).
openapi: $(STAMP)
	$(BIN)/python tools/genopenapi.py

## The service and the webhook gateway on the embedded Redis in ./var, in insecure development mode.
run: $(STAMP)
	if [ -z "$${ENTITLEMENTS_PROJECTS_FILE:-}" ]; then \
		export GATEWAY_XSOLLA_SECRET=$${GATEWAY_XSOLLA_SECRET:-dev-webhook-secret}; fi; \
	ENTITLEMENTS_INSECURE_DEV_MODE=1 $(BIN)/python -m tools.devstack

## The same on a local Redis Cluster (3 primaries, 1 replica each) in ./var/cluster, kept between runs (docs/CLUSTER.md).
run-cluster: $(STAMP)
	if [ -z "$${ENTITLEMENTS_PROJECTS_FILE:-}" ]; then \
		export GATEWAY_XSOLLA_SECRET=$${GATEWAY_XSOLLA_SECRET:-dev-webhook-secret}; fi; \
	ENTITLEMENTS_INSECURE_DEV_MODE=1 $(BIN)/python -m tools.devstack --cluster

## Two purchases end to end, one of them with its webhook lost: embedded Redis, service, gateway and the Xsolla simulator (tools/demo.py).
demo: $(STAMP)
	$(BIN)/python -m tools.demo

## System packages some tests need (promtool; Chromium and its driver for the console's browser tests), then pytest.
test: $(STAMP)
	sh tools/ensure_packages.sh prometheus chromium chromium-driver
	$(BIN)/pytest

## The Go, TypeScript and C++ clients, their examples and conformance runners (each clients/<lang>/build.sh installs
## what it needs: Go modules, npm packages, Debian's gRPC C++ packages).
CLIENT_DIRS := clients/go clients/typescript clients/cpp
clients: $(STAMP)
	set -e; for dir in $(CLIENT_DIRS); do echo "== $$dir"; sh $$dir/build.sh; done

## Each client's own tests, then the conformance suite (conformance/): every client, the HTTP/JSON API included,
## runs the same scenarios against a real service, gateway, Redis and Xsolla simulator.
test-clients: clients
	set -e; for dir in $(CLIENT_DIRS); do echo "== $$dir"; sh $$dir/test.sh; done
	$(BIN)/pytest conformance

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Speed: RPCs against a bare grpc.aio server, gateway ingest, consumer, streams, webhook-to-stream latency
## (docs/benchmarks.md); installs h2load when it can. BENCH_ARGS="--only core" or --help
bench: $(STAMP)
	sh bench/ensure_h2load.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
