# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, and `cargo pgrx init` for the system PostgreSQL 15.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation demo clean torture crash test-torture

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

# Torture and crash recovery (tests/torture, scripts/torture.sh), each on a scratch cluster of
# its own (build/torture, build/crash) on TORTURE_PORT, run from the PostgreSQL of PG_CONFIG:
#   torture       32 connections, 100,000 requests on 16 hot keys per epoch, then the checker
#   crash         20 cycles of kill -9 (postmaster / a backend) under load, checks after each
#   test-torture  the CI size of both (in `make test`)
TORTURE_PORT ?= 54341
TORTURE = PG_BINDIR="$$($(PG_CONFIG) --bindir)" TORTURE_PORT=$(TORTURE_PORT) bash scripts/torture.sh

torture: setup
	$(MAKE) install PROFILE=debug
	$(TORTURE) load --connections 32 --requests 100000 --keys 16

crash: setup
	$(MAKE) install PROFILE=debug
	$(TORTURE) crash --cycles 20 --workers 8

test-torture: setup
	$(MAKE) install PROFILE=debug
	$(TORTURE) load --connections 32 --requests 10000 --keys 16
	$(TORTURE) crash --cycles 6 --workers 8

test: setup test-core test-pg test-isolation test-torture
	@echo "make test: all suites passed"

demo: install
	bash scripts/demo.sh

clean:
	cargo clean
	rm -rf build
