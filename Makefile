# ccr-relay: `make run` shows it working, `make test` is the test suite,
# `make bench` prints measured figures, `make static` builds the release binary.

CARGO ?= cargo
# Where cargo builds: CARGO_TARGET_DIR when set (as cargo itself reads it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build test fuzz run bench lint static clean

all: build

build:
	$(CARGO) build --workspace

# The README's test command: unit tests next to the code, end-to-end tests in
# integration/ (they drive the real binaries that this builds).
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# The parsers' property tests (tests/fuzz.rs) with many more cases than
# `make test` runs; FUZZ_SEED=N replays another sequence.
FUZZ_CASES ?= 20000000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p ccr-relay --test fuzz

# A development gateway, an HTTPS origin, the relay and a real curl, locally.
run:
	$(CARGO) build --workspace --bins --quiet
	$(CARGO) run --quiet -p ccr-integration --bin ccr-demo

# The report goes under the build directory, which git ignores: running the
# bench leaves the checkout clean. BENCH.md is the copy kept by hand.
BENCH_REPORT := $(TARGET_DIR)/bench/BENCH.md

bench:
	$(CARGO) build --workspace --release --bins --quiet
	mkdir -p $(dir $(BENCH_REPORT))
	$(CARGO) run --quiet --release -p ccr-integration --bin ccr-bench -- --out $(BENCH_REPORT)
	$(CARGO) run --quiet --release -p ccr-integration --bin ccr-load

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The static release: target/x86_64-unknown-linux-musl/release/ccr-relay
# (under CARGO_TARGET_DIR when set),
# statically linked against musl, OpenSSL built from source and linked in
# (Cargo.toml's musl-only dependency), stripped. For size, and for this
# build only: OpenSSL's C code at -Os (its ciphers and hashes are assembly
# either way), fat LTO, and the static PIE's relative relocations packed
# (RELR: 630 KiB of relocation entries become 8 KiB, ASLR kept) where the
# linker knows -z pack-relative-relocs; the release profile stays as it is for every
# other build. Installs what it needs where it can (the rustup target,
# musl-gcc, perl), else says what is missing. See STATIC.md.
STATIC_TARGET := x86_64-unknown-linux-musl
STATIC_BIN := $(TARGET_DIR)/$(STATIC_TARGET)/release/ccr-relay
STATIC_MAX_BYTES := 6291456

static:
	@set -e; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	missing=""; apt=""; \
	if ! [ -d "$$(rustc --print sysroot)/lib/rustlib/$(STATIC_TARGET)/lib" ]; then \
	  if command -v rustup >/dev/null 2>&1; then \
	    echo "static: rustup target add $(STATIC_TARGET)"; \
	    rustup target add $(STATIC_TARGET) || \
	      missing="$$missing; the Rust standard library for $(STATIC_TARGET) (rustup target add $(STATIC_TARGET))"; \
	  else \
	    missing="$$missing; the Rust standard library for $(STATIC_TARGET) (no rustup here: install it with your Rust toolchain)"; \
	  fi; \
	fi; \
	command -v x86_64-linux-musl-gcc >/dev/null 2>&1 || command -v musl-gcc >/dev/null 2>&1 || apt="$$apt musl-tools"; \
	perl -MIPC::Cmd -MFindBin -MFile::Compare -MTime::Local -e 1 >/dev/null 2>&1 || apt="$$apt perl"; \
	if [ -n "$$apt" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && { [ -z "$$sudo" ] || command -v sudo >/dev/null 2>&1; }; then \
	    echo "static: installing$$apt"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$apt >/dev/null 2>&1 || \
	      { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$apt; } || true; \
	  fi; \
	  command -v x86_64-linux-musl-gcc >/dev/null 2>&1 || command -v musl-gcc >/dev/null 2>&1 || \
	    missing="$$missing; musl-gcc (Debian: apt-get install musl-tools)"; \
	  perl -MIPC::Cmd -MFindBin -MFile::Compare -MTime::Local -e 1 >/dev/null 2>&1 || \
	    missing="$$missing; perl with its core modules, to configure OpenSSL (Debian: apt-get install perl)"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "static: cannot build, missing$$missing" | sed 's/missing; /missing: /' >&2; exit 1; \
	fi; \
	echo "static: building $(STATIC_BIN) (OpenSSL from source: several minutes the first time)"; \
	start=$$(date +%s); \
	relr=""; \
	if ld --help 2>/dev/null | grep -q pack-relative-relocs; then relr="-C link-arg=-Wl,-z,pack-relative-relocs"; \
	else echo "static: this linker cannot pack relocations (binutils 2.38 or later can): the binary is larger"; fi; \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$$relr" \
	CFLAGS_x86_64_unknown_linux_musl='-Os -fno-asynchronous-unwind-tables -fno-unwind-tables' \
	  $(CARGO) build --release --target $(STATIC_TARGET) -p ccr-relay --bin ccr-relay; \
	secs=$$(( $$(date +%s) - start )); \
	if command -v readelf >/dev/null 2>&1 && readelf -l $(STATIC_BIN) | grep -q 'program interpreter'; then \
	  echo "static: $(STATIC_BIN) is dynamically linked" >&2; exit 1; \
	fi; \
	size=$$(stat -c %s $(STATIC_BIN)); \
	echo "static: $(STATIC_BIN): $$size bytes ($$(awk "BEGIN { printf \"%.2f\", $$size / 1048576 }") MiB), static, stripped; built in $${secs}s"; \
	echo "static: $$($(STATIC_BIN) --version)"; \
	if [ "$$size" -gt $(STATIC_MAX_BYTES) ]; then \
	  echo "static: WARNING: larger than the 6 MiB target ($(STATIC_MAX_BYTES) bytes)" >&2; \
	fi

clean:
	$(CARGO) clean
