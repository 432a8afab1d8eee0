# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, and `cargo pgrx init` for the system PostgreSQL 15.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation test-regress demo clean

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

# Hostile input (NULLs, limits, control characters, extreme numbers, 100 MB and 100,000-deep
# commands with a peak-memory bound), two roles and an attacker's search_path: pg_regress
# files in tests/regress against a scratch cluster (scripts/regress.sh, port REGRESS_PORT,
# default 54331), which also fails if any backend crashed.
test-regress: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR=$$(dirname $(PG_CONFIG)) bash scripts/regress.sh

test: setup test-core test-pg test-isolation test-regress
	@echo "make test: all suites passed"

demo: install
	bash scripts/demo.sh

clean:
	cargo clean
	rm -rf build
