// The Hono integration of the drop-in layer (docs/http.md, "The drop-in layer"):
//
//   app.use(idempotency({ pool, tenant: (c) => c.req.header('x-tenant') }))
//
// or on one route, `app.post('/x', idempotency({...}), handler)`. The middleware reads the
// body (the route reads it again with c.req.json() and the like), runs the route with
// `await next()`, then reads c.res: a body with a Content-Length, or one whose stream has
// ended without waiting, is whole; any other is a stream, passed through as it comes.
// layer.ts decides the rest. `c.get('idempotency')`: the key, scope, attempt and, in
// transaction mode, the client whose transaction holds the claim.

import type { Context, MiddlewareHandler } from 'hono'

import { Problem } from './http'
import {
  BodyReader,
  Captured,
  ClientGone,
  Incoming,
  Info,
  LayerOptions,
  Reply,
  Settings,
  checkContentLength,
  covered,
  decodePath,
  keyOf,
  prepare,
  problemReply,
  run,
  scopeOf,
  settings,
} from './layer'

export { ConfigurationError, type Info, type LayerOptions, type Mode } from './layer'

declare module 'hono' {
  interface ContextVariableMap {
    /** Set by the idempotency middleware for a request that executes under a key. */
    idempotency: Info
  }
}

/**
 * The drop-in middleware: `app.use(idempotency({ pool, tenant }))`. Options as in layer.ts;
 * a `ConfigurationError` at once for options it cannot work with.
 */
export function idempotency(options: LayerOptions<Context>): MiddlewareHandler {
  const s = settings(options)
  return (c, next) => handle(s, c, next)
}

interface NodeIncoming {
  headersDistinct?: Record<string, string[] | undefined>
}

function incomingOf(c: Context): Incoming {
  const url = new URL(c.req.url)
  // On Node (@hono/node-server) the request's own header fields, each value apart; elsewhere
  // the Fetch API's Headers, which join repeated fields with ", ".
  const node = (c.env as { incoming?: NodeIncoming } | undefined)?.incoming?.headersDistinct
  return {
    method: c.req.method,
    path: decodePath(url.pathname),
    query: url.search.slice(1),
    headers: (name) => {
      if (node) return node[name] ?? []
      const v = c.req.raw.headers.get(name)
      return v === null ? [] : [v]
    },
  }
}

/** The body's bytes (413 over the limit); the request is given a copy holding them. */
async function readRequest(c: Context, limit: number): Promise<Buffer> {
  const raw = c.req.raw
  const body = new BodyReader(limit)
  if (raw.body) {
    for await (const chunk of raw.body as unknown as AsyncIterable<Uint8Array>) body.push(chunk)
  }
  const bytes = body.bytes()
  const method = raw.method.toUpperCase()
  c.req.raw = new Request(raw.url, {
    method: raw.method,
    headers: raw.headers,
    body: bytes.length && method !== 'GET' && method !== 'HEAD' ? asBody(bytes) : undefined,
    signal: raw.signal,
  })
  return bytes
}

function asBody(b: Buffer): BodyInit {
  return b as unknown as BodyInit // a Uint8Array: a body the Fetch API takes
}

const NULL_BODY = new Set([101, 204, 205, 304])

function response(status: number, headers: HeadersInit, body: BodyInit | null): Response {
  return new Response(NULL_BODY.has(status) ? null : body, { status, headers })
}

function replace(c: Context, res: Response): void {
  c.res = undefined // else Hono copies the old response's headers into the new one
  c.res = res
}

function fromReply(reply: Reply): Response {
  return response(reply.status, reply.headers, reply.body.length ? asBody(reply.body) : null)
}

const PENDING = Symbol('pending')

/** The read if it has already settled (or settles without waiting for I/O), else PENDING. */
function now<T>(p: Promise<T>): Promise<T | typeof PENDING> {
  return Promise.race([p, new Promise<typeof PENDING>((r) => setImmediate(() => r(PENDING)))])
}

/** The route's response read from c.res: whole, or the start of a stream. */
interface Read {
  captured: Captured
  res: Response
  held: Uint8Array[]
  reader: ReadableStreamDefaultReader<Uint8Array> | null
  pending: Promise<ReadableStreamReadResult<Uint8Array>> | null
}

async function readResponse(c: Context): Promise<Read> {
  const res = c.res
  const headers: [string, string][] = [...res.headers.entries()]
  const threw = c.error !== undefined
  const read: Read = { captured: { status: res.status, headers, body: Buffer.alloc(0), threw }, res, held: [], reader: null, pending: null }
  if (!res.body) return read
  const reader = res.body.getReader()
  const known = res.headers.has('content-length')
  for (;;) {
    const pending = reader.read()
    const r = known ? await pending : await now(pending)
    if (r === PENDING) {
      read.captured.body = null
      read.reader = reader
      read.pending = pending
      return read
    }
    if (r.done) break
    read.held.push(r.value)
  }
  read.captured.body = Buffer.concat(read.held)
  return read
}

/** What was held, then the rest of the route's stream; `ended()` once it ends or is cancelled. */
function passThrough(read: Read, ended: () => Promise<void>): ReadableStream<Uint8Array> {
  let once = false
  const end = () => {
    if (once) return
    once = true
    ended().catch((e) => console.error('idempotency: releasing the key of a streamed response failed', e))
  }
  const reader = read.reader!
  let pending = read.pending
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of read.held) controller.enqueue(chunk)
    },
    async pull(controller) {
      try {
        const r = await (pending ?? reader.read())
        pending = null
        if (r.done) {
          controller.close()
          end()
        } else {
          controller.enqueue(r.value)
        }
      } catch (e) {
        controller.error(e)
        end()
      }
    },
    async cancel(reason) {
      end()
      await reader.cancel(reason)
    },
  })
}

async function handle(s: Settings<Context>, c: Context, next: () => Promise<void>): Promise<void> {
  if (!covered(s, c.req.method)) return next()
  const incoming = incomingOf(c)
  let p
  try {
    const key = keyOf(s, incoming)
    if (key === null) return next()
    const scope = await scopeOf(s, c)
    checkContentLength(s, incoming)
    const body = await readRequest(c, s.maxBodyBytes)
    p = prepare(s, c, incoming, key, scope, body)
  } catch (e) {
    if (!(e instanceof Problem)) throw e
    replace(c, fromReply(problemReply(e)))
    return
  }
  let read: Read | undefined
  const signal = c.req.raw.signal // aborted by the Node server when the client has gone
  let result
  try {
    result = await run(s, p, async (info) => {
      if (signal.aborted) throw new ClientGone()
      c.set('idempotency', info)
      await next()
      read = await readResponse(c)
      return read.captured
    })
  } catch (e) {
    if (!(e instanceof ClientGone)) throw e
    // Nobody reads the answer: an empty one ends the request.
    return replace(c, new Response(null, { status: 499 }))
  }
  if (result.kind === 'reply') {
    if (read?.reader) await read.reader.cancel().catch(() => undefined)
    return replace(c, fromReply(result.reply))
  }
  const r = read!
  if (result.kind === 'send') return replace(c, response(r.res.status, r.res.headers, r.captured.body!.length ? asBody(r.captured.body!) : null))
  replace(c, response(r.res.status, r.res.headers, passThrough(r, result.ended)))
}
