# idempotency: every command (docs/testing.md says what each suite checks and how long it takes).
#
#   make demo      the payment story end to end, on a scratch PostgreSQL of its own
#   make check     the everyday loop: the core's tests, the #[pg_test]s, the pg_regress files
#                  and the isolation specs
#   make test      every CI-sized suite, PostgreSQL 13..18 included (what .ci/run runs)
#   make install   PG_CONFIG=/path/to/bin/pg_config [PROFILE=release|debug]
#   make package   the same files as a tree to copy onto another machine
#   make deb       the Debian package postgresql-NN-idempotency (PG=13..18, default 15) in build/deb/
#   make dist      the PGXN distribution zip in build/dist/
#
# CI-sized suites are test-<name> (make test runs them all); long runs are soak-torture,
# soak-crash and soak-fuzz; the benchmark is bench (bench-instructions is its instruction
# counts alone). Each installs what it needs first
# (scripts/setup.sh: Debian packages, the pinned cargo-pgrx, `cargo pgrx init`, cargo-fuzz).
#
# Settings:
#   PG_CONFIG        the PostgreSQL to build for and test against (default: the system 15)
#   PG15_CONFIG      the PostgreSQL 15 that `cargo pgrx test pg15` uses (default: the system 15)
#   PROFILE          the build `make install` installs (release; the suites test debug builds)
#   TEST_PORT_BASE   the scratch clusters listen on this base plus an offset per suite
#                    (default 54330; the offsets are in scripts/lib.sh, port_of)
#   MATRIX_VERSIONS  the versions test-matrix runs (15's suites are the ones above)
#   FUZZ_SECONDS     soak-fuzz's time per target

PG_CONFIG ?= $(shell bash scripts/lib.sh system-pg-config)
PG_BINDIR ?= $(shell "$(PG_CONFIG)" --bindir)
PROFILE ?= release
MATRIX_VERSIONS ?= 13 14 16 17 18
FUZZ_SECONDS ?= 300
export PG_BINDIR

.PHONY: setup install package deb dist demo clean check test \
	test-guard test-core test-meta test-pg test-regress test-isolation test-vectors test-upgrade \
	test-standby test-dump test-guest test-torture test-crash test-bench test-fuzz test-matrix \
	soak-torture soak-crash soak-fuzz bench FORCE test-http serve bench-http \
	test-client-python test-client-typescript test-http-examples test-citus bench-citus \
	test-ops-worker bench-counters test-instructions bench-instructions bench-guest test-assert \
	test-packages \
	test-http-layers fixture bench-http-layers

setup:
	@bash scripts/setup.sh

