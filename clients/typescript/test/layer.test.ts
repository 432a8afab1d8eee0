// The drop-in layer's framework-neutral part (src/layer.ts) without a database: the option
// checks, the command, what is stored by status, the stored response and its replay, the
// layer's own answers.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'

import type pg from 'pg'

import { Lease, type Begin } from '../src/index'
import {
  ConfigurationError,
  Incoming,
  LayerOptions,
  Poll,
  bodyMember,
  commandText,
  decodeStored,
  inProgressReply,
  keepsWrites,
  keyOf,
  prepare,
  queryMember,
  replayReply,
  settings,
  storedResponse,
  stores,
} from '../src/layer'

const pool = { connect: async () => undefined, query: async () => undefined } as unknown as pg.Pool
const base: LayerOptions<unknown> = { pool, tenant: () => 't' }

function incoming(o: Partial<Incoming> & { headerMap?: Record<string, string[]> } = {}): Incoming {
  const h = o.headerMap ?? {}
  return { method: o.method ?? 'POST', path: o.path ?? '/x', query: o.query ?? '', headers: (n) => h[n] ?? [] }
}

const sha = (b: string | Buffer) => createHash('sha256').update(b).digest('hex')

test('options: a tenant function or globalKeys, never Set-Cookie, checked numbers and mode', () => {
  const refused = (o: Partial<LayerOptions<unknown>>, message: RegExp) => assert.throws(() => settings({ ...base, ...o } as LayerOptions<unknown>), (e) => e instanceof ConfigurationError && message.test(e.message))
  assert.throws(() => settings({ pool }), (e) => e instanceof ConfigurationError && /tenant function/.test(e.message))
  assert.throws(() => settings({ pool, globalKeys: false }), ConfigurationError)
  refused({ globalKeys: true }, /not both/)
  assert.throws(() => settings({ pool: {} as pg.Pool, tenant: () => 't' }), (e) => e instanceof ConfigurationError && /pg\.Pool/.test(e.message))
  refused({ replayHeaders: ['X-Ok', 'Set-Cookie'] }, /^set-cookie is never stored/)
  refused({ replayHeaders: ['set-cookie2'] }, /^set-cookie2 is never stored/)
  refused({ replayHeaders: ['bad header'] }, /replayHeaders must be a list of header names/)
  refused({ commandHeaders: [''] }, /commandHeaders/)
  refused({ maxBodyBytes: -1 }, /maxBodyBytes must be an integer >= 0/)
  refused({ maxStoredBody: 1.5 }, /maxStoredBody/)
  refused({ maxWait: Number.NaN }, /maxWait/)
  refused({ ttl: 0 }, /ttl must be a positive/)
  refused({ lease: '' }, /lease must be a positive/)
  refused({ mode: 'both' as 'phased' }, /mode must be 'phased' or 'transaction'/)
  refused({ methods: ['POST', ''] }, /methods/)

  const s = settings({ ...base, methods: ['post', 'Put'], replayHeaders: ['X-Replayed-Too'], commandHeaders: ['X-Variant'] })
  assert.deepEqual([...s.methods], ['POST', 'PUT'])
  assert.deepEqual(s.commandHeaders, ['x-variant'])
  assert.ok(s.keep.has('x-replayed-too') && s.keep.has('content-type') && !s.keep.has('set-cookie'))
  const d = settings({ pool, globalKeys: true })
  assert.deepEqual([[...d.methods], d.required, d.maxBodyBytes, d.maxStoredBody, d.maxWait, d.mode, d.tenant], [['POST', 'PATCH'], true, 1048576, 524288, 10, 'phased', null])
})

test('the key: required by default, or absent and passing through', () => {
  const s = settings(base)
  assert.throws(() => keyOf(s, incoming()), (e: { status: number; code: string }) => e.status === 400 && e.code === 'idempotency_key_missing')
  assert.throws(() => keyOf(s, incoming({ headerMap: { 'idempotency-key': ['a', 'b'] } })), (e: { code: string }) => e.code === 'idempotency_key_invalid')
  assert.equal(keyOf(s, incoming({ headerMap: { 'idempotency-key': ['"k-1"'] } })), 'k-1')
  assert.equal(keyOf(settings({ ...base, required: false }), incoming()), null)
})

