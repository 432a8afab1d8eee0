// The client against a scratch PostgreSQL with the extension: every outcome, every SQLSTATE
// mapped, races on one key, a phased takeover with fencing, the round trips per flow.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { after, before, test } from 'node:test'

import pg from 'pg'

import {
  InvalidArgument,
  KeyReused,
  LeaseLost,
  NotInProgress,
  NotOwner,
  RawJson,
  SerializationFailure,
  begin,
  canonical,
  check,
  checkpoint,
  claim,
  complete,
  completeFitting,
  fail,
  fingerprint,
  forget,
  purge,
  retrySerialization,
  transaction,
  http,
  Claim,
  type JsonInput,
  type Outcome,
} from '../src/index'
import { DATABASE, backendPid, clientConfig, connect, connectCounted, dropDatabase, effects, newScope, setupDatabase, waitForWaiter, writeEffect } from './helpers'

const CMD = { method: 'POST', path: '/v1/payments', body: { amount: '10.00', currency: 'EUR' } }
const OTHER = { method: 'POST', path: '/v1/payments', body: { amount: '100.00', currency: 'EUR' } }

const open: pg.Client[] = []
async function client(options: { pipeline?: boolean; user?: string } = {}): Promise<pg.Client> {
  const c = await connect(options)
  open.push(c)
  return c
}

before(setupDatabase)
after(async () => {
  await Promise.all(open.map((c) => c.end()))
  await dropDatabase()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// --- Plain calls ---------------------------------------------------------------------------

test('plain calls: execute, complete, replay, check', async () => {
  const c = await client()
  const s = newScope()
  const b = await begin(c, s, 'k', CMD)
  assert.deepEqual([b.outcome, b.state, b.attempt, b.httpStatus, b.resource], ['execute', 'in_progress', 1, null, null])
  assert.equal(b.fingerprint.length, 32)
  assert.deepEqual(b.fingerprint, await fingerprint(c, CMD))
  await complete(c, s, 'k', { resource: 'payments/1', httpStatus: 201, attempt: 1 })
  const r = await begin(c, s, 'k', { body: { currency: 'EUR', amount: '10.00' }, path: '/v1/payments', method: 'POST' })
  assert.deepEqual([r.outcome, r.state, r.attempt, r.httpStatus, r.resource, r.response], ['replay', 'completed', 1, 201, 'payments/1', null])
  const ch = await check(c, s, 'k', CMD)
  assert.deepEqual([ch.state, ch.matches, ch.attempt, ch.httpStatus, ch.resource, ch.leaseExpiresAt], ['completed', true, 1, 201, 'payments/1', null])
  assert.equal((await check(c, s, 'k', OTHER)).matches, false)
  assert.equal((await check(c, s, 'nope')).state, 'absent')
})

test('canonical text, fingerprint and exact numbers through RawJson', async () => {
  const c = await client()
  const text = await canonical(c, { b: 1, a: 2.0 })
  assert.equal(text, '{"a":2,"b":1}')
  assert.deepEqual(await fingerprint(c, { a: 2, b: 1 }), createHash('sha256').update(text).digest())
  // 2^53 + 1 is not a JavaScript number; as JSON text it stays exact.
  assert.equal(await canonical(c, new RawJson('{"n": 9007199254740993}')), '{"n":9007199254740993}')
  assert.notDeepEqual(await fingerprint(c, new RawJson('[12345678901234567891]')), await fingerprint(c, new RawJson('[12345678901234567890]')))
})

test('forget and purge', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k', CMD)
  await complete(c, s, 'k', { response: { ok: true } })
  assert.equal(await forget(c, s, 'k'), true)
  assert.equal(await forget(c, s, 'k'), false)
  // A ttl long enough for complete to find the key live even on a loaded machine.
  await begin(c, s, 'short', CMD, { ttl: 1000 })
  await complete(c, s, 'short')
  await sleep(1100)
  assert.ok((await purge(c, 100000)) >= 1)
  assert.equal(await purge(c, 100000), 0)
})

test('checkpoint returns the new lease end', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k', CMD, { lease: '30 seconds' })
  const end = await checkpoint(c, s, 'k', 'charged', { charge_id: 'ch_1' }, { attempt: 1 })
  const ch = await check(c, s, 'k')
  assert.deepEqual([ch.recoveryPoint, ch.leaseExpiresAt?.getTime()], ['charged', end.getTime()])
})

// --- Every SQLSTATE --------------------------------------------------------------------------

// The refusals' data come from a read of the record after the refusal, never from the
// server's prose: these tests also run with the messages reworded and a DateStyle that no
// parser of ISO text would read.

/** The record's created_at as exact epoch microseconds (whole seconds and the microseconds apart). */
async function createdMicros(c: pg.ClientBase, s: string, k: string): Promise<bigint> {
  const r = await c.query(
    `SELECT extract(epoch FROM date_trunc('second', created_at))::bigint::text AS secs,
            (extract(microseconds FROM created_at)::bigint % 1000000)::text AS us,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS text
       FROM idem_check($1, $2)`,
    [s, k],
  )
  const us = BigInt(r.rows[0].secs) * 1000000n + BigInt(r.rows[0].us)
  assert.equal(http.rfc3339Micros(us), r.rows[0].text) // the server's own formatting agrees
  return us
}

/** The stored fingerprint of a record, read from idem_check's own `fingerprint` column (0.4.0). */
async function storedFingerprint(c: pg.ClientBase, s: string, k: string): Promise<Buffer> {
  const r = await c.query('SELECT fingerprint FROM idem_check($1, $2)', [s, k])
  assert.equal(r.rows[0].fingerprint.length, 32)
  return r.rows[0].fingerprint
}

