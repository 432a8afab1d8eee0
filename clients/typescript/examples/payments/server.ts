// The example payments service in TypeScript: the routes of the reference service's HTTP
// contract on Express, with @idempotency/client doing the idempotency part.
//
//   node dist/examples/payments/server.js serve --database-url URL --listen 127.0.0.1:8082 [--lease 30s]
//
// - POST /v1/payments is phased (the card charge is outside the database): a claim under a
//   lease, the charge with the processor-side key `<tenant>/<key>`, the checkpoint `charged`,
//   then the payment row and the completion in one transaction. A takeover that finds
//   `charged` does not charge again.
// - POST /v1/payments/:id/refunds is one transaction: claim, lock the payment, check what
//   remains, insert the refund, complete; too much is a stored final failure (409).
// - GET /v1/payments/:id, GET /v1/refunds/:id, GET /v1/idempotency-keys/:key, GET /healthz.
//
// The card processor is a mock inside the process (tok_visa succeeds, tok_declined is
// declined, tok_flaky fails with 503 on its first call per key, tok_slow answers after 2 s).
// Authorization is a demo: the Bearer token names the tenant.

import { randomBytes } from 'node:crypto'

import express, { type Request, type Response } from 'express'
import pg from 'pg'

import { check, http, type Begin, type Json } from '../../src/index'
import { oneTransaction, phased, problemReply, send, type Options, type Reply } from '../../src/express'

const SCHEMA = `
CREATE EXTENSION IF NOT EXISTS idempotency;
CREATE TABLE IF NOT EXISTS payments (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    amount numeric(18, 2) NOT NULL,
    currency text NOT NULL,
    card text NOT NULL,
    description text,
    status text NOT NULL,
    charge_id text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    id text PRIMARY KEY,
    tenant text NOT NULL,
    payment_id text NOT NULL REFERENCES payments (id),
    amount numeric(18, 2) NOT NULL,
    created_at timestamptz NOT NULL
);`