test('the command: method, decoded path and query, named headers, the body', () => {
  const s = settings({ ...base, commandHeaders: ['x-variant', 'x-absent'] })
  const text = commandText(
    s,
    incoming({
      method: 'post',
      path: '/orders/42 x',
      query: 'a=1&b&a=2&c+d=e%20f&b=',
      headerMap: { 'x-variant': ['blue', 'green'], 'x-other': ['no'], 'content-type': ['Application/JSON; charset=utf-8'] },
    }),
    Buffer.from('{"sku": "A-1", "qty": 2.0, "big": 12345678901234567890123}'),
  )
  assert.equal(
    text,
    '{"v":1,"method":"POST","path":"/orders/42 x","query":{"a":["1","2"],"b":["",""],"c d":["e f"]},"headers":{"x-variant":["blue","green"]},' +
      '"body":{"media_type":"application/json","json":{"sku": "A-1", "qty": 2.0, "big": 12345678901234567890123}}}',
  )
  assert.deepEqual(JSON.parse(commandText(s, incoming(), Buffer.alloc(0))), { v: 1, method: 'POST', path: '/x', query: {}, headers: {}, body: null })
  assert.deepEqual(queryMember(''), {})
  assert.deepEqual(queryMember('x=%E2%82%AC&x=%zz'), { x: ['€', '%zz'] })
})

test('the body: JSON by media type when it parses and jsonb takes it, else the bytes hashed', () => {
  const member = (ct: string | undefined, body: string | Buffer) => JSON.parse(bodyMember(ct, Buffer.from(body)))
  assert.deepEqual(member('application/vnd.api+json', '[1, 2]'), { media_type: 'application/vnd.api+json', json: [1, 2] })
  assert.deepEqual(member('text/plain; charset=utf-8', 'hello'), { media_type: 'text/plain', sha256: '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824' })
  assert.deepEqual(member(undefined, 'hello'), { media_type: null, sha256: sha('hello') })
  assert.deepEqual(member('application/json', '{"a": '), { media_type: 'application/json', sha256: sha('{"a": ') })
  assert.deepEqual(member('application/json', '{"a": "\\u0000"}'), { media_type: 'application/json', sha256: sha('{"a": "\\u0000"}') })
  assert.deepEqual(member('application/json', '"\\ud800"'), { media_type: 'application/json', sha256: sha('"\\ud800"') })
  const latin1 = Buffer.from([0x22, 0xe9, 0x22]) // "é" in Latin-1: not UTF-8
  assert.deepEqual(member('application/json', latin1), { media_type: 'application/json', sha256: sha(latin1) })
  assert.deepEqual(member('application/jsonx', '{}'), { media_type: 'application/jsonx', sha256: sha('{}') })
  assert.equal(bodyMember('application/json', Buffer.alloc(0)), 'null')
})

test('prepare: the mode (a function of the request too) and Prefer capped at maxWait', () => {
  const s = settings({ ...base, maxWait: 3, mode: (r: unknown) => (r === 'tx' ? 'transaction' : 'phased') })
  const i = incoming({ headerMap: { prefer: ['respond-async, wait=30'] } })
  const p = prepare(s, 'tx', i, 'k', 'scope', Buffer.alloc(0))
  assert.deepEqual([p.mode, p.prefer, p.scope, p.key], ['transaction', { respondAsync: true, wait: 3 }, 'scope', 'k'])
  assert.equal(prepare(s, 'other', i, 'k', 'scope', Buffer.alloc(0)).mode, 'phased')
  const bad = settings({ ...base, mode: () => 'neither' as 'phased' })
  assert.throws(() => prepare(bad, null, i, 'k', 's', Buffer.alloc(0)), ConfigurationError)
})

test('what is stored, by status', () => {
  const at = (status: number, extra: { body?: Buffer | null; threw?: boolean } = {}) => ({ status, headers: [], body: Buffer.alloc(0), threw: false, ...extra })
  const decided = [100, 200, 201, 204, 302, 304, 400, 401, 404, 409, 422, 428, 429, 431, 500, 502, 503].map((s) => [s, stores(at(s))])
  assert.deepEqual(decided, [
    [100, true], [200, true], [201, true], [204, true], [302, true], [304, true], [400, true], [401, true], [404, true],
    [409, true], [422, true], [428, true], [429, false], [431, true], [500, false], [502, false], [503, false],
  ])
  assert.equal(stores(at(201, { threw: true })), false)
  assert.equal(stores(at(201, { body: null })), false) // streamed
  assert.deepEqual([keepsWrites(at(201, { body: null })), keepsWrites(at(429)), keepsWrites(at(200, { threw: true })), keepsWrites(at(409))], [true, false, false, true])
})