/**
 * Every field of a KeyReused, against the record read independently. The stored fingerprint is
 * the stored command's, as idem_check's `fingerprint` column of the suite's 0.4.0 server
 * returns it; `stored` null: a 0.3.0 server, whose idem_check has no such column (null).
 */
async function assertKeyReused(c: pg.ClientBase, e: unknown, s: string, k: string, stored: JsonInput | null, given: JsonInput): Promise<void> {
  assert.ok(e instanceof KeyReused, String(e))
  const us = await createdMicros(c, s, k)
  assert.deepEqual([e.sqlstate, e.scope, e.key, e.loaded, e.firstUsedMicros], ['IK001', s, k, true, us])
  assert.equal(e.firstUsedAt?.getTime(), Number(us / 1000n))
  assert.deepEqual(e.givenFingerprint, await fingerprint(c, given))
  if (stored === null) {
    assert.equal(e.storedFingerprint, null)
  } else {
    const expected = await fingerprint(c, stored)
    assert.equal(expected.length, 32)
    assert.deepEqual(e.storedFingerprint, expected)
    assert.deepEqual(await storedFingerprint(c, s, k), expected) // the server stored that one
    assert.notDeepEqual(e.storedFingerprint, e.givenFingerprint)
  }
  const p = http.problemForError(e)
  assert.deepEqual([p.status, p.code, p.extra], [422, 'idempotency_key_reused', { first_used_at: http.rfc3339Micros(us) }])
}

const rejection = (p: Promise<unknown>) => p.then(() => assert.fail('no error'), (x) => x)

test('IK001 is KeyReused with the first use and both fingerprints, read from the record', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k-1', CMD)
  await complete(c, s, 'k-1', { resource: 'payments/1', httpStatus: 201 })
  await assertKeyReused(c, await rejection(begin(c, s, 'k-1', OTHER)), s, 'k-1', CMD, OTHER)
  // The one-transaction helper reads it after its ROLLBACK.
  await assertKeyReused(c, await rejection(transaction(c, { scope: s, key: 'k-1', command: OTHER }, async () => assert.fail('no work'))), s, 'k-1', CMD, OTHER)
  // Without pipelining, and on a pool (each statement outside any transaction).
  await assertKeyReused(c, await rejection(begin(await client({ pipeline: false }), s, 'k-1', OTHER)), s, 'k-1', CMD, OTHER)
  const pool = new pg.Pool(clientConfig())
  try {
    await assertKeyReused(c, await rejection(begin(pool as unknown as pg.ClientBase, s, 'k-1', OTHER)), s, 'k-1', CMD, OTHER)
  } finally {
    await pool.end()
  }
})

test('IK001: scope and key holding quotes', async () => {
  const c = await client()
  const s = newScope() + '", key "x'
  const k = 'a", key "b'
  await begin(c, s, k, CMD)
  await complete(c, s, k)
  await assertKeyReused(c, await rejection(begin(c, s, k, OTHER)), s, k, CMD, OTHER)
})

test('IK001 under DateStyle SQL, DMY and TimeZone Asia/Kolkata: the first use is exact', async () => {
  for (const pipeline of [true, false]) {
    const c = await client({ pipeline })
    await c.query("SET DateStyle = 'SQL, DMY'")
    await c.query("SET TimeZone = 'Asia/Kolkata'")
    const s = newScope()
    await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.complete({ httpStatus: 201 }))
    const e = await rejection(begin(c, s, 'k', OTHER))
    assert.match(e.detail, /\d\d\/\d\d\/\d{4} \d\d:\d\d:\d\d\.\d+ IST/) // the server printed the time in SQL style
    await assertKeyReused(c, e, s, 'k', CMD, OTHER)
    await assertKeyReused(c, await rejection(transaction(c, { scope: s, key: 'k', command: OTHER }, async () => undefined)), s, 'k', CMD, OTHER)
  }
})

test('IK002 is NotInProgress with what was found', async () => {
  const c = await client()
  const s = newScope()
  let e = await rejection(complete(c, s, 'absent'))
  assert.ok(e instanceof NotInProgress)
  assert.deepEqual([e.sqlstate, e.scope, e.key, e.loaded, e.found], ['IK002', s, 'absent', true, 'absent'])
  await begin(c, s, 'k', CMD)
  await complete(c, s, 'k')
  e = await rejection(fail(c, s, 'k'))
  assert.ok(e instanceof NotInProgress)
  assert.deepEqual([e.loaded, e.found], [true, 'completed'])
  assert.deepEqual([http.problemForError(e).status, http.problemForError(e).code], [500, 'internal_error'])
  await begin(c, s, 'f', CMD)
  await fail(c, s, 'f', { retryable: false, httpStatus: 402 })
  e = await rejection(checkpoint(c, s, 'f', 'p'))
  assert.deepEqual([e instanceof NotInProgress, e.found], [true, 'failed'])
  // Expired is absent (idem_check's state).
  await begin(c, s, 'short', CMD, { ttl: 200 })
  await sleep(300)
  e = await rejection(complete(c, s, 'short'))
  assert.deepEqual([e instanceof NotInProgress, e.found], [true, 'absent'])
})

