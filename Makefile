# vigil: `make run` serves on 127.0.0.1:8080, `make test` runs what CI runs.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
ADMIN ?= 127.0.0.1:9090

.PHONY: all build run test lint fmt haproxy-test

all: build

build:
	$(CARGO) build --release --locked

run: build
	./target/release/vigil --listen $(LISTEN) --admin $(ADMIN)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# What CI runs (.ci/run): formatting, clippy with -D warnings, every test,
# and a build of the benchmarks (they are run by `make bench`, not here).
test: lint
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc

# Two instances behind HAProxy, one stopped under load: no failed request.
haproxy-test:
	scripts/haproxy-test.sh

fmt:
	$(CARGO) fmt --all

-include bench.mk
-include fuzz.mk
