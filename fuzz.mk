# Fuzzing with cargo-fuzz (libFuzzer): `make fuzz`, `make fuzz-build`.
# Included by the main Makefile; every path is relative to the repo root.
# See fuzz/README.md for the targets and the last long run's figures.

CARGO         ?= cargo
FUZZ_DIR      := fuzz
FUZZ_TARGETS  := head chunked
# Seconds per target (libFuzzer's -max_total_time).
FUZZ_SECONDS  ?= 60
# Extra libFuzzer flags, e.g. FUZZ_ARGS=-jobs=2.
FUZZ_ARGS     ?=

# cargo-fuzz needs nightly (-Zsanitizer); without a nightly toolchain,
# stable is told to allow unstable flags.
FUZZ_CARGO := $(if $(shell rustup toolchain list 2>/dev/null | grep '^nightly'),$(CARGO) +nightly,RUSTC_BOOTSTRAP=1 $(CARGO))

.PHONY: fuzz fuzz-build fuzz-tools

# Installed only when missing, so a warm machine runs offline.
fuzz-tools:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

# cargo-fuzz has no --locked: fetching with it first fails if
# fuzz/Cargo.lock is out of date, rather than rewriting it.
fuzz-build: fuzz-tools
	$(FUZZ_CARGO) fetch --locked --manifest-path $(FUZZ_DIR)/Cargo.toml
	$(FUZZ_CARGO) fuzz build --fuzz-dir $(FUZZ_DIR)

# New inputs go to fuzz/corpus/<target> (ignored); fuzz/seeds/<target> is
# read as a second, read-only corpus. Crashes land in fuzz/artifacts/.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t && \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s" && \
	  $(FUZZ_CARGO) fuzz run --fuzz-dir $(FUZZ_DIR) $$t \
	    $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) || exit 1; \
	done
