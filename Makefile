# caddy-zmq: build, run and test a Caddy with the zmq module.
#
#   make deps    install every Debian package the build, run and the tests need
#                (deps-run: building and running; deps-test: also the tests')
#   make build   bin/caddy (xcaddy, cgo, libzmq) + example and test workers in bin/
#   make run     Caddy on https://localhost:8443/ in front of bin/hello-worker
#                (installs only libzmq and pkg-config)
#   make test    vet, unit + integration tests with -race, short fuzz runs
#   make fuzz    the same fuzz targets for longer (FUZZTIME=60s)
#   make bench   benchmarks (integration/bench): hello world, large bodies, WebSockets
#   make chaos   fault-injection suite (integration/chaos), table in bin/chaos.md
#   make clean
#
# GNU make >= 4.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:

# Go installed from the official tarball lives here; CI machines start with it
# outside PATH.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

BIN := bin

# Caddy version: the "caddy" string field of "compatibility" in xcaddy.json
# (the "caddy" object under the top level does not match: its value is "{").
CADDY_VERSION := $(shell sed -n 's/.*"caddy"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' xcaddy.json | head -n1)

# Only the first proxy of GOPROXY, then "off": the proxy answers 400/403 for
# our own (unpublished) module, and Go falls back to the local replacement
# only after a 404/410 or an "off". See notes/caddy.md.
XCADDY_GOPROXY = $(shell $(GO) env GOPROXY | cut -d, -f1)|off

# Everything that ends up in bin/caddy (test files do not).
CADDY_SRCS := $(shell find module internal \( -name '*.go' -o -name '*.h' \) ! -name '*_test.go' 2>/dev/null)
# Everything that ends up in the workers.
WORKERKIT_SRCS := $(shell find workerkit internal \( -name '*.go' -o -name '*.h' \) ! -name '*_test.go' ! -path 'workerkit/examples/*' 2>/dev/null)

WORKERS := $(BIN)/hello-worker $(BIN)/echo-worker $(BIN)/testworker $(BIN)/chaosworker $(BIN)/chat-worker \
	$(BIN)/zmqx-conformance $(BIN)/pinned-worker $(BIN)/wschat-worker $(BIN)/floor-worker $(BIN)/frontfloor \
	$(BIN)/wsecho-http

# What building and running need (cgo links libzmq, found by pkg-config).
DEB_RUN_PACKAGES := libzmq3-dev pkg-config
# What only the tests, make bench and make chaos need: Mongrel2 for interop,
# python3-zmq for plain Mongrel2 handlers, wrk for load, curl and Chromium
# as clients, iproute2 for the network-namespace tests.
DEB_TEST_PACKAGES := mongrel2-core wrk python3-zmq curl iproute2 chromium

FUZZTIME ?= 60s
SHORT_FUZZTIME ?= 5s

# make run: ports and endpoints (also read by caddyfiles/Caddyfile).
export HTTPS_PORT ?= 8443
export HTTP_PORT ?= 8080
export ADMIN_ADDR ?= localhost:2019
export ZMQ_REQUESTS ?= tcp://127.0.0.1:9997
export ZMQ_REPLIES ?= tcp://127.0.0.1:9996
export ZMQ_CONTROL ?= tcp://127.0.0.1:9995
RUN_CONFIG ?= caddyfiles/Caddyfile

.PHONY: all deps deps-run deps-test build workers run test vet unit fuzz fuzz-short bench chaos clean

all: build

# ---------------------------------------------------------------------------
# deps-*: quick when everything is there (one dpkg-query per package),
# otherwise one apt-get update and one apt-get install of what is missing.
deps: deps-test

deps-test: deps-run
	@$(call install_debs,$(DEB_TEST_PACKAGES))

deps-run:
	@$(call install_debs,$(DEB_RUN_PACKAGES))
	@command -v $(GO) >/dev/null || { echo "deps: Go not found (expected /usr/local/go/bin/go)"; exit 1; }

# install_debs: apt-get install those of the packages $(1) not installed.
define install_debs
missing=""; \
	for p in $(1); do \
	  if ! dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$'; then \
	    missing="$$missing $$p"; \
	  fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; if [ "$$(id -u)" != 0 ]; then sudo="sudo"; fi; \
	  echo "deps: installing$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

# ---------------------------------------------------------------------------
build: deps-run $(BIN)/caddy workers

workers: deps-run $(WORKERS)

