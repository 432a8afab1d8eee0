// The Express app of `make bench-http-layers` (bench/http/layers/run.sh): one route,
// `POST /orders`, that inserts one row and answers 201, in one of four variants:
//
//   a  no idempotency: the insert through the app's pool (autocommit)
//   b  our middleware in the route's transaction (mode 'transaction'): the insert through
//      req.idempotency.client, inside the layer's BEGIN .. idem_begin .. idem_complete COMMIT
//      (three round trips: BEGIN + idem_begin, the insert, idem_complete + COMMIT)
//   c  our middleware phased: idem_begin commits the claim, the insert through the app's pool,
//      the outcome stored in a second transaction
//   d  express-idempotency on its Redis adapter, the insert through the app's pool
//   e  the floor of (b), not in the default run: no layer, but (b)'s statements on one pooled
//      connection with a trivial SELECT of the same arguments in place of idem_begin and of
//      idem_complete (BEGIN + SELECT, the insert, SELECT + COMMIT; what goes together in one
//      socket write, as the layer sends it), so that (b) - (e)
//      is what the extension's functions and the layer's JavaScript cost beyond the round trips
//
//   node app.js VARIANT PORT
//
// Environment: DATABASE_HOST (the socket directory), DATABASE_PORT, DATABASE_NAME, POOL_SIZE
// (the pg pool of every variant), REDIS_URL (d), CLIENT_EXPRESS (the compiled
// `@idempotency/client/express` module, b and c). Every variant reads the same headers: the
// tenant from X-Tenant, the key from Idempotency-Key, a JSON body.
'use strict'

const express = require('express')
const pg = require('pg')

const [variant, port] = process.argv.slice(2)
if (!['a', 'b', 'c', 'd', 'e'].includes(variant) || !port) {
  console.error('usage: node app.js a|b|c|d|e PORT')
  process.exit(2)
}

// The same pool for every variant; pipeline mode lets our client send a transaction's
// statements in one round trip (an ordinary query is sent as usual).
const pool = new pg.Pool({
  host: process.env.DATABASE_HOST,
  port: Number(process.env.DATABASE_PORT),
  database: process.env.DATABASE_NAME || 'bench',
  user: 'postgres',
  max: Number(process.env.POOL_SIZE || 16),
  pipeline: true,
})
pool.on('error', (e) => console.error('pool error', e))

const INSERT = 'INSERT INTO orders (tenant, body) VALUES ($1, $2) RETURNING id'
const tenantOf = (req) => req.get('x-tenant') || null

const app = express()
app.disable('x-powered-by')
app.disable('etag')

app.get('/healthz', async (_req, res) => {
  await pool.query('SELECT 1')
  res.status(200).send('ok')
})

// The statements that send() issues reach the socket in one write (node-postgres writes each
// on its own unless the socket is corked around them).
function together(client, send) {
  const stream = client.connection.stream
  stream.cork()
  try {
    return send()
  } finally {
    stream.uncork()
  }
}

function fail(res, e) {
  console.error(e)
  if (!res.headersSent) res.status(500).json({ error: String(e && e.message) })
}

async function start() {
  if (variant === 'a') {
    app.post('/orders', express.json(), async (req, res) => {
      try {
        const { rows } = await pool.query(INSERT, [tenantOf(req), req.body])
        res.status(201).json({ id: rows[0].id })
      } catch (e) {
        fail(res, e)
      }
    })
  } else if (variant === 'e') {
    app.post('/orders', express.json(), async (req, res) => {
      let client
      try {
        client = await pool.connect()
        const key = req.get('idempotency-key')
        const raw = JSON.stringify(req.body)
        // Sent together on the pipelined connection in one write, as the layer sends BEGIN and
        // idem_begin, and idem_complete and COMMIT.
        await Promise.all(together(client, () => [client.query('BEGIN'), client.query('SELECT $1::text, $2::text, $3::jsonb', [tenantOf(req), key, raw])]))
        const { rows } = await client.query(INSERT, [tenantOf(req), req.body])
        const body = JSON.stringify({ id: rows[0].id })
        await Promise.all(together(client, () => [client.query('SELECT $1::text, $2::text, $3::jsonb, $4::int', [tenantOf(req), key, body, 201]), client.query('COMMIT')]))
        res.status(201).type('application/json').send(body)
      } catch (e) {
        if (client) await client.query('ROLLBACK').catch(() => undefined)
        fail(res, e)
      } finally {
        if (client) client.release()
      }
    })
  } else if (variant === 'b' || variant === 'c') {
    const layer = require(process.env.CLIENT_EXPRESS)
    if (typeof layer.idempotency !== 'function') {
      throw new Error(`${process.env.CLIENT_EXPRESS} exports no idempotency(options)`)
    }
    const mode = variant === 'b' ? 'transaction' : 'phased'
    // The layer reads the body itself and gives it back to the stream: it goes before the parser.
    app.post('/orders', layer.idempotency({ pool, tenant: tenantOf, mode }), express.json(), async (req, res) => {
      // A request whose client went away while the layer claimed the key (wrk's at the end of a
      // run) is not given to the route (the layer releases the claim): body-parser would take
      // it for finished and parse nothing. Kept as a guard: the run fails on a 400.
      if (req.body === undefined) {
        console.warn('a request without a parsed body (its client went away): 400, nothing inserted')
        return res.status(400).json({ problem: 'no body' })
      }
      try {
        const db = mode === 'transaction' ? req.idempotency.client : pool
        const { rows } = await db.query(INSERT, [tenantOf(req), req.body])
        res.status(201).json({ id: rows[0].id })
      } catch (e) {
        fail(res, e)
      }
    })
  } else {
    const { idempotency, getSharedIdempotencyService } = require('express-idempotency')
    const RedisAdapter = require('express-idempotency-redis-adapter').default
    const dataAdapter = new RedisAdapter({ connectionConfig: { url: process.env.REDIS_URL } })
    await dataAdapter.connect()
    app.post('/orders', express.json(), idempotency({ dataAdapter }), async (req, res) => {
      // express-idempotency calls the route after it has answered a replay itself.
      if (getSharedIdempotencyService().isHit(req)) return
      try {
        const { rows } = await pool.query(INSERT, [tenantOf(req), req.body])
        res.status(201).json({ id: rows[0].id })
      } catch (e) {
        getSharedIdempotencyService().reportError(req).catch(() => undefined)
        fail(res, e)
      }
    })
  }
  app.listen(Number(port), '127.0.0.1', () => console.error(`variant ${variant} on 127.0.0.1:${port}`))
}

// An orderly exit on SIGTERM, so that `--cpu-prof` (BENCH_LAYERS_NODE_OPTIONS) writes its profile.
process.on('SIGTERM', () => process.exit(0))

start().catch((e) => {
  console.error(e)
  process.exit(1)
})
