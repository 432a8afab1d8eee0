# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, and `cargo pgrx init` for the system PostgreSQL 15.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation demo clean bench bench-smoke

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

# Benchmarks (bench/run.sh, README "Performance"): a scratch PostgreSQL of PG_CONFIG's
# installation on port BENCH_PORT (default 55300), pgbench side by side with a plain insert,
# a primary-key SELECT and a hand-written PL/pgSQL version; results in build/bench/out.
#   make bench        the full run on a release build (17 minutes here, plus the build)
#   make bench-smoke  the CI form on a debug build (about 1 minute after the build): its
#                     figures mean nothing, it keeps the harness from rotting
bench: setup
	$(MAKE) install PROFILE=release
	PG_BINDIR=$(dir $(PG_CONFIG)) BENCH_PROFILE=release bash bench/run.sh

bench-smoke: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR=$(dir $(PG_CONFIG)) BENCH_PROFILE=debug BENCH_SECONDS=1 BENCH_ROUNDS=1 \
		BENCH_CLIENTS="1 4" BENCH_SCALES="1000 10000" BENCH_REPLAY_KEYS=1000 \
		BENCH_PURGE=10000 BENCH_PURGE_SECONDS=5 BENCH_OUT=build/bench/smoke bash bench/run.sh

test: setup test-core test-pg test-isolation bench-smoke
	@echo "make test: all suites passed"

demo: install
	bash scripts/demo.sh

clean:
	cargo clean
	rm -rf build