test('IK003 is LeaseLost with both attempts', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k', CMD)
  const e = await rejection(checkpoint(c, s, 'k', 'p', null, { attempt: 5 }))
  assert.ok(e instanceof LeaseLost)
  assert.deepEqual([e.sqlstate, e.scope, e.key, e.loaded, e.currentAttempt, e.givenAttempt], ['IK003', s, 'k', true, 1, 5])
  const p = http.problemForError(e)
  assert.deepEqual([p.status, p.code, p.headers], [409, 'request_in_progress', { 'Retry-After': '1' }])
})

test('a plain call inside the caller\'s transaction: the data stay empty, no statement is sent, load() fills them after ROLLBACK', async () => {
  const { client: c, socket } = await connectCounted()
  open.push(c)
  const s = newScope()
  await begin(c, s, 'k', CMD)
  await complete(c, s, 'k')
  await begin(c, s, 'held', CMD)
  await c.query('BEGIN')
  socket.reset()
  const e = await rejection(begin(c, s, 'k', OTHER))
  assert.equal(socket.count, 1) // idem_begin only: nothing read in the aborted transaction
  assert.ok(e instanceof KeyReused)
  assert.deepEqual([e.scope, e.key, e.loaded, e.firstUsedAt, e.firstUsedMicros, e.storedFingerprint, e.givenFingerprint], [s, 'k', false, null, null, null, null])
  assert.deepEqual(http.problemForError(e).extra, {})
  // The caller's transaction is aborted. The refusal may settle before the client has read the
  // ReadyForQuery that follows the error, so a next statement's 25P02 shows it first.
  assert.equal((await rejection(c.query('SELECT 1'))).code, '25P02')
  assert.equal(c.getTransactionStatus(), 'E')
  await c.query('ROLLBACK')
  assert.equal(await e.load(c), true)
  await assertKeyReused(c, e, s, 'k', CMD, OTHER)

  await c.query('BEGIN')
  const n = await rejection(complete(c, s, 'k'))
  assert.deepEqual([n instanceof NotInProgress, n.loaded, n.found], [true, false, null])
  await c.query('ROLLBACK')
  assert.deepEqual([await n.load(c), n.found], [true, 'completed'])

  await c.query('BEGIN')
  const l = await rejection(complete(c, s, 'held', { attempt: 3 }))
  assert.deepEqual([l instanceof LeaseLost, l.loaded, l.currentAttempt, l.givenAttempt], [true, false, null, 3])
  await c.query('ROLLBACK')
  assert.deepEqual([await l.load(c), l.currentAttempt, l.givenAttempt], [true, 1, 3])
})

test('a failed read keeps the refusal and leaves its data empty', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k', CMD)
  // idem_check answers an error on this connection: the follow-up read fails.
  await c.query('CREATE SCHEMA IF NOT EXISTS unreadable')
  await c.query(`CREATE OR REPLACE FUNCTION unreadable.idem_check(scope text, key text, command jsonb DEFAULT NULL) RETURNS SETOF record
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no reading today'; END $$`)
  await c.query('SET search_path = unreadable, "$user", public')
  const e = await rejection(checkpoint(c, s, 'k', 'p', null, { attempt: 2 }))
  assert.deepEqual([e instanceof LeaseLost, e.loaded, e.currentAttempt, e.givenAttempt], [true, false, null, 2])
  const r = await rejection(transaction(c, { scope: s, key: 'k', command: OTHER }, async () => undefined))
  assert.deepEqual([r instanceof KeyReused, r.loaded, r.firstUsedAt], [true, false, null])
  assert.equal(await r.load(c), false)
  assert.equal(c.getTransactionStatus(), 'I')
  await c.query('RESET search_path')
  assert.equal(await r.load(c), true)
})

test('the suite\'s server is 0.4.0: idem_begin and idem_check return their composite types, idem_check the stored fingerprint', async () => {
  const c = await client()
  const s = newScope()
  assert.equal((await c.query("SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")).rows[0].extversion, '0.4.0')
  const types = await c.query(
    "SELECT p.proname, p.prorettype::regtype::text AS t, p.proretset FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass" +
      " JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'idempotency' WHERE p.proname IN ('idem_begin', 'idem_check') ORDER BY p.proname",
  )
  assert.deepEqual(types.rows, [
    { proname: 'idem_begin', t: 'idempotency.begin_result', proretset: false },
    { proname: 'idem_check', t: 'idempotency.check_result', proretset: false },
  ])
  assert.equal((await c.query('SELECT fingerprint FROM idem_check($1, $2)', [s, 'k'])).rows[0].fingerprint, null) // absent: NULL
  await begin(c, s, 'k', CMD)
  assert.deepEqual(await storedFingerprint(c, s, 'k'), await fingerprint(c, CMD)) // in progress
  await complete(c, s, 'k')
  const e = await rejection(begin(c, s, 'k', OTHER))
  await assertKeyReused(c, e, s, 'k', CMD, OTHER)
  assert.deepEqual(e.storedFingerprint, createHash('sha256').update(await canonical(c, CMD)).digest())
})

