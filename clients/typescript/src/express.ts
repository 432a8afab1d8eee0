// The Express integration: request handlers that do the idempotency part of a request, so
// that the handler only does its work and returns the reply (sent after the commit).
//
//   app.post('/v1/payments/:id/refunds', oneTransaction({ pool, replay, validate }, async (work) => {
//     await work.client.query('INSERT ...')
//     work.tx.complete({ resource: `refunds/${id}`, httpStatus: 201 })
//     return { status: 201, body: refund }
//   }))
//
// For each request, in this order: the tenant from `Authorization: Bearer` (401), the
// `Idempotency-Key` (400 missing/invalid), the JSON body and the route's own validation (400
// `invalid_request`, before any claim: nothing is stored), then the helper with scope = the
// tenant and command = {method, path, body}. `execute` runs the handler (a `Problem` it throws
// rolls the claim back and is answered); `replay` answers a stored failure with its problem, a
// stored response as is, a stored resource through `replay(...)`, with `Idempotent-Replayed:
// true`; `in_progress` is 409 with `Retry-After` (202 under `Prefer: respond-async`; `Prefer:
// wait=N` waits first); IK001 is 422; the other errors as `http.problemForError` maps them.

import type { NextFunction, Request, RequestHandler, Response } from 'express'
import type { PoolClient } from 'pg'

import { Claim, Transaction, claim as claimKey, transaction } from './client'
import { IdempotencyError } from './errors'
import { Problem, Prefer, answerForBegin, code, command, mediaType, parseBearerTenant, parseIdempotencyKey, parsePrefer, problemForError } from './http'
import type { Begin, Interval, Json } from './model'

/** What a handler answers: sent once the transaction has committed. */
export interface Reply {
  status: number
  body?: Json
  headers?: Record<string, string>
}

export interface Connects {
  connect(): Promise<PoolClient>
}

export interface Options {
  /** A `pg.Pool` (made with `pipeline: true` to save round trips). */
  pool: Connects
  tenant?: (req: Request) => string
  ttl?: Interval
  /** Rebuilds the reply of a completion stored as a `resource`. */
  replay?: (req: Request, client: PoolClient, begin: Begin) => Promise<Reply>
  /** Throws a `Problem` for an invalid body; runs before the key is claimed. */
  validate?: (body: Json) => void
}

interface Base {
  req: Request
  tenant: string
  key: string
  body: Json
  client: PoolClient
}
export interface Work extends Base {
  tx: Transaction
}
export interface PhasedWork extends Base {
  claim: Claim
}

export function send(res: Response, reply: Reply): void {
  res.status(reply.status)
  for (const [k, v] of Object.entries(reply.headers ?? {})) res.setHeader(k, v)
  if (reply.body === undefined) {
    res.end()
  } else {
    res.type(mediaType(reply)).send(JSON.stringify(reply.body))
  }
}

export function problemReply(p: Problem): Reply {
  return { status: p.status, body: p.body(), headers: p.headers }
}

const MAX_BODY = 1 << 20

async function readJson(req: Request): Promise<Json> {
  if (req.body !== undefined && !Buffer.isBuffer(req.body)) return req.body as Json // parsed by express.json()
  let raw: Buffer
  if (Buffer.isBuffer(req.body)) raw = req.body
  else {
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      if (size > MAX_BODY) throw new Problem(400, code.INVALID_REQUEST, 'the body is too large')
      chunks.push(chunk as Buffer)
    }
    raw = Buffer.concat(chunks)
  }
  try {
    return JSON.parse(raw.toString('utf8')) as Json
  } catch {
    throw new Problem(400, code.INVALID_REQUEST, 'the body must be JSON')
  }
}