# Order-only "| deps-run": it always runs first but never forces a rebuild.
$(BIN)/caddy: $(CADDY_SRCS) go.mod go.sum xcaddy.json | deps-run
	@test -n "$(CADDY_VERSION)" || { echo "cannot read the Caddy version from xcaddy.json"; exit 1; }
	@mkdir -p $(BIN)
	@echo "xcaddy build $(CADDY_VERSION) (cgo, GOPROXY=$(XCADDY_GOPROXY))"
	@date +%s.%N > $@.started
	@# One retry: a cold build was once seen to fail with a transient
	@# "could not import ... (open : no such file or directory)".
	@xcaddy_build() { \
	  CGO_ENABLED=1 GOPROXY="$(XCADDY_GOPROXY)" \
	    $(GO) tool xcaddy build $(CADDY_VERSION) \
	      --with github.com/zmqbridge/caddy-zmq/module \
	      --replace github.com/zmqbridge/caddy-zmq=. \
	      --output $@.tmp; \
	}; \
	xcaddy_build || { echo "xcaddy build failed; trying once more"; xcaddy_build; }
	@if ! ldd $@.tmp | grep 'libzmq' >/dev/null; then \
	  echo "$@ is not linked against libzmq (was it built without cgo?):"; ldd $@.tmp || true; \
	  rm -f $@.tmp; exit 1; \
	fi
	@mv -f $@.tmp $@
	@# Date the binary from the start of the build: a source saved while
	@# xcaddy was running is then newer, and the next make rebuilds.
	@touch -d "@$$(cat $@.started)" $@ && rm -f $@.started
	@$@ list-modules | grep -x 'http.handlers.zmq' >/dev/null || { echo "$@ lacks http.handlers.zmq"; exit 1; }
	@echo "built $@: $$($@ version | head -n1), $$(ldd $@ | grep -o 'libzmq[^ ]*' | head -n1)"

# go_build: build package $(1) into $@, dated from the start of the build.
define go_build
@mkdir -p $(BIN)
@start=$$(date +%s.%N); \
echo "go build -o $@ $(1)"; \
CGO_ENABLED=1 $(GO) build -o $@ $(1); \
touch -d "@$$start" $@
endef

