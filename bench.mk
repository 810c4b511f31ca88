# Load benchmarks: `make bench`, `make bench-quick`, `make chaos`, `make bench-slow`.
# Included by the main Makefile; every path is relative to the repo root.
# See BENCHMARKS.md for what each figure means.

CARGO          ?= cargo
BENCH_DIR      := benches
BENCH_OUT      := target/bench
# Both standalone crates build into one target dir under target/, so nothing
# lands in the source tree and the two share their common dependencies.
BENCH_TARGET   := target/bench-build
MAY_HELLO      := $(BENCH_TARGET)/release/may-hello
# The floor: a minimal level-triggered epoll server in C (benches/peers/c-floor).
C_FLOOR        := $(BENCH_TARGET)/c-floor
CC             ?= cc
COMPARE        := $(BENCH_TARGET)/release/compare
# Override to measure another build: `make bench VIGIL_BIN=/path/to/vigil`.
VIGIL_BIN      ?= target/release/vigil
BENCH_ARGS     ?=

export VIGIL_BIN

.PHONY: bench bench-quick chaos bench-slow bench-tools bench-build bench-vigil bench-instructions

# wrk is the load generator; nginx is an optional peer (the driver skips it
# when absent). Installed only when missing, so a warm machine runs offline.
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	@command -v nginx >/dev/null 2>&1 || { \
	  [ -n "$$(ls /var/lib/apt/lists/*Packages 2>/dev/null)" ] || apt-get update -qq; \
	  if apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; \
	  else \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-core || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx || \
	    echo "nginx not installable: the nginx peer will be skipped"; \
	  fi; }
	@command -v node >/dev/null 2>&1 || { \
	  [ -n "$$(ls /var/lib/apt/lists/*Packages 2>/dev/null)" ] || apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs || \
	  echo "node not installable: the node peers will be skipped"; }

bench-vigil:
	$(CARGO) build --release --locked --bin vigil

# Both crates keep their lock files in the repo: --locked builds the peer and
# the driver exactly as they were measured.
bench-build:
	$(CARGO) build --release --locked --manifest-path $(BENCH_DIR)/peers/may-hello/Cargo.toml --target-dir $(BENCH_TARGET)
	$(CARGO) build --release --locked --manifest-path $(BENCH_DIR)/compare/Cargo.toml --target-dir $(BENCH_TARGET)
	mkdir -p $(BENCH_TARGET)
	$(CC) -O2 -Wall -Wextra -Werror -o $(C_FLOOR) $(BENCH_DIR)/peers/c-floor/floor.c

# The default VIGIL_BIN is built here; a VIGIL_BIN pointing elsewhere is used as is.
BENCH_DEPS := bench-tools bench-build $(if $(filter target/release/vigil,$(VIGIL_BIN)),bench-vigil)

bench: $(BENCH_DEPS)
	$(COMPARE) bench --out $(BENCH_OUT) --may-bin $(MAY_HELLO) --floor-bin $(C_FLOOR) --vigil-bin $(VIGIL_BIN) $(BENCH_ARGS)

bench-quick: $(BENCH_DEPS)
	$(COMPARE) bench --quick --out $(BENCH_OUT) --may-bin $(MAY_HELLO) --floor-bin $(C_FLOOR) --vigil-bin $(VIGIL_BIN) $(BENCH_ARGS)

# Instructions per request under callgrind (deterministic, unlike time):
# vigil, may_minihttp and the C floor, keep-alive and pipelined x16, with
# vigil's top functions. Results in target/bench/instructions.md.
bench-instructions: bench-build $(if $(filter target/release/vigil,$(VIGIL_BIN)),bench-vigil)
	@command -v valgrind >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	$(COMPARE) instructions --out $(BENCH_OUT) --may-bin $(MAY_HELLO) --floor-bin $(C_FLOOR) --vigil-bin $(VIGIL_BIN) $(BENCH_ARGS)

chaos: $(BENCH_DEPS)
	$(COMPARE) chaos --out $(BENCH_OUT) --vigil-bin $(VIGIL_BIN) $(BENCH_ARGS)

# Fast-request latency while 1 request in 10,000 burns 20 ms of CPU inline:
# vigil (with handoff when it has --handoff-after; BENCH_ARGS="--handoff-after
# 5ms" to set it), with --handoff-after 0, without slow requests, the Node
# cluster and may_minihttp. Results in target/bench/slow.{json,csv,svg}.
bench-slow: $(BENCH_DEPS)
	$(COMPARE) slow --out $(BENCH_OUT) --may-bin $(MAY_HELLO) --vigil-bin $(VIGIL_BIN) $(BENCH_ARGS)

# RSS per idle keep-alive connection (10,000 of them) after a wrk run,
# vigil against may_minihttp; results in target/bench/memory.json.
.PHONY: bench-memory
bench-memory: $(BENCH_DEPS)
	python3 $(BENCH_DIR)/memory.py $(VIGIL_BIN) $(MAY_HELLO)

# A 1 GiB file to 16 clients, vigil --root against nginx (sendfile on).
.PHONY: bench-download
bench-download: bench-tools $(if $(filter target/release/vigil,$(VIGIL_BIN)),bench-vigil)
	$(BENCH_DIR)/download.sh $(VIGIL_BIN)

# RSS of the server while 1 GiB is uploaded to a streaming route, twice.
.PHONY: bench-upload
bench-upload: $(if $(filter target/release/vigil,$(VIGIL_BIN)),bench-vigil)
	$(BENCH_DIR)/upload.sh $(VIGIL_BIN)

# Latency of / with 32 CPU-heavy requests in flight, offloaded vs inline.
.PHONY: bench-offload
bench-offload: bench-tools $(if $(filter target/release/vigil,$(VIGIL_BIN)),bench-vigil)
	$(BENCH_DIR)/offload.sh $(VIGIL_BIN)
