// The drop-in middleware of Express and Hono over real HTTP on loopback, against the scratch
// database: the same small app on both (IDEM_TEST_HTTP_PORT + 1 and + 2), the same tests.

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import type { Server } from 'node:http'
import net from 'node:net'
import { after, before, test } from 'node:test'

import { serve } from '@hono/node-server'
import express from 'express'
import { Hono, type Context } from 'hono'
import { stream } from 'hono/streaming'
import pg from 'pg'

import { check } from '../src/index'
import { idempotency as expressLayer } from '../src/express'
import { idempotency as honoLayer } from '../src/hono'
import type { Info, LayerOptions, Mode } from '../src/layer'
import { clientConfig, dropDatabase, setupDatabase } from './helpers'

const HTTP_PORT = Number(process.env.IDEM_TEST_HTTP_PORT ?? 18110)

let pool: pg.Pool
let lowered: pg.Pool // idempotency.max_response_size lowered to 1 kB: the extension refuses a 2 kB response
let tight: pg.Pool // one connection, which a test holds to keep the layer waiting while it claims
const servers: Server[] = []
const bases: Record<string, string> = {}
const runs: Record<string, number> = { express: 0, hono: 0 }
const routed: Record<string, number> = { express: 0, hono: 0 } // the /tolerant route's runs

// The /slow route waits until the test opens the gate of its key.
const gates = new Map<string, () => void>()
const entered = new Map<string, () => void>()
function gate(key: string): Promise<void> {
  entered.get(key)?.()
  return new Promise((r) => gates.set(key, r))
}
function whenEntered(key: string): Promise<void> {
  return new Promise((r) => entered.set(key, r))
}

const bigBody = 'y'.repeat(2048)
const expired = new Set<string>()

/** The app's behaviour, written once: what each route answers, given the layer's info. */
const routes = {
  echo: (info: Info | undefined) => ({ status: 201, headers: { 'X-Attempt': String(info?.attempt) } }),
  flaky: (info: Info) => (info.attempt === 1 ? { status: 503, body: 'try again' } : { status: 201, body: `ok:${info.attempt}` }),
  /** The first attempt outlives its 200 ms lease. */
  outlives: async (info: Info) => {
    if (info.attempt === 1) await new Promise((r) => setTimeout(r, 700))
    return { status: 201, body: `attempt:${info.attempt}` }
  },
  /** Evicts its own key while it runs (phased: the claim is committed). */
  evict: async (info: Info) => {
    assert.equal((await pool.query('SELECT idem_forget($1, $2) AS gone', [info.scope, info.key])).rows[0].gone, true)
  },
  /** Writes a row through the layer's connection; the first time for a key, then outlives the key's 1 s ttl. */
  expires: async (info: Info) => {
    await info.client!.query('INSERT INTO layer_notes VALUES ($1, $2)', [info.scope, info.key])
    if (expired.has(`${info.scope}/${info.key}`)) return
    expired.add(`${info.scope}/${info.key}`)
    await new Promise((r) => setTimeout(r, 1500))
  },
}

function options<Req>(tenant: (r: Req) => string | undefined, extra: Partial<LayerOptions<Req>> = {}): LayerOptions<Req> {
  return { pool, tenant, statusUrl: (k) => `/keys/${k}`, replayHeaders: ['x-attempt'], ...extra }
}

function modeOf(query: string | undefined): Mode {
  return query === 'transaction' ? 'transaction' : 'phased'
}

