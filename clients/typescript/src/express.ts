// The Express integration.
//
// The drop-in layer (docs/http.md, "The drop-in layer"): `app.use(idempotency({ pool, tenant }))`
// or on one route, `app.post('/x', idempotency({...}), handler)`. The middleware reads the
// request body itself (put it before any body parser: the body is given back to them), and
// captures the response by intercepting res.writeHead/write/end; layer.ts decides the rest.
//
// The per-route helpers of the payments example: request handlers that do the idempotency
// part of a request, so that the handler only does its work and returns the reply (sent
// after the commit).
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

import { Readable } from 'node:stream'

import type { NextFunction, Request, RequestHandler, Response } from 'express'
import type { PoolClient } from 'pg'

import { Claim, Transaction, claim as claimKey, transaction } from './client'
import { IdempotencyError } from './errors'
import { Problem, Prefer, answerForBegin, code, command, mediaType, parseBearerTenant, parseIdempotencyKey, parsePrefer, problemForError } from './http'
import {
  BodyReader,
  Captured,
  ClientGone,
  Incoming,
  Info,
  LayerOptions,
  Poll,
  Reply as LayerReply,
  Settings,
  checkContentLength,
  covered,
  decodePath,
  keyOf,
  prepare,
  problemReply as layerProblemReply,
  run,
  scopeOf,
  settings,
} from './layer'
import type { Begin, Interval, Json } from './model'

export { ConfigurationError, type Info, type LayerOptions, type Mode } from './layer'

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by the idempotency middleware for a request that executes under a key. */
      idempotency?: Info
    }
  }
}

// --- The drop-in layer -------------------------------------------------------------------------

/**
 * The drop-in middleware: `app.use(idempotency({ pool, tenant }))`. Options as in layer.ts;
 * a `ConfigurationError` at once for options it cannot work with.
 */
export function idempotency(options: LayerOptions<Request>): RequestHandler {
  const s = settings(options)
  return (req: Request, res: Response, next: NextFunction) => {
    handle(s, req, res, next).catch(next)
  }
}

function incomingOf(req: Request): Incoming {
  const url = req.originalUrl ?? req.url
  const q = url.indexOf('?')
  return {
    method: req.method,
    path: decodePath(q < 0 ? url : url.slice(0, q)),
    query: q < 0 ? '' : url.slice(q + 1),
    headers: (name) => req.headersDistinct[name] ?? [],
  }
}

/** The request body's bytes, read from the stream (413 over the limit). */
function readRequest(req: Request, limit: number): Promise<Buffer> {
  if (req.readableEnded) {
    return Promise.reject(new Error('the request body was read before the idempotency middleware: put it before the body parsers'))
  }
  return new Promise((resolve, reject) => {
    const body = new BodyReader(limit)
    const cleanup = () => {
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onError)
    }
    const onData = (chunk: Buffer) => {
      try {
        body.push(chunk)
      } catch (e) {
        cleanup()
        req.pause()
        reject(e)
      }
    }
    const onEnd = () => {
      cleanup()
      resolve(body.bytes())
    }
    const onError = (e: Error) => {
      cleanup()
      reject(e)
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
  })
}

/**
 * Give the body read by the layer back to the request stream, for the body parsers and
 * handlers after it: the stream's readable side starts again, holding those bytes.
 */
function refill(req: Request, body: Buffer): void {
  Readable.call(req as unknown as Readable, { autoDestroy: false })
  ;(req as unknown as { _read: () => void })._read = () => undefined
  if (body.length) req.push(body)
  req.push(null)
}

function writeReply(res: Response, reply: LayerReply, end: (body: Buffer) => void): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name)
  res.statusCode = reply.status
  const byName = new Map<string, string[]>()
  for (const [n, v] of reply.headers) byName.set(n, [...(byName.get(n) ?? []), v])
  for (const [n, v] of byName) res.setHeader(n, v.length === 1 ? v[0] : v)
  end(reply.body)
}

/**
 * Whether the client has gone: its connection closed, or only its side of it (a FIN), which
 * is enough for the body parsers (on-finished's `isFinished`: the socket no longer readable)
 * to take the request for finished and parse nothing.
 */
