# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, and `cargo pgrx init` for the system PostgreSQL 15.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation test-vectors fuzz fuzz-smoke demo clean

setup:
	@bash scripts/setup.sh

# Builds the extension and installs it into the PostgreSQL that PG_CONFIG names.
install: setup
	cargo pgrx install --pg-config "$(PG_CONFIG)" $(if $(filter release,$(PROFILE)),--release) \
		$(if $(filter 0,$(shell id -u)),,--sudo)

# The pure core: unit and property tests, no PostgreSQL needed.
test-core:
	cargo test -p idempotency-core

# Every SQL function inside one backend (#[pg_test]).
test-pg: setup
	bash scripts/pgrx-test.sh

# Two and three sessions on one key over real connections (pg_isolation_regress).
test-isolation: setup
	$(MAKE) install PROFILE=debug
	bash scripts/isolation.sh

# The frozen fingerprint vectors (core/tests/vectors/fingerprints-v1.tsv) on a real server:
# idem_canonical and idem_fingerprint of every row, over a client connection (scripts/vectors.sh,
# scratch cluster build/vectors on VECTORS_PORT, default 54335). The core checks the same file
# in test-core, the #[pg_test]s inside one backend.
test-vectors: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$$($(PG_CONFIG) --bindir)" bash scripts/vectors.sh

# Fuzzing the core with cargo-fuzz (scripts/fuzz.sh, installs cargo-fuzz if missing): the
# targets in fuzz/fuzz_targets one after the other, FUZZ_SECONDS each. `fuzz-smoke` is the
# CI-sized run (20 s each) that `make test` includes.
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

fuzz-smoke:
	FUZZ_SECONDS=20 bash scripts/fuzz.sh

test: setup test-core test-pg test-isolation test-vectors fuzz-smoke
	@echo "make test: all suites passed"

demo: install
	bash scripts/demo.sh

clean:
	cargo clean
	rm -rf build