# --- installing --------------------------------------------------------------------------------
# The one install step (scripts/lib.sh install): it builds the extension for PG_CONFIG and
# installs it there with the SQL of every kept release. $(STAMP).<profile> notes what was last
# installed into PG_CONFIG; the suites depend on it, so a build is installed again only when a
# source changed, another profile or PG_CONFIG is asked for, or `cargo pgrx test` put its test
# build there meanwhile (scripts/pgrx-test.sh drops the note). `make install` always installs.
STAMP := $(shell bash scripts/lib.sh install-stamp "$(PG_CONFIG)")
SOURCES := Cargo.toml Cargo.lock core/Cargo.toml idempotency.control scripts/sql-include.py \
	$(wildcard src/*.rs src/*/*.rs core/src/*.rs sql/*.sql sql/releases/*.sql)

$(STAMP).%: $(SOURCES) $(if $(filter install,$(MAKECMDGOALS)),FORCE) | setup
	bash scripts/lib.sh install "$(PG_CONFIG)" $*

install: $(STAMP).$(PROFILE)

# A tree under target/<profile>/idempotency-pgNN/ that mirrors the paths PG_CONFIG reports;
# its upgrade scripts expanded (scripts/sql-include.py), as every place that ships SQL does.
package: setup
	cargo pgrx package --pg-config "$(PG_CONFIG)" $(if $(filter release,$(PROFILE)),,--debug)
	python3 scripts/sql-include.py install \
		"target/$(PROFILE)/idempotency-pg$$("$(PG_CONFIG)" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')$$("$(PG_CONFIG)" --sharedir)/extension"

# The Debian package postgresql-NN-idempotency_VERSION-REV_ARCH.deb of the release build, in
# the PostgreSQL apt repository's layout, into build/deb/ (scripts/deb.sh). PG=13..18, default
# 15 (the system's); the others build against build/pg/NN (scripts/pg-fetch.sh).
deb: setup
	bash scripts/deb.sh $(or $(PG),15)

# The PGXN distribution build/dist/idempotency-VERSION.zip of the committed HEAD (scripts/dist.sh;
# META.json checked inside the archive).
dist:
	bash scripts/dist.sh

demo: $(STAMP).debug
	bash scripts/demo.sh

# --- the everyday loop and the full run ---------------------------------------------------------
# check comes first in test: its #[pg_test]s put a test build into PostgreSQL 15 before the
# other suites install theirs.
check: test-guard test-core test-pg test-regress test-isolation
	@echo "make check: passed"

test: check test-meta test-vectors test-upgrade test-standby test-dump test-torture test-crash \
	test-bench test-instructions test-fuzz test-matrix test-assert test-http test-client-python \
	test-client-typescript test-http-examples test-http-layers test-ops-worker test-guest test-packages \
	test-citus
	@if [ "$$(cat build/citus/status 2>/dev/null)" = PASSED ]; then \
		echo "make test: every suite passed"; \
	else \
		echo "make test: every suite passed but test-citus, which was $$(cat build/citus/status 2>/dev/null || echo 'not run') (CITUS_PG_CONFIG names no PostgreSQL with Citus)"; \
	fi

# The pure core: unit, property and vector tests, no PostgreSQL.
test-core:
	cargo test -p idempotency-core

# Every function exported to C goes through entry::enter (src/entry.rs), and the modules of
# src/ import one way, down their layers (docs/design.md); each checker is checked first.
test-guard:
	python3 scripts/guard-check.py --self-test
	python3 scripts/layers-check.py --self-test

# META.json against the PGXN Meta Spec, and the checker against broken copies of it; every
# \include_block of the upgrade scripts names a block that exists (scripts/sql-include.py).
test-meta:
	python3 scripts/meta-check.py --self-test
	python3 scripts/sql-include.py --self-test

# Inside one backend: the #[pg_test]s, with `cargo pgrx test pg15`.
test-pg: setup
	bash scripts/pgrx-test.sh

# Over client connections, each on a scratch cluster of its own. The pg_regress files, the
# isolation specs and the torture run on both paths of the store with the same expectations:
# the direct path (the default), then the SQL path (IDEM_ACCESS=sql: direct_access off).
test-regress: $(STAMP).debug
	bash scripts/regress.sh
	IDEM_ACCESS=sql bash scripts/regress.sh

test-isolation: $(STAMP).debug
	bash scripts/isolation.sh
	IDEM_ACCESS=sql bash scripts/isolation.sh

test-vectors: $(STAMP).debug
	bash scripts/vectors.sh

test-upgrade: $(STAMP).debug
	bash scripts/upgrade-test.sh

test-standby: $(STAMP).debug
	bash scripts/standby-test.sh

test-dump: $(STAMP).debug
	bash scripts/dump-test.sh

# PostgreSQL's own regression suite (its parallel_schedule) with the library preloaded, against
# the same suite without it, and chained with pg_stat_statements in both orders
# (scripts/guest-test.sh): the same failures with the same diffs, no crash, no stalled DROP.
test-guest: $(STAMP).debug
	bash scripts/guest-test.sh

test-torture: $(STAMP).debug
	bash scripts/torture.sh load --connections 32 --requests 10000 --keys 16
	IDEM_ACCESS=sql bash scripts/torture.sh load --connections 32 --requests 10000 --keys 16

test-crash: $(STAMP).debug
	bash scripts/torture.sh crash --cycles 6 --workers 8

# The benchmark harness on a debug build at a size that only keeps it from rotting (without
# the instruction counts: test-instructions runs them).
test-bench: $(STAMP).debug
	BENCH_PROFILE=debug BENCH_SECONDS=1 BENCH_ROUNDS=1 BENCH_CLIENTS="1 4" \
		BENCH_SCALES="1000 10000" BENCH_REPLAY_KEYS=1000 BENCH_PURGE=10000 \
		BENCH_PURGE_SECONDS=5 BENCH_RESULTS=build/bench-smoke BENCH_COMMAND="make test-bench" \
		BENCH_INSTRUCTIONS=off bash bench/run.sh
	INSTR_N1=100 INSTR_N2=300 INSTR_ROUNDS=1 GUEST_SECONDS=1 GUEST_WARMUP=1 GUEST_ROUNDS=1 GUEST_SCALE=1 \
		GUEST_OUT=build/bench-smoke/guest GUEST_COMMAND="make test-bench" bash bench/guest.sh

# bench/guest.sh (what the loaded library costs other queries: pgbench -S instructions and
# TPS with the library not loaded, loaded, preloaded) on the release build; figures in
# bench/README.md. test-bench runs it at a tiny size.
bench-guest: $(STAMP).release
	GUEST_COMMAND="make bench-guest" bash bench/guest.sh
	cp build/bench/guest/results.md bench/results/guest.md

# bench/instructions.sh on a debug build at a tiny size, one round: it fails when a case errs
# or does not do what it claims; its figures mean nothing.
test-instructions: $(STAMP).debug
	INSTR_PROFILE=debug INSTR_N1=20 INSTR_N2=60 INSTR_ROUNDS=1 INSTR_KEYS=10000 \
		INSTR_OUT=build/instructions-smoke INSTR_COMMAND="make test-instructions" \
		bash bench/instructions.sh

test-fuzz:
	FUZZ_SECONDS=20 bash scripts/fuzz.sh

# The per-version suites (scripts/pg-matrix.sh, SUITES) on every other supported version.
test-matrix: setup
	MATRIX_VERSIONS="$(MATRIX_VERSIONS)" bash scripts/pg-matrix.sh run

# PostgreSQL 18 built with assertions, cached outside the checkout (scripts/pg-assert.sh): its
# own regression suite without and with the library preloaded, then the pg_regress files, the
# isolation specs, a torture load and the operations suite on both paths; any TRAP, crash or
# leak WARNING in a server log fails it.
test-assert: setup
	bash scripts/pg-assert.sh run

# --- long runs ---------------------------------------------------------------------------------
soak-torture: $(STAMP).debug
	bash scripts/torture.sh load --connections 32 --requests 100000 --keys 16

soak-crash: $(STAMP).debug
	bash scripts/torture.sh crash --cycles 20 --workers 8

soak-fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

# --- operations (docs/operations.md) ------------------------------------------------------------
#   test-ops-worker  with the library in shared_preload_libraries: the purge worker (also under
#                    the torture load), the counters (tests/ops), settings placed where PostgreSQL
#                    does not check them, SIGHUP, kill -9, a standby and its promotion, the
#                    Prometheus queries file (scripts/ops-test.sh; port_of ops and the next port)
#   bench-counters   the counters' instructions per request, callgrind (bench/counters.sh)
test-ops-worker: $(STAMP).debug
	bash scripts/ops-test.sh

bench-counters: $(STAMP).release
	bash bench/counters.sh

# --- the HTTP boundary (clients/rust, services/payments-api, tests/conformance; docs/http.md) --
#   test-http   the client crate's tests on a scratch PostgreSQL, then the conformance suite over
#               loopback against payments-api (core, full, crash with fault injection), a
#               schemathesis run against /openapi.json, the key-state route on a hot standby
#               (scripts/http-test.sh; Python packages into build/venv-http when missing)
#   serve       a scratch PostgreSQL with the extension and payments-api on 127.0.0.1:8080 in
#               the foreground (scripts/serve.sh); Ctrl-C stops both
#   bench-http  new payments and replays at 1, 16 and 64 clients over HTTP, release build
#               (bench/http/run.sh; results in bench/http/results.md)
#   bench-http-layers  an Express route inserting one row: no idempotency, our middleware
#               (route's transaction, phased) and express-idempotency on Redis, side by side at
#               1, 16 and 64 connections, release build (bench/http/layers/run.sh; results in
#               bench/http/layers/results.md and results.svg)
test-http: $(STAMP).debug
	bash scripts/http-test.sh

serve: $(STAMP).debug
	bash scripts/serve.sh

bench-http: $(STAMP).release
	bash bench/http/run.sh

bench-http-layers: $(STAMP).release
	bash bench/http/layers/run.sh

# The full benchmark on a release build; it writes bench/results/ (bench/README.md), the
# instruction counts (bench/instructions.sh) included.
bench: $(STAMP).release
	BENCH_PROFILE=release BENCH_COMMAND="make bench PG_CONFIG=$(PG_CONFIG)" bash bench/run.sh

# Instructions per request of each case, callgrind, full size (bench/instructions.sh;
# INSTR_CONFIGS the settings; results in build/bench/instructions).
bench-instructions: $(STAMP).release
	INSTR_COMMAND="make bench-instructions PG_CONFIG=$(PG_CONFIG)$(if $(INSTR_CONFIGS), INSTR_CONFIGS=\"$(INSTR_CONFIGS)\")" \
		bash bench/instructions.sh

# --- The client libraries (clients/python, clients/typescript; docs/clients.md) -------------
#   test-client-python      the Python package's tests (pytest) on a scratch PostgreSQL, then
#                           mypy --strict (scripts/client-python-test.sh; PyPI packages into
#                           build/venv-clients when missing)
#   test-client-typescript  the npm package's tests (tsc, node --test) on a scratch PostgreSQL
#                           (scripts/client-typescript-test.sh; npm ci from the committed
#                           package-lock.json when missing)
#   test-http-examples      the example payments services of both libraries against the
#                           conformance suite's core set (scripts/http-examples-test.sh)
test-client-python: $(STAMP).debug
	bash scripts/client-python-test.sh

test-client-typescript: $(STAMP).debug
	bash scripts/client-typescript-test.sh

test-http-examples: $(STAMP).debug
	bash scripts/http-examples-test.sh

# --- The drop-in HTTP layers (docs/http.md, "The drop-in layer"; tests/http-layers) ----------
#   test-http-layers   the fixture of each framework's layer against the conformance vectors
#                      (scripts/http-layers-test.sh; HTTP_LAYERS="express hono" for some only)
#   fixture            one fixture in the foreground: make fixture FRAMEWORK=<express|hono|
#                      starlette|django|axum> PORT=<port> DATABASE_URL=<url> [FIXTURE_TTL=2s]
#                      (scripts/fixture.sh)
test-http-layers: $(STAMP).debug
	bash scripts/http-layers-test.sh

fixture: $(STAMP).debug
	@bash scripts/fixture.sh

# --- the packages (docs/releasing.md) ------------------------------------------------------------
#   test-packages  every artifact a user installs, built and tested as installed
#                  (scripts/packages-test.sh): the versions agree (scripts/version-check.py
#                  --self-test); the Debian package for 15 (make deb) installed with apt-get on the
#                  system's 15, the demo and pg_regress against it, removed again (the system's
#                  extension files saved and put back; root only); the PGXN zip (make dist) built
#                  and installed from the unpacked archive into a private PostgreSQL 18; the
#                  Python sdist and wheel, the npm tarball and the Rust .crate each installed in a
#                  fresh venv / npm project / directory and their tests run there. In make test:
#                  170 s warm, 408 s in a fresh clone (docs/testing.md)
test-packages: $(STAMP).debug
	bash scripts/packages-test.sh

# --- scale-out on Citus (scripts/citus-test.sh, bench/citus.sh; docs/scale-out.md) -----------
# Both install nothing: Citus (from its packages, 11.0 or later) and this extension (make install
# PG_CONFIG=...) must already be installed in the PostgreSQL of CITUS_PG_CONFIG.
#   test-citus   a coordinator and two workers on 127.0.0.1 (ports CITUS_PORT, default 54380,
#                and the next two): idem_distribute and its refusals, the contract's outcomes and
#                SQLSTATEs, where the key's lock is, per-shard purge, the torture load through the
#                coordinator and through every node, a worker killed under load. Without
#                CITUS_PG_CONFIG it prints SKIPPED and build/citus/status says SKIPPED, not PASSED
#   bench-citus  TPS of the idempotent one-transaction payment through the coordinator against one
#                plain node, side by side (ports BENCH_CITUS_PORT, default 54383, and the next three)
CITUS_PG_CONFIG ?=
test-citus:
	CITUS_PG_CONFIG="$(CITUS_PG_CONFIG)" bash scripts/citus-test.sh

bench-citus:
	CITUS_PG_CONFIG="$(CITUS_PG_CONFIG)" bash bench/citus.sh

clean:
	cargo clean
	rm -rf build