function gone(req: Request): boolean {
  const socket = req.socket as Request['socket'] | null
  return req.destroyed || socket === null || socket.destroyed || !socket.readable
}

async function handle(s: Settings<Request>, req: Request, res: Response, next: NextFunction): Promise<void> {
  if (!covered(s, req.method)) return next()
  const incoming = incomingOf(req)
  let p
  try {
    const key = keyOf(s, incoming)
    if (key === null) return next()
    const scope = await scopeOf(s, req)
    checkContentLength(s, incoming)
    const body = await readRequest(req, s.maxBodyBytes)
    p = prepare(s, req, incoming, key, scope, body)
    refill(req, body)
  } catch (e) {
    if (!(e instanceof Problem)) throw e
    if (e.status === 413) res.setHeader('Connection', 'close') // the rest of the body is not read
    return writeReply(res, layerProblemReply(e), (b) => res.end(b))
  }
  const capture = new Capture(res)
  let result
  try {
    result = await run(s, p, (info) => {
      // The client closed the connection while the key was claimed: the body given back to
      // the stream is gone with it, and the route must not run on a request it cannot read.
      if (gone(req)) return Promise.reject(new ClientGone())
      req.idempotency = info
      capture.start()
      next()
      return capture.captured
    })
  } catch (e) {
    if (!(e instanceof ClientGone)) throw e
    res.destroy()
    return
  }
  if (result.kind === 'reply') return capture.answer(result.reply)
  if (result.kind === 'send') return capture.send()
  capture.stream(result.ended)
}

type Callback = (error?: Error | null) => void

/**
 * The route's response held back: the status, the headers (left on `res`), and the body
 * written with write/end. It is whole at end(); a write before end() without a
 * Content-Length begins a stream. Nothing reaches the client before `send`, `stream` or
 * `answer`.
 */
class Capture {
  readonly captured: Promise<Captured>
  private resolve!: (c: Captured) => void
  private state: 'idle' | 'capturing' | 'passing' | 'discarding' = 'idle'
  private settled = false
  private status: number | undefined
  private chunks: Buffer[] = []
  private ended = false
  private callbacks: Callback[] = []
  private readonly writeHead: Response['writeHead']
  private readonly write: Response['write']
  private readonly end: Response['end']

  constructor(private readonly res: Response) {
    this.captured = new Promise((r) => (this.resolve = r))
    this.writeHead = res.writeHead
    this.write = res.write
    this.end = res.end
  }

  start(): void {
    this.state = 'capturing'
    const res = this.res
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    res.writeHead = ((status: number, ...rest: any[]) => {
      if (this.state === 'passing') return this.writeHead.call(res, status, ...rest)
      this.status = status
      const headers = rest.find((r) => r !== null && typeof r === 'object')
      if (Array.isArray(headers)) {
        for (let i = 0; i + 1 < headers.length; i += 2) res.appendHeader(String(headers[i]), headers[i + 1])
      } else if (headers) {
        for (const [n, v] of Object.entries(headers)) if (v !== undefined) res.setHeader(n, v as string | string[])
      }
      return res
    }) as Response['writeHead']
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    res.write = ((chunk: any, encoding?: any, cb?: any) => {
      if (this.state === 'passing') return this.write.call(res, chunk, encoding, cb)
      const callback = typeof encoding === 'function' ? encoding : cb
      if (this.state === 'capturing') {
        this.hold(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined)
        if (!this.settled && !res.hasHeader('content-length')) this.settle(null)
      }
      this.later(callback)
      return true
    }) as Response['write']
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    res.end = ((chunk?: any, encoding?: any, cb?: any) => {
      if (this.state === 'passing') return this.end.call(res, chunk, encoding, cb)
      this.later([chunk, encoding, cb].find((a) => typeof a === 'function'))
      if (this.state === 'capturing' && !this.ended) {
        if (typeof chunk !== 'function') this.hold(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined)
        this.ended = true
        if (!this.settled) this.settle(Buffer.concat(this.chunks))
      }
      return res
    }) as Response['end']
  }