function expressApp(): express.Express {
  const app = express()
  const tenant = (r: express.Request) => r.get('x-tenant')
  const layer = expressLayer(options(tenant))
  app.use((req, _res, next) => {
    if (req.method !== 'GET') runs.express++
    next()
  })
  app.post('/echo', layer, express.raw({ type: () => true }), (req, res) => {
    const r = routes.echo(req.idempotency)
    res.status(r.status).set(r.headers).type(req.get('content-type') ?? 'application/octet-stream')
    res.send(Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0))
  })
  app.get('/echo', layer, (req, res) => {
    res.json({ info: req.idempotency ?? null })
  })
  app.post('/json', layer, express.json(), (req, res) => {
    res.status(201).json({ doubled: req.body.n * 2 })
  })
  app.post('/optional', expressLayer(options(tenant, { required: false })), (req, res) => {
    res.status(201).json({ info: req.idempotency ?? null })
  })
  app.post('/flaky', layer, (req, res) => {
    const r = routes.flaky(req.idempotency!)
    res.status(r.status).type('text/plain').send(r.body)
  })
  app.post('/throw', layer, () => {
    throw new Error('the route raised')
  })
  app.post('/stream', layer, async (req, res) => {
    res.status(200).type('text/plain')
    res.write(`attempt:${req.idempotency!.attempt}\n`)
    await new Promise((r) => setTimeout(r, 20))
    res.end('end\n')
  })
  app.post('/slow', layer, async (req, res) => {
    await gate(req.idempotency!.key)
    res.status(201).type('text/plain').send('slow')
  })
  app.post('/lease', expressLayer(options(tenant, { lease: 200 })), async (req, res) => {
    const r = await routes.outlives(req.idempotency!)
    res.status(r.status).type('text/plain').send(r.body)
  })
  app.post('/tx', expressLayer(options(tenant, { mode: 'transaction' })), async (req, res) => {
    const info = req.idempotency!
    await info.client!.query('INSERT INTO layer_notes VALUES ($1, $2)', [info.scope, info.key])
    res.status(Number(req.query.status ?? 201)).json({ mode: info.mode, attempt: info.attempt })
  })
  app.post('/evict', layer, async (req, res) => {
    await routes.evict(req.idempotency!)
    res.status(201).type('text/plain').send('evicted')
  })
  app.post('/tx-expires', expressLayer(options(tenant, { mode: 'transaction', ttl: 1000 })), async (req, res) => {
    await routes.expires(req.idempotency!)
    res.status(201).type('text/plain').send('written')
  })
  app.post('/small', expressLayer(options(tenant, { maxStoredBody: 4 })), (_req, res) => {
    res.status(200).type('text/plain').send('0123456789')
  })
  app.post('/limit', expressLayer(options(tenant, { maxBodyBytes: 8 })), (_req, res) => {
    res.status(201).end()
  })
  app.post('/refused', expressLayer(options(tenant, { pool: lowered, mode: (r) => modeOf(r.query.mode as string) })), (_req, res) => {
    res.status(201).type('text/plain').send(bigBody)
  })
  // Tolerates a missing body (req.body undefined): it must never run on a request whose body was lost.
  app.post('/tolerant', expressLayer(options(tenant, { pool: tight, mode: (r) => modeOf(r.query.mode as string) })), express.json(), (req, res) => {
    routed.express++
    res.status(201).json({ n: req.body?.n ?? null, attempt: req.idempotency!.attempt })
  })
  app.post('/parsed-first', express.json(), layer, (_req, res) => {
    res.status(201).end()
  })
  app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(500).type('text/plain').send(`internal error: ${err.message}`)
  })
  return app
}