async function prepare(req: Request, o: Options): Promise<{ tenant: string; key: string; body: Json; prefer: Prefer; cmd: Json }> {
  const tenant = (o.tenant ?? ((r: Request) => parseBearerTenant(r.headers.authorization)))(req)
  const key = parseIdempotencyKey(req.headers['idempotency-key'])
  const body = await readJson(req)
  o.validate?.(body)
  return { tenant, key, body, prefer: parsePrefer(req.headers.prefer), cmd: command(req.method, req.path, body) }
}

async function replayReply(req: Request, client: PoolClient, begin: Begin, o: Options): Promise<Reply> {
  const a = answerForBegin(begin)!
  if (a.body !== undefined || begin.resource === null) return { status: a.status, body: a.body ?? undefined, headers: a.headers }
  if (!o.replay) throw new Error(`no replay function to rebuild ${begin.resource}`)
  const r = await o.replay(req, client, begin)
  return { ...r, status: a.status, headers: { ...(r.headers ?? {}), ...a.headers } }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** `Prefer: wait`: poll again in 200 ms while the deadline allows (see docs/clients.md). */
async function waitStep(deadline: number): Promise<boolean> {
  const left = deadline - Date.now()
  if (left <= 0) return false
  await sleep(Math.min(200, left))
  return true
}

function remaining(deadline: number): number | undefined {
  const left = deadline - Date.now()
  return left > 0 ? left : undefined
}

function wrap(run: (req: Request) => Promise<Reply>): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    run(req).then(
      (reply) => send(res, reply),
      (e) => (e instanceof Problem || e instanceof IdempotencyError ? send(res, problemReply(problemForError(e))) : next(e)),
    )
  }
}

/** The handler runs inside the transaction of `idem_begin` and its completion. */
export function oneTransaction(o: Options, handler: (work: Work) => Promise<Reply>): RequestHandler {
  return wrap(async (req) => {
    const { tenant, key, body, prefer, cmd } = await prepare(req, o)
    const deadline = Date.now() + (prefer.wait ?? 0) * 1000
    for (;;) {
      const client = await o.pool.connect()
      let broken: unknown
      try {
        const { tx, value } = await transaction(client, { scope: tenant, key, command: cmd, ttl: o.ttl, wait: remaining(deadline) }, async (tx) => {
          if (tx.outcome === 'execute') return handler({ req, tenant, key, body, client, tx })
          if (tx.outcome === 'replay') return replayReply(req, client, tx.begin, o)
          return null
        })
        if (value !== null) return value
        if (!(await waitStep(deadline))) {
          const a = answerForBegin(tx.begin, { lease: tx.lease, key, prefer })!
          return { status: a.status, body: a.body, headers: a.headers }
        }
      } catch (e) {
        if (!(e instanceof Problem || e instanceof IdempotencyError)) broken = e
        throw e
      } finally {
        client.release(broken instanceof Error ? broken : undefined)
      }
    }
  })
}

/** The handler gets a committed claim under `lease`, for work outside the database. */
export function phased(o: Options & { lease?: Interval }, handler: (work: PhasedWork) => Promise<Reply>): RequestHandler {
  return wrap(async (req) => {
    const { tenant, key, body, prefer, cmd } = await prepare(req, o)
    const deadline = Date.now() + (prefer.wait ?? 0) * 1000
    const client = await o.pool.connect()
    let broken: unknown
    try {
      for (;;) {
        const c = await claimKey(client, { scope: tenant, key, command: cmd, ttl: o.ttl, lease: o.lease, wait: remaining(deadline) })
        if (c.outcome === 'execute') return await handler({ req, tenant, key, body, client, claim: c })
        if (c.outcome === 'replay') return await replayReply(req, client, c.begin, o)
        if (!(await waitStep(deadline))) {
          const a = answerForBegin(c.begin, { lease: await c.lease(), key, prefer })!
          return { status: a.status, body: a.body, headers: a.headers }
        }
      }
    } catch (e) {
      if (!(e instanceof Problem || e instanceof IdempotencyError)) broken = e
      throw e
    } finally {
      client.release(broken instanceof Error ? broken : undefined)
    }
  })
}