  private hold(chunk: unknown, encoding: BufferEncoding | undefined): void {
    if (chunk === undefined || chunk === null) return
    if (typeof chunk === 'string') this.chunks.push(Buffer.from(chunk, encoding ?? 'utf8'))
    else if (chunk instanceof Uint8Array) this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length))
  }

  private settle(body: Buffer | null): void {
    this.settled = true
    const res = this.res
    const headers: [string, string][] = []
    for (const name of res.getHeaderNames()) {
      const v = res.getHeader(name)
      for (const one of Array.isArray(v) ? v : [v]) if (one !== undefined) headers.push([name, String(one)])
    }
    this.resolve({ status: this.status ?? res.statusCode, headers, body, threw: false })
  }

  /** A write's or end's callback: once the response is sent, or at once for a dropped write. */
  private later(cb: Callback | undefined): void {
    if (!cb) return
    if (this.state === 'discarding') process.nextTick(cb)
    else this.callbacks.push(cb)
  }

  private flush(): void {
    const callbacks = this.callbacks
    this.callbacks = []
    for (const cb of callbacks) process.nextTick(cb)
  }

  /** The route's response as it was captured. */
  send(): void {
    this.state = 'passing'
    this.res.statusCode = this.status ?? this.res.statusCode
    this.res.end(Buffer.concat(this.chunks))
    this.flush()
  }

  /** The route's response streams: what was held, then the rest as the route writes it. */
  stream(ended: () => Promise<void>): void {
    const res = this.res
    let once = false
    res.on('close', () => {
      if (once) return
      once = true
      ended().catch((e) => console.error('idempotency: releasing the key of a streamed response failed', e))
    })
    this.state = 'passing'
    res.statusCode = this.status ?? res.statusCode
    for (const chunk of this.chunks) res.write(chunk)
    this.chunks = []
    if (this.ended) res.end()
    this.flush()
  }

  /** The layer's answer instead of the route's (whatever the route writes still is dropped). */
  answer(reply: LayerReply): void {
    const started = this.state !== 'idle'
    this.state = 'passing' // end() calls writeHead: both must reach the response now
    writeReply(this.res, reply, (b) => this.res.end(b))
    if (started) this.state = 'discarding'
    this.flush()
  }
}

// --- The per-route helpers of the payments example ---------------------------------------------

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
    try {
      raw = await readRequest(req, MAX_BODY)
    } catch (e) {
      if (e instanceof Problem) throw new Problem(400, code.INVALID_REQUEST, 'the body is too large')
      throw e
    }
  }
  try {
    return JSON.parse(raw.toString('utf8')) as Json
  } catch {
    throw new Problem(400, code.INVALID_REQUEST, 'the body must be JSON')
  }
}

async function prepareRoute(req: Request, o: Options): Promise<{ tenant: string; key: string; body: Json; prefer: Prefer; cmd: Json }> {
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
    const { tenant, key, body, prefer, cmd } = await prepareRoute(req, o)
    const poll = new Poll(prefer.wait)
    for (;;) {
      const client = await o.pool.connect()
      let broken: unknown
      try {
        const { tx, value } = await transaction(client, { scope: tenant, key, command: cmd, ttl: o.ttl, wait: poll.serverWait() }, async (tx) => {
          if (tx.outcome === 'execute') return handler({ req, tenant, key, body, client, tx })
          if (tx.outcome === 'replay') return replayReply(req, client, tx.begin, o)
          return null
        })
        if (value !== null) return value
        if (!(await poll.pause())) {
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
    const { tenant, key, body, prefer, cmd } = await prepareRoute(req, o)
    const poll = new Poll(prefer.wait)
    const client = await o.pool.connect()
    let broken: unknown
    try {
      for (;;) {
        const c = await claimKey(client, { scope: tenant, key, command: cmd, ttl: o.ttl, lease: o.lease, wait: poll.serverWait() })
        if (c.outcome === 'execute') return await handler({ req, tenant, key, body, client, claim: c })
        if (c.outcome === 'replay') return await replayReply(req, client, c.begin, o)
        if (!(await poll.pause())) {
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