function honoApp(): Hono {
  const app = new Hono()
  const tenant = (c: Context) => c.req.header('x-tenant')
  const layer = honoLayer(options(tenant))
  app.use('*', async (c, next) => {
    if (c.req.method !== 'GET') runs.hono++
    await next()
  })
  app.post('/echo', layer, async (c) => {
    const r = routes.echo(c.get('idempotency'))
    return c.body(await c.req.arrayBuffer(), r.status as 201, { ...r.headers, 'Content-Type': c.req.header('content-type') ?? 'application/octet-stream' })
  })
  app.get('/echo', layer, (c) => c.json({ info: c.get('idempotency') ?? null }))
  app.post('/json', layer, async (c) => c.json({ doubled: (await c.req.json()).n * 2 }, 201))
  app.post('/optional', honoLayer(options(tenant, { required: false })), (c) => c.json({ info: c.get('idempotency') ?? null }, 201))
  app.post('/flaky', layer, (c) => {
    const r = routes.flaky(c.get('idempotency'))
    return c.body(r.body, r.status as 201, { 'Content-Type': 'text/plain' })
  })
  app.post('/throw', layer, () => {
    throw new Error('the route raised')
  })
  app.post('/stream', layer, (c) => {
    c.header('Content-Type', 'text/plain')
    return stream(c, async (s) => {
      await s.write(`attempt:${c.get('idempotency').attempt}\n`)
      await s.sleep(20)
      await s.write('end\n')
    })
  })
  app.post('/slow', layer, async (c) => {
    await gate(c.get('idempotency').key)
    return c.text('slow', 201)
  })
  app.post('/lease', honoLayer(options(tenant, { lease: 200 })), async (c) => {
    const r = await routes.outlives(c.get('idempotency'))
    return c.text(r.body, r.status as 201)
  })
  app.post('/tx', honoLayer(options(tenant, { mode: 'transaction' })), async (c) => {
    const info = c.get('idempotency')
    await info.client!.query('INSERT INTO layer_notes VALUES ($1, $2)', [info.scope, info.key])
    return c.json({ mode: info.mode, attempt: info.attempt }, Number(c.req.query('status') ?? 201) as 201)
  })
  app.post('/evict', layer, async (c) => {
    await routes.evict(c.get('idempotency'))
    return c.text('evicted', 201)
  })
  app.post('/tx-expires', honoLayer(options(tenant, { mode: 'transaction', ttl: 1000 })), async (c) => {
    await routes.expires(c.get('idempotency'))
    return c.text('written', 201)
  })
  app.post('/small', honoLayer(options(tenant, { maxStoredBody: 4 })), (c) => c.text('0123456789'))
  app.post('/limit', honoLayer(options(tenant, { maxBodyBytes: 8 })), (c) => c.body(null, 201))
  app.post('/refused', honoLayer(options(tenant, { pool: lowered, mode: (c) => modeOf(c.req.query('mode')) })), (c) => c.text(bigBody, 201))
  app.post('/tolerant', honoLayer(options(tenant, { pool: tight, mode: (c) => modeOf(c.req.query('mode')) })), async (c) => {
    routed.hono++
    const body = await c.req.json().catch(() => undefined)
    return c.json({ n: body?.n ?? null, attempt: c.get('idempotency').attempt }, 201)
  })
  app.onError((_err, c) => c.text('internal error', 500))
  return app
}

before(async () => {
  await setupDatabase()
  pool = new pg.Pool({ ...clientConfig(), max: 8 } as pg.PoolConfig)
  lowered = new pg.Pool({ ...clientConfig(), max: 2, options: '-c idempotency.max_response_size=1kB' } as pg.PoolConfig)
  tight = new pg.Pool({ ...clientConfig(), max: 1 } as pg.PoolConfig)
  await pool.query('CREATE TABLE layer_notes (scope text, key text)')
  await new Promise<void>((resolve) => {
    servers.push(expressApp().listen(HTTP_PORT + 1, '127.0.0.1', () => resolve()))
  })
  await new Promise<void>((resolve) => {
    servers.push(serve({ fetch: honoApp().fetch, port: HTTP_PORT + 2, hostname: '127.0.0.1' }, () => resolve()) as Server)
  })
  bases.express = `http://127.0.0.1:${HTTP_PORT + 1}`
  bases.hono = `http://127.0.0.1:${HTTP_PORT + 2}`
})

after(async () => {
  for (const s of servers) await new Promise((r) => s.close(r))
  await pool.end()
  await lowered.end()
  await tight.end()
  await dropDatabase()
})

interface Answer {
  status: number
  headers: Headers
  text: string
}

async function call(base: string, path: string, o: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const r = await fetch(base + path, { method: o.method ?? 'POST', headers: o.headers, body: o.body })
  return { status: r.status, headers: r.headers, text: await r.text() }
}

const tenantName = () => `t${randomUUID().replace(/-/g, '')}`

/** The record's first use as RFC 3339 in UTC, formatted by the server (to compare the 422's first_used_at with). */
async function firstUsed(scope: string, key: string): Promise<string> {
  const sql = `SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS t FROM idem_check($1, $2)`
  return (await pool.query(sql, [scope, key])).rows[0].t
}