test('a 0.3.0 server (a database created at VERSION \'0.3.0\'): idem_check has no fingerprint, the stored one is null, the rest exact', async () => {
  const admin = await client()
  const db = `${DATABASE}_v030`
  await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
  await admin.query(`CREATE DATABASE ${db}`)
  const c = new pg.Client({ ...clientConfig(), database: db })
  await c.connect()
  try {
    await c.query("CREATE EXTENSION idempotency VERSION '0.3.0'")
    assert.equal((await c.query("SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")).rows[0].extversion, '0.3.0')
    const s = newScope()
    // 0.3.0's idem_check: ten OUT columns, no fingerprint.
    const cols = (await c.query('SELECT * FROM idem_check($1, $2)', [s, 'k'])).fields.map((f) => f.name)
    assert.deepEqual(cols, ['state', 'matches', 'attempt', 'recovery_point', 'http_status', 'response', 'resource', 'created_at', 'expires_at', 'lease_expires_at'])
    const b = await begin(c, s, 'k', CMD)
    assert.deepEqual([b.outcome, b.state, b.attempt, b.fingerprint], ['execute', 'in_progress', 1, await fingerprint(c, CMD)])
    await complete(c, s, 'k', { resource: 'payments/1', httpStatus: 201 })
    await assertKeyReused(c, await rejection(begin(c, s, 'k', OTHER)), s, 'k', null, OTHER)
    await assertKeyReused(c, await rejection(transaction(c, { scope: s, key: 'k', command: OTHER }, async () => assert.fail('no work'))), s, 'k', null, OTHER)
    const n = await rejection(complete(c, s, 'k'))
    assert.deepEqual([n instanceof NotInProgress, n.loaded, n.found], [true, true, 'completed'])
    const ch = await check(c, s, 'k', CMD)
    assert.deepEqual([ch.state, ch.matches, ch.attempt, ch.httpStatus, ch.resource], ['completed', true, 1, 201, 'payments/1'])
  } finally {
    await c.end()
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
  }
})

/**
 * A connection whose idem_begin, idem_check, idem_complete, idem_fail and idem_checkpoint are wrappers
 * (schema `reworded`, first on its search_path) that call the extension's and re-raise its
 * errors with the same SQLSTATE and another MESSAGE, DETAIL and HINT.
 */
async function reworded(options: { pipeline?: boolean } = {}): Promise<pg.Client> {
  const c = await client(options)
  const ext = (await c.query("SELECT quote_ident(extnamespace::regnamespace::text) AS s FROM pg_extension WHERE extname = 'idempotency'")).rows[0].s
  const raise = `EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
    RAISE USING ERRCODE = st, MESSAGE = 'reworded: refused', DETAIL = 'Nothing to parse (' || st || ').', HINT = 'Read the record.';
  END $$`
  await c.query('BEGIN')
  await c.query('SELECT pg_advisory_xact_lock(4242)') // one test at a time creates the wrappers
  await c.query('CREATE SCHEMA IF NOT EXISTS reworded')
  // 0.4.0's result type, as the extension's idem_begin declares it (RETURNS idempotency.begin_result).
  await c.query(`CREATE OR REPLACE FUNCTION reworded.idem_begin(
      scope text, key text, command jsonb,
      ttl interval DEFAULT NULL, lease interval DEFAULT NULL, wait interval DEFAULT NULL)
    RETURNS idempotency.begin_result LANGUAGE plpgsql AS $$ DECLARE st text; r idempotency.begin_result; BEGIN
      r := ${ext}.idem_begin($1, $2, $3, $4, $5, $6);
      RETURN r;
    ${raise}`)
  // And idem_check, which the library reads after a refusal (RETURNS idempotency.check_result).
  await c.query(`CREATE OR REPLACE FUNCTION reworded.idem_check(scope text, key text, command jsonb DEFAULT NULL)
    RETURNS idempotency.check_result LANGUAGE plpgsql AS $$ DECLARE st text; r idempotency.check_result; BEGIN
      r := ${ext}.idem_check($1, $2, $3);
      RETURN r;
    ${raise}`)
  await c.query(`CREATE OR REPLACE FUNCTION reworded.idem_complete(
      scope text, key text, response jsonb DEFAULT NULL, resource text DEFAULT NULL,
      http_status integer DEFAULT 200, attempt integer DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql AS $$ DECLARE st text; BEGIN
      PERFORM ${ext}.idem_complete($1, $2, $3, $4, $5, $6);
    ${raise}`)
  await c.query(`CREATE OR REPLACE FUNCTION reworded.idem_fail(
      scope text, key text, error jsonb DEFAULT NULL, retryable boolean DEFAULT true,
      http_status integer DEFAULT 500, attempt integer DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql AS $$ DECLARE st text; BEGIN
      PERFORM ${ext}.idem_fail($1, $2, $3, $4, $5, $6);
    ${raise}`)
  await c.query(`CREATE OR REPLACE FUNCTION reworded.idem_checkpoint(
      scope text, key text, recovery_point text, data jsonb DEFAULT NULL, attempt integer DEFAULT NULL)
    RETURNS timestamptz LANGUAGE plpgsql AS $$ DECLARE st text; BEGIN
      RETURN ${ext}.idem_checkpoint($1, $2, $3, $4, $5);
    ${raise}`)
  await c.query('COMMIT')
  await c.query('SET search_path = reworded, "$user", public')
  // The library's calls resolve to the wrappers.
  const resolved = await c.query(
    "SELECT array_agg(p.proname || ' in ' || p.pronamespace::regnamespace::text ORDER BY p.proname) AS f FROM unnest(ARRAY[" +
      "to_regprocedure('idem_begin(text, text, jsonb, interval, interval, interval)'), to_regprocedure('idem_check(text, text, jsonb)')," +
      " to_regprocedure('idem_complete(text, text, jsonb, text, integer, integer)')]) AS r(oid) JOIN pg_proc p ON p.oid = r.oid",
  )
  assert.deepEqual(resolved.rows[0].f, ['idem_begin in reworded', 'idem_check in reworded', 'idem_complete in reworded'])
  return c
}

