// The Express integration over real HTTP on loopback, on a small app of the test's own.

import assert from 'node:assert/strict'
import type { AddressInfo } from 'node:net'
import type { Server } from 'node:http'
import { after, before, test } from 'node:test'

import express from 'express'
import pg from 'pg'

import { check, claim, http, transaction } from '../src/index'
import { oneTransaction, phased, problemReply, type Options } from '../src/express'
import { clientConfig, dropDatabase, newScope, setupDatabase } from './helpers'

let pool: pg.Pool
let server: Server
let base: string
const PORT = Number(process.env.IDEM_TEST_HTTP_PORT ?? 18110)

before(async () => {
  await setupDatabase()
  pool = new pg.Pool({ ...clientConfig(), max: 8 } as pg.PoolConfig)
  await pool.query('CREATE TABLE notes (id text PRIMARY KEY, note text)')
  const o: Options = {
    pool,
    replay: async (_req, client, begin) => {
      const r = await client.query('SELECT note FROM notes WHERE id = $1', [begin.resource])
      return { status: 200, body: { note: r.rows[0]?.note ?? null } }
    },
    validate: (body) => {
      if (!body || typeof body !== 'object' || Array.isArray(body) || typeof body.note !== 'string') {
        throw new http.Problem(400, 'invalid_request', '"note" must be a string')
      }
    },
  }
  const app = express()
  app.post(
    '/notes',
    oneTransaction(o, async (work) => {
      const note = (work.body as { note: string }).note
      if (note === 'missing') throw new http.Problem(404, 'not_found', 'nothing to attach to')
      if (note === 'refuse') {
        const p = new http.Problem(409, 'refund_exceeds_payment', 'too much')
        work.tx.fail({ error: p.body(), httpStatus: 409, retryable: false })
        return problemReply(p)
      }
      const id = `${work.tenant}/${work.key}`
      await work.client.query('INSERT INTO notes VALUES ($1, $2)', [id, note])
      work.tx.complete({ resource: id, httpStatus: 201 })
      return { status: 201, body: { note } }
    }),
  )
  app.post(
    '/phased',
    phased(o, async (work) => {
      const id = `${work.tenant}/${work.key}`
      const note = (work.body as { note: string }).note
      await work.claim.checkpoint('outside', { done: true })
      await work.claim.finish(async (f) => {
        f.query('INSERT INTO notes VALUES ($1, $2)', [id, note])
        f.complete({ resource: id, httpStatus: 201 })
      })
      return { status: 201, body: { note } }
    }),
  )
  await new Promise<void>((resolve) => {
    server = app.listen(PORT, '127.0.0.1', () => resolve())
  })
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

after(async () => {
  await new Promise((r) => server.close(r))
  await pool.end()
  await dropDatabase()
})

function h(tenant: string, key?: string, extra: Record<string, string> = {}): Record<string, string> {
  return { Authorization: `Bearer ${tenant}`, 'Content-Type': 'application/json', ...(key !== undefined ? { 'Idempotency-Key': key } : {}), ...extra }
}

async function post(path: string, body: unknown, headers: Record<string, string>) {
  const r = await fetch(base + path, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) })
  const text = await r.text()
  return { status: r.status, headers: r.headers, json: text ? JSON.parse(text) : null }
}

const tenantOf = (scope: string) => scope.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 60)