async function state(scope: string, key: string): Promise<string> {
  return (await check(pool as unknown as pg.ClientBase, scope, key)).state
}

for (const fw of ['express', 'hono'] as const) {
  const t = (name: string, fn: (base: string, tenant: string) => Promise<void>) => test(`${fw}: ${name}`, () => fn(bases[fw], tenantName()))
  const h = (tenant: string, key?: string, extra: Record<string, string> = {}) => ({ 'x-tenant': tenant, ...(key !== undefined ? { 'Idempotency-Key': key } : {}), ...extra })

  t('executes once, replays the status, headers and bytes; another body is 422 and leaves the first', async (base, tenant) => {
    const before = runs[fw]
    const json = { 'content-type': 'application/json' }
    const first = await call(base, '/echo?a=1', { headers: h(tenant, 'k1', json), body: '{"b": 1.0, "a": [1]}' })
    assert.deepEqual([first.status, first.text, first.headers.get('x-attempt'), first.headers.get('idempotent-replayed')], [201, '{"b": 1.0, "a": [1]}', '1', null])
    // Member order, whitespace and number spelling are not part of the command; the sf-string spelling names the same key.
    const again = await call(base, '/echo?a=1', { headers: h(tenant, '"k1"', json), body: '{"a":[1],"b":1}' })
    assert.deepEqual([again.status, again.text, again.headers.get('x-attempt'), again.headers.get('idempotent-replayed')], [201, '{"b": 1.0, "a": [1]}', '1', 'true'])
    assert.match(again.headers.get('content-type') ?? '', /^application\/json/)
    for (const [path, body] of [['/echo?a=2', '{"a":[1],"b":1}'], ['/echo?a=1', '{"a":[1],"b":2}'], ['/json', '{"a":[1],"b":1}']]) {
      const reused = await call(base, path, { headers: h(tenant, 'k1', json), body })
      const doc = JSON.parse(reused.text)
      assert.deepEqual([reused.status, reused.headers.get('content-type'), doc.code, doc.status], [422, 'application/problem+json', 'idempotency_key_reused', 422])
      assert.equal(doc.first_used_at, await firstUsed(tenant, 'k1')) // the record's created_at, to the microsecond
    }
    const still = await call(base, '/echo?a=1', { headers: h(tenant, 'k1', json), body: '{"a":[1],"b":1}' })
    assert.deepEqual([still.status, still.headers.get('idempotent-replayed')], [201, 'true'])
    assert.equal(runs[fw] - before, 6) // the route ran once: the other five requests were answered by the layer
    const other = await call(base, '/echo?a=1', { headers: h(tenant + 'x', 'k1', json), body: '{"a":[1],"b":1}' })
    assert.deepEqual([other.status, other.headers.get('idempotent-replayed')], [201, null]) // another tenant's key
  })

  t('the body is given back to the parsers after the layer', async (base, tenant) => {
    const r = await call(base, '/json', { headers: h(tenant, 'j1', { 'content-type': 'application/json' }), body: '{"n": 21}' })
    assert.deepEqual([r.status, JSON.parse(r.text)], [201, { doubled: 42 }])
  })

  t('the layer\'s refusals: no key, a bad key, no tenant, a body over maxBodyBytes; other methods untouched', async (base, tenant) => {
    const missing = await call(base, '/echo', { headers: h(tenant) })
    assert.deepEqual([missing.status, missing.headers.get('content-type'), JSON.parse(missing.text).code], [400, 'application/problem+json', 'idempotency_key_missing'])
    const bad = await call(base, '/echo', { headers: h(tenant, '"unterminated') })
    assert.deepEqual([bad.status, JSON.parse(bad.text).code], [400, 'idempotency_key_invalid'])
    const anonymous = await call(base, '/echo', { headers: { 'Idempotency-Key': 'a1' } })
    assert.deepEqual([anonymous.status, JSON.parse(anonymous.text).code], [401, 'unauthorized'])
    const large = await call(base, '/limit', { headers: h(tenant, 'big'), body: '123456789' })
    assert.deepEqual([large.status, JSON.parse(large.text).code], [413, 'payload_too_large'])
    const fits = await call(base, '/limit', { headers: h(tenant, 'big'), body: '12345678' })
    assert.equal(fits.status, 201) // nothing was claimed by the 413
    const get = await call(base, '/echo', { method: 'GET', headers: h(tenant, '"not valid') })
    assert.deepEqual([get.status, JSON.parse(get.text)], [200, { info: null }])
    const optional = await call(base, '/optional', { headers: h(tenant) })
    assert.deepEqual([optional.status, JSON.parse(optional.text)], [201, { info: null }])
    const keyed = await call(base, '/optional', { headers: h(tenant, 'o1') })
    assert.deepEqual(JSON.parse(keyed.text), { info: { key: 'o1', scope: tenant, attempt: 1, mode: 'phased' } })
  })

  t('5xx, an exception and a stream release the key: the next request executes again', async (base, tenant) => {
    const f1 = await call(base, '/flaky', { headers: h(tenant, 'f') })
    const f2 = await call(base, '/flaky', { headers: h(tenant, 'f') })
    const f3 = await call(base, '/flaky', { headers: h(tenant, 'f') })
    assert.deepEqual([f1.status, f1.text, f2.status, f2.text, f3.status, f3.text, f3.headers.get('idempotent-replayed')], [503, 'try again', 201, 'ok:2', 201, 'ok:2', 'true'])
    const x1 = await call(base, '/throw', { headers: h(tenant, 'x') })
    assert.deepEqual([x1.status, await state(tenant, 'x')], [500, 'failed'])
    const x2 = await call(base, '/throw', { headers: h(tenant, 'x') })
    assert.equal(x2.status, 500)
    assert.equal((await check(pool as unknown as pg.ClientBase, tenant, 'x')).attempt, 2)
    const s1 = await call(base, '/stream', { headers: h(tenant, 's') })
    assert.deepEqual([s1.status, s1.text, s1.headers.get('content-length')], [200, 'attempt:1\nend\n', null])
    // The key is released once the stream has ended (after the client has read the end).
    for (let i = 0; i < 50 && (await state(tenant, 's')) !== 'failed'; i++) await new Promise((r) => setTimeout(r, 10))
    assert.equal(await state(tenant, 's'), 'failed')
    const s2 = await call(base, '/stream', { headers: h(tenant, 's') })
    assert.deepEqual([s2.status, s2.text], [200, 'attempt:2\nend\n'])
  })

  if (fw === 'express') {
    t('a body parser before the layer is an error: the layer has no bytes to fingerprint', async (base, tenant) => {
      const before = runs.express
      const r = await call(base, '/parsed-first', { headers: h(tenant, 'p', { 'content-type': 'application/json' }), body: '{}' })
      assert.deepEqual([r.status, r.text], [500, 'internal error: the request body was read before the idempotency middleware: put it before the body parsers'])
      assert.deepEqual([runs.express - before, await state(tenant, 'p')], [1, 'absent'])
    })
  }

  t('a body over maxStoredBody is sent whole, replayed empty with Idempotent-Replay-Body', async (base, tenant) => {
    const first = await call(base, '/small', { headers: h(tenant, 'b') })
    const replay = await call(base, '/small', { headers: h(tenant, 'b') })
    assert.deepEqual([first.status, first.text, replay.status, replay.text, replay.headers.get('idempotent-replay-body')], [200, '0123456789', 200, '', 'omitted'])
    assert.match(replay.headers.get('content-type') ?? '', /^text\/plain/)
  })

  for (const mode of ['phased', 'transaction']) {
    t(`${mode}: a response the extension refuses as too large is stored omitted`, async (base, tenant) => {
      const first = await call(base, `/refused?mode=${mode}`, { headers: h(tenant, 'r') })
      const replay = await call(base, `/refused?mode=${mode}`, { headers: h(tenant, 'r') })
      assert.deepEqual([first.status, first.text.length, replay.status, replay.text, replay.headers.get('idempotent-replay-body')], [201, 2048, 201, '', 'omitted'])
    })
  }

  t('transaction mode: the route writes on the layer\'s connection; committed with the key, or rolled back', async (base, tenant) => {
    const rows = async (key: string) => (await pool.query('SELECT count(*)::int AS n FROM layer_notes WHERE scope = $1 AND key = $2', [tenant, key])).rows[0].n
    const ok = await call(base, '/tx', { headers: h(tenant, 'c') })
    assert.deepEqual([ok.status, JSON.parse(ok.text), await rows('c'), await state(tenant, 'c')], [201, { mode: 'transaction', attempt: 1 }, 1, 'completed'])
    const replay = await call(base, '/tx', { headers: h(tenant, 'c') })
    assert.deepEqual([replay.status, replay.headers.get('idempotent-replayed'), await rows('c')], [201, 'true', 1])
    // Another command (the query is part of it): 422, its first use read after the layer's ROLLBACK.
    const reused = await call(base, '/tx?status=200', { headers: h(tenant, 'c') })
    const doc = JSON.parse(reused.text)
    assert.deepEqual([reused.status, doc.code, doc.first_used_at, await rows('c')], [422, 'idempotency_key_reused', await firstUsed(tenant, 'c'), 1])
    const no = await call(base, '/tx?status=409', { headers: h(tenant, 'n') })
    assert.deepEqual([no.status, await rows('n'), await state(tenant, 'n')], [409, 1, 'completed']) // a 4xx is an answer: stored
    const down = await call(base, '/tx?status=500', { headers: h(tenant, 'd') })
    assert.deepEqual([down.status, await rows('d'), await state(tenant, 'd')], [500, 0, 'absent'])
    const busy = await call(base, '/tx?status=429', { headers: h(tenant, 'd') })
    assert.deepEqual([busy.status, JSON.parse(busy.text).attempt, await rows('d'), await state(tenant, 'd')], [429, 1, 0, 'absent'])
  })

  t('a key gone when the outcome is stored (IK002): phased sends the route\'s response unstored; transaction mode rolls back, 503', async (base, tenant) => {
    const rows = async (key: string) => (await pool.query('SELECT count(*)::int AS n FROM layer_notes WHERE scope = $1 AND key = $2', [tenant, key])).rows[0].n
    for (let i = 0; i < 2; i++) {
      // Phased, evicted with idem_forget while the route ran.
      const e = await call(base, '/evict', { headers: h(tenant, 'ev') })
      assert.deepEqual([e.status, e.text, e.headers.get('idempotent-replayed'), await state(tenant, 'ev')], [201, 'evicted', null, 'absent'])
    }
    // Transaction mode, the ttl run out during the transaction: nothing happened (the row is
    // rolled back with the claim), 503 with Retry-After: 1; the retry executes and is stored.
    const x = await call(base, '/tx-expires', { headers: h(tenant, 'ex') })
    assert.deepEqual(
      [x.status, x.headers.get('retry-after'), x.headers.get('content-type'), JSON.parse(x.text).code, await rows('ex'), await state(tenant, 'ex')],
      [503, '1', 'application/problem+json', 'service_unavailable', 0, 'absent'],
    )
    const retry = await call(base, '/tx-expires', { headers: h(tenant, 'ex') })
    assert.deepEqual([retry.status, retry.text, retry.headers.get('idempotent-replayed'), await rows('ex'), await state(tenant, 'ex')], [201, 'written', null, 1, 'completed'])
    const replay = await call(base, '/tx-expires', { headers: h(tenant, 'ex') })
    assert.deepEqual([replay.status, replay.text, replay.headers.get('idempotent-replayed'), await rows('ex')], [201, 'written', 'true', 1])
  })

  for (const [mode, how] of [['phased', 'destroy'], ['transaction', 'destroy'], ['phased', 'end'], ['transaction', 'end']] as const) {
    // destroy: the socket closed; end: the client's side only (a FIN), which is enough for the
    // body parsers to take the request for finished and parse nothing.
    t(`${mode}: a client gone while the key is claimed (${how}): the route never runs, the key is free`, async (base, tenant) => {
      const before = routed[fw]
      const held = await tight.connect() // the layer waits for the pool's one connection
      const url = new URL(base)
      const body = '{"n": 7}'
      const socket = net.connect(Number(url.port), url.hostname)
      await new Promise((r) => socket.once('connect', r))
      socket.write(
        `POST /tolerant?mode=${mode} HTTP/1.1\r\nHost: ${url.host}\r\nx-tenant: ${tenant}\r\nIdempotency-Key: gone\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      )
      for (let i = 0; i < 200 && tight.waitingCount === 0; i++) await new Promise((r) => setTimeout(r, 10))
      assert.equal(tight.waitingCount, 1) // the request has been read, and the layer is claiming
      if (how === 'destroy') {
        const closed = new Promise((r) => socket.once('close', r))
        socket.destroy()
        await closed
      } else {
        socket.on('data', () => undefined) // whatever the server still sends is dropped
        socket.end()
      }
      await new Promise((r) => setTimeout(r, 100)) // the server sees the close
      held.release()
      // Phased: the claim is released as a retryable failure; transaction mode: rolled back.
      const released = mode === 'phased' ? 'failed' : 'absent'
      for (let i = 0; i < 100 && (tight.waitingCount > 0 || tight.idleCount === 0 || (await state(tenant, 'gone')) !== released); i++) {
        await new Promise((r) => setTimeout(r, 10))
      }
      assert.deepEqual([routed[fw] - before, await state(tenant, 'gone')], [0, released])
      const retry = await call(base, `/tolerant?mode=${mode}`, { headers: h(tenant, 'gone', { 'content-type': 'application/json' }), body })
      assert.deepEqual([retry.status, JSON.parse(retry.text), routed[fw] - before], [201, { n: 7, attempt: mode === 'phased' ? 2 : 1 }, 1])
      socket.destroy()
    })
  }

  t('phased: a route slower than its lease loses the key to a retry, whose outcome is stored', async (base, tenant) => {
    const slow = call(base, '/lease', { headers: h(tenant, 'l') })
    await new Promise((r) => setTimeout(r, 400))
    const taker = await call(base, '/lease', { headers: h(tenant, 'l') })
    const stale = await slow
    const replay = await call(base, '/lease', { headers: h(tenant, 'l') })
    assert.deepEqual([taker.status, taker.text, taker.headers.get('idempotent-replayed')], [201, 'attempt:2', null])
    assert.deepEqual([stale.status, stale.headers.get('retry-after'), JSON.parse(stale.text).code], [409, '1', 'request_in_progress'])
    assert.deepEqual([replay.status, replay.text, replay.headers.get('idempotent-replayed')], [201, 'attempt:2', 'true'])
  })

  t('a held key: 409 with Retry-After, 202 with Location, Prefer: wait answers the holder\'s outcome', async (base, tenant) => {
    const inside = whenEntered('w')
    const holder = call(base, '/slow', { headers: h(tenant, 'w') })
    await inside
    const busy = await call(base, '/slow', { headers: h(tenant, 'w') })
    const retry = Number(busy.headers.get('retry-after'))
    assert.deepEqual([busy.status, busy.headers.get('content-type'), JSON.parse(busy.text).code], [409, 'application/problem+json', 'request_in_progress'])
    assert.ok(retry >= 50 && retry <= 60, String(retry)) // the database's default lease, 1 minute
    const async = await call(base, '/slow', { headers: h(tenant, 'w', { Prefer: 'respond-async' }) })
    assert.deepEqual([async.status, async.headers.get('location'), JSON.parse(async.text).code], [202, '/keys/w', 'request_in_progress'])
    const waiter = call(base, '/slow', { headers: h(tenant, 'w', { Prefer: 'wait=5' }) })
    await new Promise((r) => setTimeout(r, 100))
    gates.get('w')!()
    const [held, waited] = await Promise.all([holder, waiter])
    assert.deepEqual([held.status, held.text, held.headers.get('idempotent-replayed')], [201, 'slow', null])
    assert.deepEqual([waited.status, waited.text, waited.headers.get('idempotent-replayed')], [201, 'slow', 'true'])
  })
}