$(BIN)/hello-worker: $(WORKERKIT_SRCS) $(wildcard workerkit/examples/hello/*.go) go.mod go.sum | deps-run
	$(call go_build,./workerkit/examples/hello)

$(BIN)/echo-worker: $(WORKERKIT_SRCS) $(wildcard workerkit/examples/echo/*.go) go.mod go.sum | deps-run
	$(call go_build,./workerkit/examples/echo)

$(BIN)/chaosworker: $(WORKERKIT_SRCS) $(wildcard integration/chaosworker/*.go) go.mod go.sum | deps-run
	$(call go_build,./integration/chaosworker)

$(BIN)/chat-worker: $(WORKERKIT_SRCS) $(wildcard workerkit/examples/chat/*.go) go.mod go.sum | deps-run
	$(call go_build,./workerkit/examples/chat)

$(BIN)/pinned-worker: $(WORKERKIT_SRCS) $(wildcard workerkit/examples/pinned/*.go) go.mod go.sum | deps-run
	$(call go_build,./workerkit/examples/pinned)

$(BIN)/wschat-worker: $(WORKERKIT_SRCS) $(wildcard workerkit/examples/wschat/*.go) go.mod go.sum | deps-run
	$(call go_build,./workerkit/examples/wschat)

$(BIN)/testworker: $(WORKERKIT_SRCS) $(wildcard integration/testworker/*.go) go.mod go.sum | deps-run
	$(call go_build,./integration/testworker)

# The ZeroMQ floor of make bench: a single-loop Mongrel2-protocol worker
# (no workerkit; only the codec in internal/).
$(BIN)/frontfloor: $(shell find internal \( -name '*.go' -o -name '*.h' \) ! -name '*_test.go') $(wildcard integration/frontfloor/*.go) go.mod go.sum | deps-run
	$(call go_build,./integration/frontfloor)

$(BIN)/floor-worker: $(shell find internal \( -name '*.go' -o -name '*.h' \) ! -name '*_test.go') $(wildcard integration/floorworker/*.go) go.mod go.sum | deps-run
	$(call go_build,./integration/floorworker)

# The net/http WebSocket echo behind reverse_proxy in make bench -ws.
$(BIN)/wsecho-http: $(shell find internal \( -name '*.go' -o -name '*.h' \) ! -name '*_test.go') $(wildcard integration/wsechohttp/*.go) go.mod go.sum | deps-run
	$(call go_build,./integration/wsechohttp)

# The zmqx/1 conformance kit as a command (the kit is in WORKERKIT_SRCS).
$(BIN)/zmqx-conformance: $(WORKERKIT_SRCS) go.mod go.sum | deps-run
	$(call go_build,./workerkit/cmd/zmqx-conformance)

# ---------------------------------------------------------------------------
# run: Caddy + one hello worker in the foreground. Ctrl-C (or either process
# exiting) stops both.
run: deps-run $(BIN)/caddy $(BIN)/hello-worker
	@echo "Starting Caddy (config $(RUN_CONFIG)) and bin/hello-worker."
	@echo
	@echo "  Open:   https://localhost:$(HTTPS_PORT)/"
	@echo "  curl:   curl --cacert \"$${XDG_DATA_HOME:-$$HOME/.local/share}/caddy/pki/authorities/local/root.crt\" https://localhost:$(HTTPS_PORT)/"
	@echo "          (the root certificate exists once Caddy has started; or use curl -k)"
	@echo "  Trust Caddy's local CA in the system store (needs root):"
	@echo "          bin/caddy trust --address $(ADMIN_ADDR)     (undo: bin/caddy untrust --address $(ADMIN_ADDR))"
	@echo "  Workers connect to $(ZMQ_REQUESTS) (requests) and $(ZMQ_REPLIES) (replies):"
	@echo "          bin/echo-worker -frontend $(ZMQ_REQUESTS),$(ZMQ_REPLIES),$(ZMQ_CONTROL)"
	@echo "  Ctrl-C stops both."
	@echo
	@caddy_pid=""; worker_pid=""; \
	stop() { \
	  trap - INT TERM EXIT; \
	  for p in $$worker_pid $$caddy_pid; do kill -TERM "$$p" 2>/dev/null || true; done; \
	  for p in $$worker_pid $$caddy_pid; do wait "$$p" 2>/dev/null || true; done; \
	}; \
	trap 'stop; exit 130' INT; trap 'stop; exit 143' TERM; trap stop EXIT; \
	$(BIN)/caddy run --config $(RUN_CONFIG) --adapter caddyfile & caddy_pid=$$!; \
	$(BIN)/hello-worker -frontend $(ZMQ_REQUESTS),$(ZMQ_REPLIES),$(ZMQ_CONTROL) & worker_pid=$$!; \
	set +e; wait -n $$caddy_pid $$worker_pid; rc=$$?; set -e; \
	echo "make run: a process exited (status $$rc); stopping the other"; \
	stop; exit $$rc

# ---------------------------------------------------------------------------
# test: everything CI runs.
test: deps-test build vet unit fuzz-short

# -race here, in `go test -list` below and in the tests: all three then use
# one build of the package tree (a cold build of Caddy's tree takes minutes).
vet: deps-run
	CGO_ENABLED=1 $(GO) vet -race ./...
	@# go.mod and go.sum must be what `go mod tidy` makes of them.
	@$(GO) mod tidy -diff || { echo "vet: run go mod tidy and commit go.mod and go.sum"; exit 1; }

# ZMQ_INTEGRATION=1 turns a missing bin/caddy into a failure instead of a skip.
unit: deps-test build
	ZMQ_INTEGRATION=1 CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m ./...

# Every Fuzz target of every package, found by `go test -list`.
# Prints "<package> <FuzzName>" per line.
define list_fuzz
CGO_ENABLED=1 $(GO) test -race -list '^Fuzz' ./... | awk '/^Fuzz/ { names[n++] = $$1; next } /^ok[ \t]/ { for (i = 0; i < n; i++) print $$2, names[i]; n = 0; next } { n = 0 }'
endef

fuzz-short: deps-run
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(SHORT_FUZZTIME)

# Go 1.26's fuzz coordinator can fail a run with a bare "context deadline
# exceeded" when -fuzztime runs out while a worker is busy, more so on a
# loaded machine (golang/go#75804, fixed in Go 1.27). That case, and only it
# (no failing input written), is reported and not counted as a failure.
fuzz: deps-run
	@targets="$$($(list_fuzz))"; \
	if [ -z "$$targets" ]; then echo "fuzz: no Fuzz targets found"; exit 0; fi; \
	log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	echo "$$targets" | while read -r pkg name; do \
	  echo "fuzz: $$pkg $$name ($(FUZZTIME))"; \
	  if CGO_ENABLED=1 $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" </dev/null 2>&1 | tee "$$log"; then \
	    :; \
	  elif grep -qx '    context deadline exceeded' "$$log" && ! grep -q 'Failing input written' "$$log"; then \
	    echo "fuzz: $$name: no failing input; the failure is Go's -fuzztime deadline race (golang/go#75804), ignored"; \
	  else \
	    exit 1; \
	  fi; \
	done

# ---------------------------------------------------------------------------
bench: deps-test build
	$(GO) run ./integration/bench
	$(GO) run ./integration/bench -large -rounds 3 -out $(BIN)/bench-large.json -svg $(BIN)/bench-large.svg
	$(GO) run ./integration/bench -ws -rounds 3 -out $(BIN)/bench-ws.json

# chaos: fault-injection suite, 30 s per scenario; table on stdout and in
# bin/chaos.md (CHAOS_FLAGS=-short: 8 s per scenario).
CHAOS_FLAGS ?=
chaos: deps-test $(BIN)/caddy $(BIN)/chaosworker
	$(GO) run ./integration/chaos $(CHAOS_FLAGS)

clean:
	rm -rf $(BIN)