/** The refusal came through a wrapper: the server's own wording is gone. */
function assertReworded(e: { message: string; detail?: string; hint?: string; sqlstate: string }): void {
  assert.deepEqual([e.message, e.detail, e.hint], ['reworded: refused', `Nothing to parse (${e.sqlstate}).`, 'Read the record.'])
}

test('reworded messages: KeyReused, NotInProgress and LeaseLost keep their data', async () => {
  for (const pipeline of [true, false]) {
    const c = await reworded({ pipeline })
    await c.query("SET DateStyle = 'SQL, DMY'")
    await c.query("SET TimeZone = 'Asia/Kolkata'")
    const s = newScope()
    const first = await begin(c, s, 'k', CMD)
    assert.deepEqual([first.outcome, first.state, first.attempt, first.fingerprint], ['execute', 'in_progress', 1, await fingerprint(c, CMD)]) // the wrapper passes the answer through
    assert.deepEqual([(await check(c, s, 'k', CMD)).state, (await check(c, s, 'k', OTHER)).matches], ['in_progress', false]) // idem_check's too
    await complete(c, s, 'k', { httpStatus: 201, attempt: 1 })
    // IK001: plain, and through the one-transaction helper.
    let e = await rejection(begin(c, s, 'k', OTHER))
    assertReworded(e)
    await assertKeyReused(c, e, s, 'k', CMD, OTHER)
    e = await rejection(transaction(c, { scope: s, key: 'k', command: OTHER }, async () => undefined))
    assertReworded(e)
    await assertKeyReused(c, e, s, 'k', CMD, OTHER)
    // IK002: complete, fail and checkpoint.
    for (const call of [() => complete(c, s, 'k'), () => fail(c, s, 'gone'), () => checkpoint(c, s, 'k', 'p')]) {
      e = await rejection(call())
      assertReworded(e)
      assert.ok(e instanceof NotInProgress)
      assert.deepEqual([e.sqlstate, e.loaded], ['IK002', true])
    }
    assert.deepEqual([(await rejection(complete(c, s, 'gone'))).found, (await rejection(fail(c, s, 'k'))).found], ['absent', 'completed'])
    // IK003: plain calls, and a phased finish (rolled back by the library, then read).
    const held = await claim(c, { scope: s, key: 'h', command: CMD, lease: '30 seconds' })
    for (const call of [() => checkpoint(c, s, 'h', 'p', null, { attempt: 7 }), () => fail(c, s, 'h', { attempt: 7 })]) {
      e = await rejection(call())
      assertReworded(e)
      assert.ok(e instanceof LeaseLost)
      assert.deepEqual([e.sqlstate, e.loaded, e.currentAttempt, e.givenAttempt], ['IK003', true, 1, 7])
    }
    const stale = new Claim(c, s, 'h', { ...held.begin, attempt: 4 })
    e = await rejection(stale.finish(async (f) => f.complete({ httpStatus: 201 })))
    assertReworded(e)
    assert.deepEqual([e instanceof LeaseLost, e.loaded, e.currentAttempt, e.givenAttempt], [true, true, 1, 4])
    assert.equal(c.getTransactionStatus(), 'I')
    await held.complete()
  }
})

test('42501 is NotOwner', async () => {
  const c = await client()
  const s = newScope()
  await begin(c, s, 'k', CMD)
  await complete(c, s, 'k')
  const other = await client({ user: 'idem_other_role' })
  const e = await begin(other, s, 'k', CMD).then(() => assert.fail('no error'), (x) => x)
  assert.ok(e instanceof NotOwner)
  assert.equal(e.sqlstate, '42501')
  assert.deepEqual([http.problemForError(e).status, http.problemForError(e).code], [403, 'forbidden'])
})

test('22023 and 22004 are InvalidArgument', async () => {
  const c = await client()
  for (const [key, command, state] of [['', CMD, '22023'], ['k\n', CMD, '22023'], ['x'.repeat(256), CMD, '22023'], ['k', null, '22004']] as const) {
    const e = await begin(c, 's', key, command).then(() => assert.fail('no error'), (x) => x)
    assert.ok(e instanceof InvalidArgument, String(e))
    assert.equal(e.sqlstate, state)
    assert.deepEqual([http.problemForError(e).status, http.problemForError(e).code], [400, 'invalid_request'])
  }
  const s = newScope()
  await begin(c, s, 'k', CMD)
  const e = await complete(c, s, 'k', { httpStatus: 600 }).then(() => assert.fail('no error'), (x) => x)
  assert.ok(e instanceof InvalidArgument)
})

