# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, and `cargo pgrx init` for the system PostgreSQL 15.
#   make test-all   the same as make test, which includes the PostgreSQL 13..18 matrix

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation demo clean
.PHONY: package test-meta test-matrix matrix-init test-all

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

# --- Installing and the PostgreSQL version matrix (13..18) ---------------------------------
# A binary tree to copy onto a machine with the same PostgreSQL: target/<profile>/idempotency-pgNN/
# mirrors the paths that PG_CONFIG reports (pkglibdir and sharedir/extension).
package: setup
	cargo pgrx package --pg-config "$(PG_CONFIG)" $(if $(filter release,$(PROFILE)),,--debug)

# META.json (PGXN Meta Spec 1.0.0): required fields, version = Cargo.toml's; the checker also
# proves it rejects broken copies.
test-meta:
	python3 scripts/meta-check.py --self-test

# Registers PostgreSQL 13..18 with cargo pgrx init (15 = PG15_CONFIG, the system one by default;
# the others from scripts/pg-fetch.sh under build/pg/NN). Idempotent.
matrix-init: setup
	bash scripts/pg-matrix.sh init

# Every per-version suite (#[pg_test]s, isolation specs; listed in scripts/pg-matrix.sh) on
# the versions in MATRIX_VERSIONS, timed. 15 is left out by default because test-pg and
# test-isolation already run those suites on the system PostgreSQL 15
# (make test-matrix MATRIX_VERSIONS="13 14 15 16 17 18" for all of them).
MATRIX_VERSIONS ?= 13 14 16 17 18
test-matrix: setup
	MATRIX_VERSIONS="$(MATRIX_VERSIONS)" bash scripts/pg-matrix.sh run

test: setup test-core test-meta test-pg test-isolation test-matrix
	@echo "make test: all suites passed"

# The whole matrix: the core tests once, PostgreSQL 15's suites, then 13, 14, 16, 17, 18.
# It fits CI's budget, so it is what `make test` runs; test-all is the name for it.
test-all: test
	@echo "make test-all: all suites passed on PostgreSQL $(MATRIX_VERSIONS) and 15"

demo: install
	bash scripts/demo.sh

clean:
	cargo clean
	rm -rf build
