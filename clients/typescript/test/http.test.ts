// The HTTP mapping's request side and its answers, without a database.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Lease, http, type Begin, type Outcome, type State, type Json } from '../src/index'

function begin(outcome: Outcome, state: State, httpStatus: number | null = null, response: Json = null, resource: string | null = null): Begin {
  return { outcome, state, attempt: 1, recoveryPoint: null, recoveryData: null, httpStatus, response, resource, fingerprint: Buffer.alloc(32), expiresAt: null }
}

test('keys accepted', () => {
  for (const [header, key] of [
    ['"k-123"', 'k-123'], ['k-123', 'k-123'], ['"a\\"b\\\\c"', 'a"b\\c'], ['tok_visa.1~2:3+4/5=', 'tok_visa.1~2:3+4/5='],
    ['  "k-1"  ', 'k-1'], ['"with space"', 'with space'], ['123', '123'], ['x'.repeat(255), 'x'.repeat(255)],
  ]) {
    assert.equal(http.parseIdempotencyKey(header), key, header)
    assert.equal(http.parseIdempotencyKey([header]), key, header)
  }
})

test('keys refused', () => {
  for (const values of [
    [''], ['"'], ['"unterminated'], ['""'], ['with space'], ['"k"garbage'], ['x'.repeat(256)], ['"' + 'x'.repeat(256) + '"'],
    ['k,1'], ['k-1', 'k-2'], ['"\\x"'], ['ké'], ['"ké"'], ['?q'], ['(k)'], ['"k-1", "k-2"'], ['k\t1'], ['"k-1";x=1'], ['k;x=1'],
  ]) {
    assert.throws(() => http.parseIdempotencyKey(values), (e: unknown) => e instanceof http.Problem && e.status === 400 && e.code === 'idempotency_key_invalid', JSON.stringify(values))
  }
})

test('a missing key', () => {
  assert.throws(() => http.parseIdempotencyKey(undefined), (e: unknown) => {
    assert.ok(e instanceof http.Problem)
    assert.deepEqual(e.body(), { type: 'urn:problem-type:idempotency_key_missing', title: 'Bad Request', status: 400, detail: e.detail, code: 'idempotency_key_missing' })
    return true
  })
})

test('the Bearer tenant', () => {
  for (const [header, tenant] of [['Bearer t1', 't1'], ['bearer A-b_9', 'A-b_9'], ['Bearer ' + 'x'.repeat(64), 'x'.repeat(64)]]) {
    assert.equal(http.parseBearerTenant(header), tenant)
  }
  for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Basic dDE=', 'Bearer t.1', 'Bearer ' + 'x'.repeat(65), 'Bearer a b']) {
    assert.throws(() => http.parseBearerTenant(header), (e: unknown) => e instanceof http.Problem && e.status === 401 && e.code === 'unauthorized' && e.headers['WWW-Authenticate'] === 'Bearer', String(header))
  }
})

test('Prefer', () => {
  assert.deepEqual(http.parsePrefer(undefined), { respondAsync: false, wait: null })
  assert.deepEqual(http.parsePrefer('respond-async, wait=3'), { respondAsync: true, wait: 3 })
  assert.deepEqual(http.parsePrefer('wait=100'), { respondAsync: false, wait: 10 })
  assert.deepEqual(http.parsePrefer(['handling=lenient', 'RESPOND-ASYNC']), { respondAsync: true, wait: null })
})

test('answers', () => {
  assert.equal(http.answerForBegin(begin('execute', 'in_progress')), null)
  let a = http.answerForBegin(begin('replay', 'completed', 201, null, 'payments/1'))!
  assert.deepEqual([a.status, a.headers, a.body, a.code], [201, { 'Idempotent-Replayed': 'true' }, undefined, null])
  a = http.answerForBegin(begin('replay', 'completed', 200, { ok: true }))!
  assert.deepEqual([a.status, a.body, http.mediaType(a)], [200, { ok: true }, 'application/json'])
  const p = { code: 'card_declined', status: 402 }
  a = http.answerForBegin(begin('replay', 'failed', 402, p))!
  assert.deepEqual([a.status, a.code, a.body, http.mediaType(a)], [402, 'card_declined', p, 'application/problem+json'])
  const now = new Date(Date.UTC(2026, 0, 1))
  const held = begin('in_progress', 'in_progress', 409)
  a = http.answerForBegin(held, { lease: new Lease(new Date(now.getTime() + 29001), now) })!
  assert.deepEqual([a.status, a.code, a.headers], [409, 'request_in_progress', { 'Retry-After': '30' }])
  assert.equal(new Lease(new Date(now.getTime() + 200), now).retryAfter, 1)
  assert.equal(new Lease(new Date(now.getTime() - 5000), now).retryAfter, 1)
  assert.equal(new Lease(null, now).retryAfter, 1)
  assert.equal(new Lease(new Date(now.getTime() + 30000), now).retryAfter, 30)
  a = http.answerForBegin(held, { key: 'k/1 é', prefer: { respondAsync: true, wait: null } })!
  assert.deepEqual([a.status, a.headers, a.body], [202, { Location: '/v1/idempotency-keys/k%2F1%20%C3%A9' }, undefined])
})