test('completeFitting: the response whole when it fits idempotency.max_response_size, else the omitted form', async () => {
  const s = newScope()
  const holder = await client()
  await begin(holder, s, 'fits', CMD)
  await begin(holder, s, 'over', CMD)
  // A connection that has called no function of the extension yet reads the setting too.
  const fresh = await client()
  const big = { v: 1, headers: [], body: 'z'.repeat(2000) }
  const small = { v: 1, headers: [], omitted: true }
  await completeFitting(fresh, s, 'fits', { response: big, omitted: small, httpStatus: 201, attempt: 1 })
  assert.deepEqual((await check(fresh, s, 'fits')).response, big)
  // The setting's text ('1MB', '1kB', '512kB') is what pg_size_bytes reads.
  assert.deepEqual((await fresh.query("SELECT pg_size_bytes(current_setting('idempotency.max_response_size'))::int AS n")).rows[0].n, 1 << 20)
  await fresh.query("SET idempotency.max_response_size = '1kB'") // PGC_SUSET: the test role is a superuser
  await completeFitting(fresh, s, 'over', { response: big, omitted: small, httpStatus: 201, attempt: 1 })
  assert.deepEqual([(await check(fresh, s, 'over')).response, (await check(fresh, s, 'over')).httpStatus], [small, 201])
  // The edge, to the byte: the extension measures the jsonb without its 4-byte header. Of the
  // documents of 900..1100 characters, the largest that measures at most 1 kB is stored whole,
  // the next one omitted (jsonb's alignment padding makes the sizes skip, hence the search).
  const sizes = (await fresh.query(
    "SELECT n, pg_column_size(jsonb_build_object('v', 1, 'headers', '[]'::jsonb, 'body', repeat('z', n))) - 4 AS size FROM generate_series(900, 1100) n ORDER BY n",
  )).rows as { n: number; size: number }[]
  const fits = sizes.filter((r) => r.size <= 1024).pop()!
  const over = sizes.find((r) => r.size > 1024)!
  assert.ok(fits.size > 1020, `a document of ${fits.size} bytes is the largest at most 1 kB`)
  await begin(holder, s, 'edge-fits', CMD)
  await begin(holder, s, 'edge-over', CMD)
  const doc = (n: number) => ({ v: 1, headers: [], body: 'z'.repeat(n) })
  await completeFitting(fresh, s, 'edge-fits', { response: doc(fits.n), omitted: small, httpStatus: 201, attempt: 1 })
  await completeFitting(fresh, s, 'edge-over', { response: doc(over.n), omitted: small, httpStatus: 201, attempt: 1 })
  assert.deepEqual([(await check(fresh, s, 'edge-fits')).response, (await check(fresh, s, 'edge-over')).response], [doc(fits.n), small])
  await fresh.query("SET idempotency.max_response_size = '512kB'")
  assert.deepEqual((await fresh.query("SELECT current_setting('idempotency.max_response_size') AS t, pg_size_bytes(current_setting('idempotency.max_response_size'))::int AS n")).rows[0], { t: '512kB', n: 512 << 10 })
  await fresh.query('RESET idempotency.max_response_size')
})

// --- The one-transaction helper ------------------------------------------------------------

for (const pipeline of [true, false]) {
  test(`transaction commits the work with the completion, then replays (pipeline ${pipeline})`, async () => {
    const c = await client({ pipeline })
    const s = newScope()
    const { tx, value } = await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => {
      assert.deepEqual([tx.outcome, tx.attempt], ['execute', 1])
      await writeEffect(c, s, 'k')
      tx.complete({ resource: 'effects/k', httpStatus: 201 })
      return 'done'
    })
    assert.deepEqual([tx.outcome, value], ['execute', 'done'])
    const again = await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.outcome)
    assert.deepEqual([again.value, again.tx.begin.httpStatus, again.tx.begin.resource], ['replay', 201, 'effects/k'])
    const a = http.answerForBegin(again.tx.begin)!
    assert.deepEqual([a.status, a.headers, a.body], [201, { 'Idempotent-Replayed': 'true' }, undefined])
    assert.deepEqual(await effects(c, s), ['k'])
  })
}

test('transaction: an error out of the work rolls back the claim and the work', async () => {
  const c = await client()
  const s = newScope()
  await assert.rejects(
    transaction(c, { scope: s, key: 'k', command: CMD }, async () => {
      await writeEffect(c, s, 'k')
      throw new RangeError('the work failed')
    }),
    RangeError,
  )
  assert.equal((await check(c, s, 'k')).state, 'absent')
  assert.deepEqual(await effects(c, s), [])
  const { tx } = await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.complete())
  assert.deepEqual([tx.outcome, tx.attempt], ['execute', 1])
})

test('transaction: fail rolls back to the savepoint and stores the failure', async () => {
  const c = await client()
  const s = newScope()
  const error = { code: 'refund_exceeds_payment', status: 409 }
  await transaction(c, { scope: s, key: 'final', command: CMD }, async (tx) => {
    await writeEffect(c, s, 'final')
    tx.fail({ error, httpStatus: 409, retryable: false })
  })
  const { tx } = await transaction(c, { scope: s, key: 'final', command: CMD }, async () => undefined)
  assert.deepEqual([tx.outcome, tx.begin.state, tx.begin.httpStatus, tx.begin.response], ['replay', 'failed', 409, error])
  const a = http.answerForBegin(tx.begin)!
  assert.deepEqual([a.status, a.code, a.body, a.headers], [409, 'refund_exceeds_payment', error, { 'Idempotent-Replayed': 'true' }])
  await transaction(c, { scope: s, key: 'again', command: CMD }, async (tx) => tx.fail({ error: { code: 'processor_unavailable' }, httpStatus: 503 }))
  const r = await transaction(c, { scope: s, key: 'again', command: CMD }, async (tx) => {
    tx.complete({ httpStatus: 201 })
    return tx.attempt
  })
  assert.deepEqual([r.tx.outcome, r.value], ['execute', 2])
  assert.deepEqual(await effects(c, s), [])
})

test('transaction: a statement of the work that fails unseen commits nothing', async () => {
  const c = await client()
  const s = newScope()
  await assert.rejects(
    transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => {
      tx.query('INSERT INTO no_such_table VALUES (1)')
      tx.complete({ httpStatus: 201 })
    }),
    (e: unknown) => (e as { code?: string }).code === '42P01',
  )
  assert.equal((await check(c, s, 'k')).state, 'absent')
})

