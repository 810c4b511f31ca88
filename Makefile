# vigil: `make run` serves on 127.0.0.1:8080, `make test` runs what CI runs.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
ADMIN ?= 127.0.0.1:9090

.PHONY: all build run test lint fmt haproxy-test hostile upgrade-test

all: build

build:
	$(CARGO) build --release --locked

run: build
	./target/release/vigil --listen $(LISTEN) --admin $(ADMIN)

# The two benchmark crates (bench.mk) and the fuzzer (fuzz.mk) are workspaces
# of their own, which `--all` does not reach: each is checked by its manifest,
# the benchmark crates into the target dir `make bench-build` uses, so their
# dependencies are built once. The fuzz targets build on stable here; only
# running them needs the sanitizer flags `make fuzz` adds.
BENCH_CRATES = $(BENCH_DIR)/compare $(BENCH_DIR)/peers/may-hello

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	for c in $(BENCH_CRATES); do \
	  $(CARGO) fmt --manifest-path $$c/Cargo.toml --check && \
	  $(CARGO) clippy --locked --all-targets --manifest-path $$c/Cargo.toml \
	    --target-dir $(BENCH_TARGET) -- -D warnings || exit 1; \
	done
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --locked --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-lint -- -D warnings

# What CI runs (.ci/run): formatting and clippy with -D warnings over every
# crate, every test of vigil and of the benchmark driver (the benchmarks
# themselves are run by `make bench`, not here).
test: lint
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc
	$(CARGO) test --locked --manifest-path $(BENCH_DIR)/compare/Cargo.toml --target-dir $(BENCH_TARGET)

# Two instances behind HAProxy, one stopped under load: no failed request.
haproxy-test:
	scripts/haproxy-test.sh

# wrk with 64 connections while the binary is replaced and SIGUSR2'd twice:
# no failed request, and the serving process runs the new file.
upgrade-test:
	scripts/upgrade-test.sh

# Hostile clients against a release build, one fresh process per attack:
# a report (RELIABILITY.md), bounded to a few minutes, 127.0.0.1 only.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
hostile:
	$(CARGO) build --release --locked --bin vigil
	python3 scripts/hostile.py $(TARGET_DIR)/release/vigil

fmt:
	$(CARGO) fmt --all
	for c in $(BENCH_CRATES); do $(CARGO) fmt --manifest-path $$c/Cargo.toml || exit 1; done

-include bench.mk
-include fuzz.mk