const AMOUNT = /^(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$/
const CURRENCY = /^[A-Z]{3}$/
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const newId = (prefix: string) => prefix + randomBytes(16).toString('hex')

// --- The mock card processor -------------------------------------------------------------

/** Charges keyed by the processor-side idempotency key: the same key, the same charge. */
class Processor {
  private charges = new Map<string, string>()
  private calls = new Map<string, number>()

  async charge(key: string, card: string): Promise<[number, string | null]> {
    const n = (this.calls.get(key) ?? 0) + 1
    this.calls.set(key, n)
    if (card === 'tok_declined') return [402, null]
    if (card === 'tok_flaky' && n === 1) return [503, null]
    if (card === 'tok_slow') await sleep(2000)
    if (!this.charges.has(key)) this.charges.set(key, 'ch_' + randomBytes(12).toString('hex'))
    return [200, this.charges.get(key)!]
  }
}

// --- Validation (before any claim: an invalid body stores nothing) ------------------------

type Obj = Record<string, Json>
const invalid = (detail: string) => new http.Problem(400, http.code.INVALID_REQUEST, detail)

function isObject(body: Json): body is Obj {
  return body !== null && typeof body === 'object' && !Array.isArray(body)
}

function amountOf(body: Json): string {
  const a = isObject(body) ? body.amount : undefined
  if (typeof a !== 'string' || !AMOUNT.test(a) || Number(a) <= 0) throw invalid('"amount" must be a decimal string > 0 with at most 2 decimals')
  return a
}

function members(body: Json, allowed: string[]): asserts body is Obj {
  if (!isObject(body)) throw invalid('the body must be a JSON object')
  const unknown = Object.keys(body).filter((k) => !allowed.includes(k))
  if (unknown.length) throw invalid(`unknown member ${JSON.stringify(unknown[0])}`)
}

function validatePayment(body: Json): void {
  members(body, ['amount', 'currency', 'card', 'description'])
  amountOf(body)
  if (typeof body.currency !== 'string' || !CURRENCY.test(body.currency)) throw invalid('"currency" must be 3 upper-case letters')
  if (typeof body.card !== 'string' || body.card === '') throw invalid('"card" must be a non-empty token')
  if ('description' in body && typeof body.description !== 'string') throw invalid('"description" must be a string')
}

function validateRefund(body: Json): void {
  members(body, ['amount'])
  amountOf(body)
}

// --- Resources ------------------------------------------------------------------------------

// The payment's numbers as text (numeric stays exact), times as RFC 3339 from the database.
const PAYMENT_COLUMNS =
  "id, amount::text AS amount, currency, status, charge_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at"
const REFUND_COLUMNS =
  "id, payment_id, amount::text AS amount, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at"

async function loadPayment(c: pg.ClientBase, tenant: string, id: string): Promise<Obj | null> {
  const r = await c.query(`SELECT ${PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND tenant = $2`, [id, tenant])
  return r.rows[0] ?? null
}

async function loadRefund(c: pg.ClientBase, tenant: string, id: string): Promise<Obj | null> {
  const r = await c.query(`SELECT ${REFUND_COLUMNS} FROM refunds WHERE id = $1 AND tenant = $2`, [id, tenant])
  return r.rows[0] ?? null
}

const notFound = (): Reply => problemReply(new http.Problem(404, http.code.NOT_FOUND, 'no such resource'))

// --- The service ----------------------------------------------------------------------------

export function makeApp(pool: pg.Pool, lease: number): express.Express {
  const processor = new Processor()

  const replay = async (req: Request, c: pg.PoolClient, begin: Begin): Promise<Reply> => {
    const tenant = http.parseBearerTenant(req.headers.authorization)
    const [kind, id] = (begin.resource ?? '').split('/', 2)
    const body = kind === 'payments' ? await loadPayment(c, tenant, id) : await loadRefund(c, tenant, id)
    if (!body) throw new Error(`the stored resource ${begin.resource} is gone`)
    return { status: 200, body, headers: { Location: `/v1/${kind}/${id}` } }
  }
  const base: Options = { pool, replay }

  const app = express()
  app.set('x-powered-by', false)

  app.post(
    '/v1/payments',
    phased({ ...base, validate: validatePayment, lease }, async ({ claim, body, tenant, key, client }) => {
      const b = body as Obj & { amount: string; currency: string; card: string; description?: string }
      let chargeId: string
      if (claim.recoveryPoint === 'charged') {
        chargeId = (claim.recoveryData as { charge_id: string }).charge_id // an earlier attempt charged: resume
      } else {
        const [status, charge] = await processor.charge(`${tenant}/${key}`, b.card)
        if (status === 402) {
          const p = new http.Problem(402, http.code.CARD_DECLINED, 'the card was declined')
          await claim.fail({ error: p.body(), retryable: false, httpStatus: 402 })
          return problemReply(p)
        }
        if (status !== 200 || charge === null) {
          const p = new http.Problem(503, http.code.PROCESSOR_UNAVAILABLE, 'the card processor is unavailable; try again', { 'Retry-After': '1' })
          await claim.fail({ error: p.body(), retryable: true, httpStatus: 503 })
          return problemReply(p)
        }
        chargeId = charge
        await claim.checkpoint('charged', { charge_id: chargeId })
      }
      const id = newId('pay_')
      // The payment and the completion commit together, fenced by the claim's attempt.
      const payment = await claim.finish(async (f) => {
        const row = f.query(
          `INSERT INTO payments (id, tenant, amount, currency, card, description, status, charge_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, 'succeeded', $7, clock_timestamp()) RETURNING ${PAYMENT_COLUMNS}`,
          [id, tenant, b.amount, b.currency, b.card, b.description ?? null, chargeId],
        )
        f.complete({ resource: `payments/${id}`, httpStatus: 201 })
        return row
      })
      return { status: 201, body: payment.rows[0], headers: { Location: `/v1/payments/${id}` } }
    }),
  )

  app.post(
    '/v1/payments/:id/refunds',
    oneTransaction({ ...base, validate: validateRefund }, async ({ tx, body, tenant, client, req }) => {
      const pid = req.params.id as string
      const amount = amountOf(body)
      const p = await client.query('SELECT amount::text AS amount FROM payments WHERE id = $1 AND tenant = $2 FOR UPDATE', [pid, tenant])
      if (!p.rowCount) throw new http.Problem(404, http.code.NOT_FOUND, 'no such payment') // rolls the claim back: nothing stored
      const ok = await client.query(
        'SELECT coalesce(sum(amount), 0) + $2::numeric <= $3::numeric AS ok FROM refunds WHERE payment_id = $1',
        [pid, amount, p.rows[0].amount],
      )
      if (!ok.rows[0].ok) {
        const problem = new http.Problem(409, http.code.REFUND_EXCEEDS_PAYMENT, 'the refunds would exceed the payment')
        tx.fail({ error: problem.body(), retryable: false, httpStatus: 409 })
        return problemReply(problem)
      }
      const id = newId('re_')
      const row = await client.query(
        `INSERT INTO refunds (id, tenant, payment_id, amount, created_at) VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING ${REFUND_COLUMNS}`,
        [id, tenant, pid, amount],
      )
      tx.complete({ resource: `refunds/${id}`, httpStatus: 201 })
      return { status: 201, body: row.rows[0], headers: { Location: `/v1/refunds/${id}` } }
    }),
  )

  const get = (load: typeof loadPayment) => async (req: Request, res: Response) => {
    let tenant: string
    try {
      tenant = http.parseBearerTenant(req.headers.authorization)
    } catch (e) {
      return send(res, problemReply(e as http.Problem))
    }
    const body = await load(pool as unknown as pg.ClientBase, tenant, req.params.id as string)
    send(res, body ? { status: 200, body } : notFound())
  }
  app.get('/v1/payments/:id', get(loadPayment))
  app.get('/v1/refunds/:id', get(loadRefund))

  app.get('/v1/idempotency-keys/:key', async (req: Request, res: Response) => {
    let tenant: string
    try {
      tenant = http.parseBearerTenant(req.headers.authorization)
    } catch (e) {
      return send(res, problemReply(e as http.Problem))
    }
    const key = req.params.key as string
    if (Buffer.byteLength(key) < 1 || Buffer.byteLength(key) > 255 || /[\x00-\x1f\x7f]/.test(key)) {
      return send(res, problemReply(new http.Problem(400, http.code.IDEMPOTENCY_KEY_INVALID, 'a key is 1 to 255 bytes without control characters')))
    }
    const c = await pool.connect()
    try {
      const k = await check(c, tenant, key)
      if (k.state === 'absent') return send(res, { status: 200, body: { state: 'absent' } })
      const t = (d: Date | null) => (d ? d.toISOString() : null)
      send(res, {
        status: 200,
        body: { key, state: k.state, attempt: k.attempt, status: k.httpStatus, resource: k.resource, created_at: t(k.createdAt), expires_at: t(k.expiresAt), lease_expires_at: t(k.leaseExpiresAt) },
      })
    } finally {
      c.release()
    }
  })

  app.get('/healthz', async (_req: Request, res: Response) => {
    await pool.query('SELECT 1')
    send(res, { status: 200, body: { status: 'ok' } })
  })

  // Unknown routes and methods: problem documents too, not Express's HTML page.
  const routes = ['/v1/payments', '/v1/payments/:id', '/v1/payments/:id/refunds', '/v1/refunds/:id', '/v1/idempotency-keys/:key', '/healthz']
  for (const route of routes) {
    app.all(route, (_req: Request, res: Response) => send(res, problemReply(new http.Problem(405, http.code.INVALID_REQUEST, 'this method is not allowed on this route'))))
  }
  app.use((_req: Request, res: Response) => send(res, notFound()))

  // Anything unexpected: a problem document, not Express's HTML page.
  app.use((err: unknown, _req: Request, res: Response, _next: express.NextFunction) => {
    console.error(err)
    send(res, problemReply(http.problemForError(err)))
  })
  return app
}

function duration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim())
  if (!m) throw new Error(`not a duration: ${text} (e.g. 30s, 500ms, 2m)`)
  const v = Number(m[1])
  return m[2] === 'ms' ? v : v * 1000 * (m[2] === 'm' ? 60 : 1)
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] !== 'serve') throw new Error('usage: server.js serve --database-url URL [--listen ADDR] [--lease DURATION]')
  const opt = (name: string, dflt?: string) => {
    const i = argv.indexOf(name)
    const v = i >= 0 ? argv[i + 1] : dflt
    if (v === undefined) throw new Error(`${name} is required`)
    return v
  }
  const pool = new pg.Pool({ connectionString: opt('--database-url'), max: 10, pipeline: true } as pg.PoolConfig)
  await pool.query(SCHEMA)
  const listen = opt('--listen', '127.0.0.1:8082')
  const i = listen.lastIndexOf(':')
  const app = makeApp(pool, duration(opt('--lease', '30s')))
  const server = app.listen(Number(listen.slice(i + 1)), listen.slice(0, i) || '127.0.0.1')
  const stop = () => server.close(() => void pool.end())
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e)
    process.exit(1)
  })
}