test('the stored response: the body-describing and named headers in order, never Set-Cookie; omitted over maxStoredBody', () => {
  const s = settings({ ...base, replayHeaders: ['x-replayed-too'], maxStoredBody: 4 })
  const headers: [string, string][] = [
    ['Location', '/things/1'],
    ['Set-Cookie', 's=1'],
    ['X-Replayed-Too', 'yes'],
    ['X-Not-Stored', 'no'],
    ['Content-Type', 'text/plain'],
    ['Vary', 'a'],
    ['Vary', 'b'],
  ]
  const kept = [['location', '/things/1'], ['x-replayed-too', 'yes'], ['content-type', 'text/plain'], ['vary', 'a'], ['vary', 'b']]
  const doc = storedResponse(s, headers, Buffer.from('abcd'))
  assert.deepEqual(doc, { v: 1, headers: kept, body: 'YWJjZA==' })
  const big = storedResponse(s, headers, Buffer.from('abcde'))
  assert.deepEqual(big, { v: 1, headers: kept, omitted: true })

  const begin = (response: unknown, httpStatus: number) => ({ outcome: 'replay', state: 'completed', httpStatus, response }) as unknown as Begin
  const r = replayReply(begin(JSON.parse(JSON.stringify(doc)), 201))
  assert.deepEqual([r.status, r.headers, r.body.toString()], [201, [...kept, ['idempotent-replayed', 'true']], 'abcd'])
  const o = replayReply(begin(JSON.parse(JSON.stringify(big)), 200))
  assert.deepEqual([o.status, o.headers, o.body.length], [200, [...kept, ['idempotent-replayed', 'true'], ['idempotent-replay-body', 'omitted']], 0])
  // A record stored by other code under the same scope: no header, no body.
  assert.deepEqual(decodeStored({ note: 'x' }), { headers: [], body: Buffer.alloc(0) })
  assert.deepEqual(decodeStored(null), { headers: [], body: Buffer.alloc(0) })
  assert.deepEqual(decodeStored({ v: 1, headers: [['a', 'b'], ['bad'], [1, 2]], body: 'AAE=' }), { headers: [['a', 'b']], body: Buffer.from([0, 1]) })
})

test('in progress: 409 with Retry-After, 202 under respond-async with the status URL', () => {
  const s = settings({ ...base, statusUrl: (k) => `/keys/${encodeURIComponent(k)}` })
  const now = new Date('2026-01-01T00:00:00Z')
  const lease = new Lease(new Date(now.getTime() + 4200), now)
  const r = inProgressReply(s, lease, { respondAsync: false, wait: null }, 'k 1')
  assert.deepEqual([r.status, r.headers], [409, [['content-type', 'application/problem+json'], ['retry-after', '5']]])
  assert.deepEqual(JSON.parse(r.body.toString()), {
    type: 'urn:problem-type:request_in_progress',
    title: 'Conflict',
    status: 409,
    detail: 'another request with this Idempotency-Key is being processed; retry after Retry-After seconds',
    code: 'request_in_progress',
  })
  const a = inProgressReply(s, null, { respondAsync: true, wait: null }, 'k 1')
  assert.deepEqual([a.status, a.headers, JSON.parse(a.body.toString()).code], [202, [['content-type', 'application/problem+json'], ['retry-after', '1'], ['location', '/keys/k%201']], 'request_in_progress'])
  assert.equal(inProgressReply(settings(base), null, { respondAsync: true, wait: null }, 'k').headers.length, 2) // no statusUrl: no Location
})

test('the wait schedule: nothing without Prefer: wait, else until N seconds', async () => {
  const none = new Poll(null)
  assert.deepEqual([none.serverWait(), await none.pause()], [undefined, false])
  const one = new Poll(1)
  const w = one.serverWait()
  assert.ok(w !== undefined && w > 900 && w <= 1000, String(w))
  const t0 = Date.now()
  assert.equal(await one.pause(), true)
  assert.equal(await one.pause(), true)
  const slept = Date.now() - t0
  assert.ok(slept >= 70 && slept < 400, String(slept)) // 25 ms, then 50 ms
})