test('transaction: work without complete or fail stores nothing', async () => {
  const c = await client()
  const s = newScope()
  await assert.rejects(transaction(c, { scope: s, key: 'k', command: CMD }, async () => undefined), /without complete\(\) or fail\(\)/)
  assert.equal((await check(c, s, 'k')).state, 'absent')
  await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.complete())
  await assert.rejects(transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.complete()), /only a request that executes/)
})

test('transaction: IK001 is thrown before the work runs', async () => {
  const c = await client()
  const s = newScope()
  await transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => tx.complete({ httpStatus: 201 }))
  await assert.rejects(
    transaction(c, { scope: s, key: 'k', command: OTHER }, async () => assert.fail('the work must not run')),
    KeyReused,
  )
  assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1) // the connection is usable, not in a failed transaction
})

// --- Two connections racing one key ----------------------------------------------------------

test('an uncommitted holder is in_progress, then the key replays', async () => {
  const holder = await client()
  const other = await client()
  const s = newScope()
  let release!: () => void
  const released = new Promise<void>((r) => (release = r))
  let entered!: () => void
  const isEntered = new Promise<void>((r) => (entered = r))
  const held = transaction(holder, { scope: s, key: 'k', command: CMD }, async (tx) => {
    entered()
    await released
    tx.complete({ resource: 'payments/1', httpStatus: 201 })
  })
  await isEntered
  const seen = await transaction(other, { scope: s, key: 'k', command: CMD }, async (tx) => tx.outcome)
  assert.deepEqual([seen.value, seen.tx.begin.httpStatus, seen.tx.lease?.leaseExpiresAt, seen.tx.lease?.retryAfter], ['in_progress', 409, null, 1])
  const a = http.answerForBegin(seen.tx.begin, { lease: seen.tx.lease })!
  assert.deepEqual([a.status, a.code, a.headers], [409, 'request_in_progress', { 'Retry-After': '1' }])
  release()
  await held
  const after = await transaction(other, { scope: s, key: 'k', command: CMD }, async (tx) => tx.begin)
  assert.deepEqual([after.value.outcome, after.value.resource], ['replay', 'payments/1'])
})

test('many connections racing one key execute it once', async () => {
  const s = newScope()
  const clients = await Promise.all(Array.from({ length: 8 }, () => client()))
  const outcomes = await Promise.all(
    clients.map(async (c) => {
      const { tx } = await transaction(c, { scope: s, key: 'hot', command: CMD, wait: '30 seconds' }, async (tx) => {
        if (tx.outcome === 'execute') {
          await writeEffect(c, s, 'hot')
          tx.complete({ resource: 'effects/hot', httpStatus: 201 })
        }
      })
      return tx.outcome
    }),
  )
  assert.deepEqual(outcomes.sort(), ['execute', ...Array(7).fill('replay')])
  assert.deepEqual(await effects(clients[0], s), ['hot'])
})

test('a serialization failure (40001) is retried and then replays', async () => {
  const holder = await client()
  const rr = await client()
  const s = newScope()
  let release!: () => void
  const released = new Promise<void>((r) => (release = r))
  let entered!: () => void
  const isEntered = new Promise<void>((r) => (entered = r))
  const held = transaction(holder, { scope: s, key: 'k', command: CMD }, async (tx) => {
    entered()
    await released
    tx.complete({ httpStatus: 201 })
  })
  await isEntered
  await rr.query('SET default_transaction_isolation = "repeatable read"')
  const rrPid = await backendPid(rr)
  const runs: string[] = []
  const retried = retrySerialization(async () => {
    try {
      const { tx } = await transaction(rr, { scope: s, key: 'k', command: CMD, wait: '30 seconds' }, async (tx) => tx.outcome)
      runs.push(tx.outcome)
      return tx.outcome
    } catch (e) {
      if (e instanceof SerializationFailure) runs.push(e.sqlstate)
      throw e
    }
  })
  await waitForWaiter(rrPid)
  release()
  await held
  assert.equal(await retried, 'replay')
  assert.deepEqual(runs, ['40001', 'replay'])
})

// --- The phased helper ---------------------------------------------------------------------

test('phased: claim, checkpoint, finish, then replay', async () => {
  const c = await client()
  const s = newScope()
  const cl = await claim(c, { scope: s, key: 'k', command: CMD, lease: '30 seconds' })
  assert.deepEqual([cl.outcome, cl.attempt, cl.recoveryPoint], ['execute', 1, null])
  assert.equal((await check(c, s, 'k')).state, 'in_progress') // committed
  await cl.checkpoint('charged', { charge_id: 'ch_1' })
  await cl.finish(async (f) => {
    await writeEffect(c, s, 'k')
    f.complete({ resource: 'effects/k', httpStatus: 201 })
  })
  const again = await claim(c, { scope: s, key: 'k', command: CMD })
  assert.deepEqual([again.outcome, again.begin.resource, again.begin.httpStatus], ['replay', 'effects/k', 201])
  assert.deepEqual(await effects(c, s), ['k'])
})

test('phased: in_progress reports the lease', async () => {
  const c = await client()
  const c2 = await client()
  const s = newScope()
  await claim(c, { scope: s, key: 'k', command: CMD, lease: '30 seconds' })
  const other = await claim(c2, { scope: s, key: 'k', command: CMD })
  assert.equal(other.outcome, 'in_progress')
  const l = await other.lease()
  assert.ok(l.leaseExpiresAt !== null && l.retryAfter >= 20 && l.retryAfter <= 30, String(l.retryAfter))
  const a = http.answerForBegin(other.begin, { lease: l })!
  assert.deepEqual([a.status, a.headers['Retry-After']], [409, String(l.retryAfter)])
})