for (const path of ['/notes', '/phased']) {
  test(`${path}: created, replayed, reused`, async () => {
    const t = tenantOf(newScope())
    let r = await post(path, { note: 'hello' }, h(t, '"k-1"'))
    assert.deepEqual([r.status, r.json, r.headers.get('idempotent-replayed')], [201, { note: 'hello' }, null])
    r = await post(path, { note: 'hello' }, h(t, 'k-1'))
    assert.deepEqual([r.status, r.json, r.headers.get('idempotent-replayed')], [201, { note: 'hello' }, 'true'])
    r = await post(path, { note: 'other' }, h(t, 'k-1'))
    assert.deepEqual([r.status, r.headers.get('content-type'), r.json.code], [422, 'application/problem+json; charset=utf-8', 'idempotency_key_reused'])
    r = await post(path === '/notes' ? '/phased' : '/notes', { note: 'hello' }, h(t, 'k-1'))
    assert.deepEqual([r.status, r.json.code], [422, 'idempotency_key_reused'])
    r = await post(path, { note: 'hello' }, h(t + 'x', 'k-1'))
    assert.deepEqual([r.status, r.headers.get('idempotent-replayed')], [201, null]) // another tenant: another record
  })
}

test('request errors store nothing', async () => {
  const t = tenantOf(newScope())
  let r = await post('/notes', { note: 'x' }, { 'Idempotency-Key': 'k' })
  assert.deepEqual([r.status, r.json.code, r.headers.get('www-authenticate')], [401, 'unauthorized', 'Bearer'])
  r = await post('/notes', { note: 'x' }, h(t))
  assert.deepEqual([r.status, r.json.code], [400, 'idempotency_key_missing'])
  r = await post('/notes', { note: 'x' }, h(t, '"bad'))
  assert.deepEqual([r.status, r.json.code], [400, 'idempotency_key_invalid'])
  r = await post('/notes', { note: 5 }, h(t, 'v'))
  assert.deepEqual([r.status, r.json.code], [400, 'invalid_request'])
  r = await post('/notes', '{not json', h(t, 'v'))
  assert.deepEqual([r.status, r.json.code], [400, 'invalid_request'])
  r = await post('/notes', { note: 'missing' }, h(t, 'm'))
  assert.deepEqual([r.status, r.json.code], [404, 'not_found'])
  const c = await pool.connect()
  try {
    assert.equal((await check(c, t, 'v')).state, 'absent')
    assert.equal((await check(c, t, 'm')).state, 'absent')
  } finally {
    c.release()
  }
})

test('a stored failure replays', async () => {
  const t = tenantOf(newScope())
  let r = await post('/notes', { note: 'refuse' }, h(t, 'f'))
  assert.deepEqual([r.status, r.json.code, r.headers.get('idempotent-replayed')], [409, 'refund_exceeds_payment', null])
  r = await post('/notes', { note: 'refuse' }, h(t, 'f'))
  assert.deepEqual([r.status, r.json.code, r.headers.get('idempotent-replayed')], [409, 'refund_exceeds_payment', 'true'])
})

test('a held key is 409 with Retry-After, or 202', async () => {
  const t = tenantOf(newScope())
  const cmd = { method: 'POST', path: '/notes', body: { note: 'x' } }
  const holder = await pool.connect()
  try {
    await claim(holder, { scope: t, key: 'held', command: cmd }) // committed, default lease (1 minute)
    let r = await post('/notes', { note: 'x' }, h(t, 'held'))
    assert.deepEqual([r.status, r.json.code], [409, 'request_in_progress'])
    const retry = Number(r.headers.get('retry-after'))
    assert.ok(retry >= 50 && retry <= 60, String(retry))
    r = await post('/notes', { note: 'x' }, h(t, 'held', { Prefer: 'respond-async' }))
    assert.deepEqual([r.status, r.headers.get('location')], [202, '/v1/idempotency-keys/held'])
    let release!: () => void
    const released = new Promise<void>((res) => (release = res))
    let entered!: () => void
    const isEntered = new Promise<void>((res) => (entered = res))
    const open = transaction(holder, { scope: t, key: 'open', command: cmd }, async () => {
      entered()
      await released
      throw new Error('abandon')
    }).catch(() => undefined)
    await isEntered
    r = await post('/notes', { note: 'x' }, h(t, 'open'))
    assert.deepEqual([r.status, r.headers.get('retry-after')], [409, '1']) // an uncommitted holder: no lease yet
    release()
    await open
  } finally {
    holder.release()
  }
})
