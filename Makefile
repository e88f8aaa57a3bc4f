# ccr-relay: `make run` shows it working, `make test` is the test suite,
# `make bench` prints measured figures, `make static` builds the release binary.

CARGO ?= cargo

.PHONY: all build test run bench lint static clean

all: build

build:
	$(CARGO) build --workspace

# The README's test command: unit tests next to the code, end-to-end tests in
# integration/ (they drive the real binaries that this builds).
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# A development gateway, an HTTPS origin, the relay and a real curl, locally.
run:
	$(CARGO) build --workspace --bins --quiet
	$(CARGO) run --quiet -p ccr-integration --bin ccr-demo

bench:
	$(CARGO) build --workspace --release --bins --quiet
	$(CARGO) run --quiet --release -p ccr-integration --bin ccr-bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