test('phased: a takeover fences the stale holder (IK003)', async () => {
  const c = await client()
  const c2 = await client()
  const s = newScope()
  const stale = await claim(c, { scope: s, key: 'k', command: CMD, lease: 200 })
  await stale.checkpoint('charged', { charge_id: 'ch_1' })
  await sleep(500) // past the lease: the next request takes over
  const next = await claim(c2, { scope: s, key: 'k', command: CMD, lease: '30 seconds' })
  assert.deepEqual([next.outcome, next.attempt, next.recoveryPoint, next.recoveryData], ['execute', 2, 'charged', { charge_id: 'ch_1' }])
  const e = await stale
    .finish(async (f) => {
      await writeEffect(c, s, 'stale')
      f.complete({ resource: 'effects/stale', httpStatus: 201 })
    })
    .then(() => assert.fail('no error'), (x) => x)
  assert.ok(e instanceof LeaseLost)
  assert.deepEqual([e.currentAttempt, e.givenAttempt], [2, 1])
  await assert.rejects(stale.checkpoint('later'), LeaseLost)
  await assert.rejects(stale.fail({ error: { code: 'x' } }), LeaseLost)
  await next.finish(async (f) => {
    await writeEffect(c2, s, 'new')
    f.complete({ resource: 'effects/new', httpStatus: 201 })
  })
  assert.deepEqual(await effects(c, s), ['new'])
  await assert.rejects(stale.complete({ resource: 'effects/stale' }), LeaseLost) // also after the newer attempt finished
})

test('phased: a retryable failure is executed again, a final one replays', async () => {
  const c = await client()
  const s = newScope()
  const first = await claim(c, { scope: s, key: 'k', command: CMD })
  await first.checkpoint('charged', { charge_id: 'ch_1' })
  await first.fail({ error: { code: 'processor_unavailable' }, retryable: true, httpStatus: 503 })
  const again = await claim(c, { scope: s, key: 'k', command: CMD })
  assert.deepEqual([again.outcome, again.attempt, again.recoveryPoint], ['execute', 2, 'charged'])
  await again.fail({ error: { code: 'card_declined' }, retryable: false, httpStatus: 402 })
  const final = await claim(c, { scope: s, key: 'k', command: CMD })
  assert.deepEqual([final.outcome, final.begin.state, final.begin.httpStatus, final.begin.response], ['replay', 'failed', 402, { code: 'card_declined' }])
})

// --- Round trips -----------------------------------------------------------------------------

for (const [pipeline, expected, expectedWrites] of [
  // Pipelined, the statements of a round trip go out in one write (the work's own INSERT, sent
  // when the work issues it, is a write of its own).
  // IK001's ROLLBACK and the read of the record go together.
  [true, { new: 2, replay: 2, in_progress: 2, ik001: 2, claim: 1, checkpoint: 1, finish: 1 }, { new: 3, replay: 2, in_progress: 2, ik001: 2, claim: 1, checkpoint: 1, finish: 3 }],
  // Without pipelining every statement is a round trip.
  [false, { new: 6, replay: 4, in_progress: 5, ik001: 4, claim: 1, checkpoint: 1, finish: 5 }, { new: 6, replay: 4, in_progress: 5, ik001: 4, claim: 1, checkpoint: 1, finish: 5 }],
] as const) {
  test(`round trips per flow (pipeline ${pipeline})`, async () => {
    const { client: c, socket } = await connectCounted({ pipeline })
    open.push(c)
    const c2 = await client()
    const s = newScope()
    const held = await claim(c2, { scope: s, key: 'held', command: CMD, lease: '30 seconds' })
    const got: Record<string, number> = {}
    const writes: Record<string, number> = {}
    const measure = async (name: string, flow: () => Promise<unknown>) => {
      socket.reset()
      await flow()
      got[name] = socket.count
      writes[name] = socket.writes
    }
    const claims: Claim[] = []
    await measure('new', () =>
      transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => {
        tx.query("INSERT INTO effects VALUES ($1, 'k', 'done')", [s]) // a write whose result is not awaited
        tx.complete({ resource: 'effects/k', httpStatus: 201 })
      }),
    )
    await measure('replay', () => transaction(c, { scope: s, key: 'k', command: CMD }, async (tx) => assert.equal(tx.outcome, 'replay')))
    await measure('in_progress', async () => {
      const { tx } = await transaction(c, { scope: s, key: 'held', command: CMD }, async (tx) => tx.outcome)
      assert.equal(tx.outcome as Outcome, 'in_progress')
      assert.ok(tx.lease?.leaseExpiresAt)
    })
    await measure('ik001', () => assert.rejects(transaction(c, { scope: s, key: 'k', command: OTHER }, async () => undefined), KeyReused))
    await measure('claim', async () => claims.push(await claim(c, { scope: s, key: 'p', command: CMD, lease: '30 seconds' })))
    await measure('checkpoint', () => claims[0].checkpoint('charged', { charge_id: 'ch_1' }))
    await measure('finish', () =>
      claims[0].finish(async (f) => {
        f.query("INSERT INTO effects VALUES ($1, 'p', 'done')", [s])
        f.complete({ resource: 'effects/p', httpStatus: 201 })
      }),
    )
    await held.complete()
    assert.deepEqual(got, expected)
    assert.deepEqual(writes, expectedWrites)
    assert.deepEqual(await effects(c2, s), ['k', 'p'])
  })
}
