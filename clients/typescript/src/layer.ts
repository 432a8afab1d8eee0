// The drop-in layer's framework-neutral part (docs/http.md, "The drop-in layer"): the options,
// the command, what is stored by status, the stored response and its replay, the layer's own
// answers, and the two flows (phased and transaction) on top of client.ts. The Express and
// Hono middleware (express.ts, hono.ts) only turn their framework's request and response into
// what this module takes and gives back.

import { createHash } from 'node:crypto'

import type { ClientBase, Pool, PoolClient } from 'pg'

import { begin, claim, completeFitting, fail, lease as leaseOf, together } from './client'
import { NotInProgress, RecordRefusal } from './errors'
import { IDEMPOTENT_REPLAYED, PROBLEM_JSON, Prefer, Problem, RETRY_AFTER, code, parseIdempotencyKey, parsePrefer, problem, problemForError } from './http'
import { RawJson, type Begin, type Interval, type Json, type Lease } from './model'

export type Mode = 'phased' | 'transaction'

/** The options every layer takes (docs/http.md's "Settings common to every layer"). */
export interface LayerOptions<Req> {
  /** The `pg.Pool` the layer claims and stores with (and, in transaction mode, lends the route). */
  pool: Pool
  /** The scope: a string of 1 to 255 bytes; null, undefined or '' is 401; may throw a `Problem`. */
  tenant?: (req: Req) => string | null | undefined | Promise<string | null | undefined>
  /** Without a tenant function: every request shares the scope `global`. */
  globalKeys?: boolean
  /** The covered methods (default POST and PATCH); others pass through untouched. */
  methods?: string[]
  /** Without the header on a covered method: 400 (true, the default) or pass through (false). */
  required?: boolean
  /** How long a key is remembered (default the database's `idempotency.ttl`). */
  ttl?: Interval
  /** Phased mode: how long a claim holds the key (default the database's `idempotency.lease`). */
  lease?: Interval
  /** Request headers that are part of the command. */
  commandHeaders?: string[]
  /** Response headers stored and replayed besides those that describe the body. */
  replayHeaders?: string[]
  /** The largest request body (default 1 MiB); over it, 413 before anything is claimed. */
  maxBodyBytes?: number
  /** The largest response body stored (default 512 KiB); a longer one is stored omitted. */
  maxStoredBody?: number
  /** The cap of `Prefer: wait=N`, in seconds (default 10). */
  maxWait?: number
  /** The `Location` of a 202 under `Prefer: respond-async`. */
  statusUrl?: (key: string) => string
  /** 'phased' (default) or 'transaction', or a function of the request. */
  mode?: Mode | ((req: Req) => Mode)
}

/** A layer built with options it cannot work with (thrown when the middleware is made). */
export class ConfigurationError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigurationError'
  }
}

/** The response headers that describe the body: always stored. */
export const DESCRIBING_HEADERS = [
  'content-type',
  'content-language',
  'content-encoding',
  'content-location',
  'location',
  'etag',
  'last-modified',
  'cache-control',
  'vary',
] as const
const NEVER_STORED = new Set(['set-cookie', 'set-cookie2'])
export const REPLAY_BODY = 'Idempotent-Replay-Body'
export const GLOBAL_SCOPE = 'global'
export const STORED_VERSION = 1
export const COMMAND_VERSION = 1

/** The options checked and with their defaults. */
export interface Settings<Req> {
  pool: Pool
  tenant: ((req: Req) => string | null | undefined | Promise<string | null | undefined>) | null
  methods: Set<string>
  required: boolean
  ttl: Interval | undefined
  lease: Interval | undefined
  commandHeaders: string[]
  keep: Set<string>
  maxBodyBytes: number
  maxStoredBody: number
  maxWait: number
  statusUrl: ((key: string) => string) | undefined
  mode: Mode | ((req: Req) => Mode)
}

function count(name: string, value: number | undefined, dflt: number, min: number): number {
  if (value === undefined) return dflt
  if (!Number.isInteger(value) || value < min) throw new ConfigurationError(`${name} must be an integer >= ${min}, not ${value}`)
  return value
}

function interval(name: string, value: Interval | undefined): Interval | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'number' ? !(Number.isFinite(value) && value > 0) : typeof value !== 'string' || value.trim() === '') {
    throw new ConfigurationError(`${name} must be a positive number of milliseconds or interval text, not ${String(value)}`)
  }
  return value
}

function names(name: string, value: string[] | undefined): string[] {
  if (value === undefined) return []
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(v))) {
    throw new ConfigurationError(`${name} must be a list of header names`)
  }
  return value.map((v) => v.toLowerCase())
}

function checkMode(mode: unknown): Mode {
  if (mode !== 'phased' && mode !== 'transaction') throw new ConfigurationError(`mode must be 'phased' or 'transaction', not ${String(mode)}`)
  return mode
}

/** Check the options (a `ConfigurationError` for any that the layer cannot work with). */
export function settings<Req>(o: LayerOptions<Req>): Settings<Req> {
  if (!o || typeof o.pool?.connect !== 'function' || typeof o.pool?.query !== 'function') throw new ConfigurationError('pool must be a pg.Pool')
  if (o.tenant !== undefined && typeof o.tenant !== 'function') throw new ConfigurationError('tenant must be a function of the request')
  if (o.tenant === undefined && o.globalKeys !== true) {
    throw new ConfigurationError('give a tenant function (the scope of the keys), or globalKeys: true to share one scope between all clients')
  }
  if (o.tenant !== undefined && o.globalKeys === true) throw new ConfigurationError('give a tenant function or globalKeys: true, not both')
  const replay = names('replayHeaders', o.replayHeaders)
  const refused = replay.find((n) => NEVER_STORED.has(n))
  if (refused) throw new ConfigurationError(`${refused} is never stored: it cannot be in replayHeaders`)
  const methods = o.methods ?? ['POST', 'PATCH']
  if (!Array.isArray(methods) || methods.some((m) => typeof m !== 'string' || m === '')) throw new ConfigurationError('methods must be a list of HTTP methods')
  if (o.statusUrl !== undefined && typeof o.statusUrl !== 'function') throw new ConfigurationError('statusUrl must be a function of the key')
  return {
    pool: o.pool,
    tenant: o.tenant ?? null,
    methods: new Set(methods.map((m) => m.toUpperCase())),
    required: o.required ?? true,
    ttl: interval('ttl', o.ttl),
    lease: interval('lease', o.lease),
    commandHeaders: names('commandHeaders', o.commandHeaders),
    keep: new Set([...DESCRIBING_HEADERS, ...replay]),
    maxBodyBytes: count('maxBodyBytes', o.maxBodyBytes, 1 << 20, 0),
    maxStoredBody: count('maxStoredBody', o.maxStoredBody, 512 << 10, 0),
    maxWait: count('maxWait', o.maxWait, 10, 0),
    statusUrl: o.statusUrl,
    mode: typeof o.mode === 'function' ? o.mode : checkMode(o.mode ?? 'phased'),
  }
}

// --- The request ---------------------------------------------------------------------------

/** A request as the layer sees it, whatever the framework. */
export interface Incoming {
  /** Upper-case. */
  method: string
  /** As routed, percent-decoded, without the query (under a mount prefix, the full path). */
  path: string
  /** The query string as sent, without `?`. */
  query: string
  /** The values of a header in order (lower-case name); [] when absent. */
  headers(name: string): string[]
}

export function covered<Req>(s: Settings<Req>, method: string): boolean {
  return s.methods.has(method.toUpperCase())
}

/** The key, or null when the request passes through (no key and `required: false`). */
export function keyOf<Req>(s: Settings<Req>, incoming: Incoming): string | null {
  const values = incoming.headers('idempotency-key')
  if (values.length === 0) {
    if (!s.required) return null
    return parseIdempotencyKey(undefined)
  }
  return parseIdempotencyKey(values.length === 1 ? values[0] : values)
}

/** The scope: the tenant function's answer (401 for none), or `global`. */
export async function scopeOf<Req>(s: Settings<Req>, req: Req): Promise<string> {
  if (s.tenant === null) return GLOBAL_SCOPE
  const t = await s.tenant(req)
  if (t === null || t === undefined || t === '') throw new Problem(401, code.UNAUTHORIZED, 'the request names no tenant')
  if (typeof t !== 'string') throw new TypeError(`the tenant function must answer a string, not ${typeof t}`)
  if (Buffer.byteLength(t, 'utf8') > 255) throw new TypeError('the tenant function answered a scope over 255 bytes')
  return t
}

export function tooLarge(limit: number): Problem {
  return new Problem(413, code.PAYLOAD_TOO_LARGE, `the request body is over ${limit} bytes`)
}

/** 413 at once when the declared `Content-Length` is over `maxBodyBytes`. */
export function checkContentLength<Req>(s: Settings<Req>, incoming: Incoming): void {
  for (const v of incoming.headers('content-length')) {
    const n = Number(v.trim())
    if (Number.isFinite(n) && n > s.maxBodyBytes) throw tooLarge(s.maxBodyBytes)
  }
}

/** A request body gathered chunk by chunk: 413 as soon as it is over `maxBodyBytes`. */
export class BodyReader {
  private chunks: Buffer[] = []
  private size = 0

  constructor(private readonly limit: number) {}

  push(chunk: Uint8Array): void {
    this.size += chunk.length
    if (this.size > this.limit) throw tooLarge(this.limit)
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length))
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks)
  }
}

/** `type/subtype` of a `Content-Type`, lower-cased; null without one. */
export function mediaType(contentType: string | undefined): string | null {
  if (contentType === undefined) return null
  const mt = contentType.split(';', 1)[0].trim().toLowerCase()
  return mt === '' ? null : mt
}

export function isJsonType(mt: string | null): boolean {
  return mt !== null && (mt === 'application/json' || (mt.endsWith('+json') && mt.includes('/')))
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Whether jsonb takes every string of the value: no NUL, no lone surrogate. */
function storable(value: unknown): boolean {
  const stack = [value]
  while (stack.length) {
    const v = stack.pop()
    if (typeof v === 'string') {
      if (v.includes('\0') || LONE_SURROGATE.test(v)) return false
    } else if (Array.isArray(v)) {
      stack.push(...v)
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) stack.push(k, x)
    }
  }
  return true
}

/**
 * The body's JSON text when the bytes are one JSON value (UTF-8) that jsonb takes, else null.
 * The text itself goes into the command, so that numbers stay exact and only the extension's
 * canonical form decides `1.0` against `1`.
 */
export function jsonText(body: Buffer): string | null {
  let text: string
  try {
    text = UTF8.decode(body)
    if (!storable(JSON.parse(text))) return null
  } catch {
    return null
  }
  return text
}

/** The command's `body` member as JSON text: null, `{media_type, json}` or `{media_type, sha256}`. */
export function bodyMember(contentType: string | undefined, body: Buffer): string {
  if (body.length === 0) return 'null'
  const mt = mediaType(contentType)
  if (isJsonType(mt)) {
    const text = jsonText(body)
    if (text !== null) return `{"media_type":${JSON.stringify(mt)},"json":${text}}`
  }
  return JSON.stringify({ media_type: mt, sha256: createHash('sha256').update(body).digest('hex') })
}

/** Every query parameter decoded (`+` is a space): name -> its values in order. */
export function queryMember(query: string): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  for (const [name, value] of new URLSearchParams(query)) {
    if (!Object.hasOwn(out, name)) out[name] = []
    out[name].push(value)
  }
  return out
}

export function headersMember<Req>(s: Settings<Req>, incoming: Incoming): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  for (const name of s.commandHeaders) {
    const values = incoming.headers(name)
    if (values.length) out[name] = values
  }
  return out
}

/** The command `{"v": 1, method, path, query, headers, body}` as the JSON text sent to idem_begin. */
export function commandText<Req>(s: Settings<Req>, incoming: Incoming, body: Buffer): string {
  const head = JSON.stringify({
    v: COMMAND_VERSION,
    method: incoming.method.toUpperCase(),
    path: incoming.path,
    query: queryMember(incoming.query),
    headers: headersMember(s, incoming),
  })
  return `${head.slice(0, -1)},"body":${bodyMember(incoming.headers('content-type')[0], body)}}`
}

/** A path as sent, percent-decoded (left as sent where it is not valid percent-encoding). */
export function decodePath(raw: string): string {
  try {
    return decodeURIComponent(raw)
  } catch {
    return raw
  }
}

/** What the flows need of a request, made once its body is read. */
export interface Prepared {
  scope: string
  key: string
  command: RawJson
  prefer: Prefer
  mode: Mode
}

export function prepare<Req>(s: Settings<Req>, req: Req, incoming: Incoming, key: string, scope: string, body: Buffer): Prepared {
  const mode = typeof s.mode === 'function' ? checkMode(s.mode(req)) : s.mode
  const prefer = parsePrefer(incoming.headers('prefer'), s.maxWait)
  return { scope, key, command: new RawJson(commandText(s, incoming, body)), prefer, mode }
}

// --- The response --------------------------------------------------------------------------

/** A response: the route's, a replay, or one of the layer's own answers. */
export interface Reply {
  status: number
  headers: [string, string][]
  body: Buffer
}

/** What the route answered, as the framework's adapter read it. */
export interface Captured {
  status: number
  headers: [string, string][]
  /** The whole body; null for a streamed one (no length known before the body). */
  body: Buffer | null
  /** The route raised (the framework made the 500). */
  threw: boolean
}

/** Whether the route's outcome is stored with `idem_complete` (else: `idem_fail`, retryable). */
export function stores(c: { status: number; body: Buffer | null; threw: boolean }): boolean {
  return !c.threw && c.body !== null && c.status < 500 && c.status !== 429
}

/** Transaction mode: whether the route's writes commit (not after a 5xx, a 429 or an exception). */
export function keepsWrites(c: Captured): boolean {
  return !c.threw && c.status < 500 && c.status !== 429
}

export interface StoredResponse {
  v: number
  headers: [string, string][]
  body?: string
  omitted?: true
}

/** The headers stored: those that describe the body and the named ones, never Set-Cookie. */
export function keptHeaders<Req>(s: Settings<Req>, headers: [string, string][]): [string, string][] {
  const out: [string, string][] = []
  for (const [n, v] of headers) {
    const name = n.toLowerCase()
    if (s.keep.has(name) && !NEVER_STORED.has(name)) out.push([name, v])
  }
  return out
}

/** `{"v": 1, "headers": [...], "body": <base64>}`, or `"omitted": true` for a body over `maxStoredBody`. */
export function storedResponse<Req>(s: Settings<Req>, headers: [string, string][], body: Buffer): StoredResponse {
  const doc: StoredResponse = { v: STORED_VERSION, headers: keptHeaders(s, headers) }
  if (body.length > s.maxStoredBody) doc.omitted = true
  else doc.body = body.toString('base64')
  return doc
}

export function omitted(doc: StoredResponse): StoredResponse {
  return { v: doc.v, headers: doc.headers, omitted: true }
}

/**
 * The headers and body of a stored response (body null: omitted). A response that is not in
 * the layer's format (stored by other code under the same scope) answers no header and no body.
 */
export function decodeStored(response: Json): { headers: [string, string][]; body: Buffer | null } {
  if (response === null || typeof response !== 'object' || Array.isArray(response) || response.v !== STORED_VERSION) {
    return { headers: [], body: Buffer.alloc(0) }
  }
  const headers: [string, string][] = []
  for (const h of Array.isArray(response.headers) ? response.headers : []) {
    if (Array.isArray(h) && h.length === 2 && typeof h[0] === 'string' && typeof h[1] === 'string') headers.push([h[0], h[1]])
  }
  if (response.omitted === true) return { headers, body: null }
  return { headers, body: typeof response.body === 'string' ? Buffer.from(response.body, 'base64') : Buffer.alloc(0) }
}

/** A replay: the stored status, headers in order and body, with `Idempotent-Replayed: true`. */
export function replayReply(b: Begin): Reply {
  const { headers, body } = decodeStored(b.response)
  headers.push([IDEMPOTENT_REPLAYED.toLowerCase(), 'true'])
  if (body === null) headers.push([REPLAY_BODY.toLowerCase(), 'omitted'])
  return { status: b.httpStatus ?? 200, headers, body: body ?? Buffer.alloc(0) }
}

export function problemReply(p: Problem): Reply {
  const headers: [string, string][] = [['content-type', PROBLEM_JSON]]
  for (const [k, v] of Object.entries(p.headers)) headers.push([k.toLowerCase(), v])
  return { status: p.status, headers, body: Buffer.from(JSON.stringify(p.body())) }
}

/** 409 `request_in_progress` with `Retry-After`; 202 with the same document under `Prefer: respond-async`. */
export function inProgressReply<Req>(s: Settings<Req>, lease: Lease | null, prefer: Prefer, key: string): Reply {
  const doc = problem(409, code.REQUEST_IN_PROGRESS, 'another request with this Idempotency-Key is being processed; retry after Retry-After seconds')
  const headers: [string, string][] = [
    ['content-type', PROBLEM_JSON],
    [RETRY_AFTER.toLowerCase(), String(lease ? lease.retryAfter : 1)],
  ]
  if (prefer.respondAsync && s.statusUrl) headers.push(['location', s.statusUrl(key)])
  return { status: prefer.respondAsync ? 202 : 409, headers, body: Buffer.from(JSON.stringify(doc)) }
}

/** The problem for an error met by the layer (422 for IK001, 409 for IK003, 503, 500...). */
export function errorReply(e: unknown): Reply {
  return problemReply(problemForError(e))
}

// --- Waiting (Prefer: wait) ----------------------------------------------------------------

const POLL_FIRST_MS = 25
const POLL_MAX_MS = 500
const SERVER_WAIT_MS = 1000

/**
 * The schedule of `Prefer: wait=N`: each `idem_begin` may wait up to 1 s in the server (for
 * an uncommitted holder); between calls, 25 ms doubling to 500 ms, until N seconds have passed.
 */
export class Poll {
  private readonly deadline: number
  private delay = POLL_FIRST_MS

  constructor(waitSeconds: number | null) {
    this.deadline = Date.now() + (waitSeconds ?? 0) * 1000
  }

  /** The `wait` of the next `idem_begin` (ms), or undefined when the wait is over. */
  serverWait(): number | undefined {
    const left = this.deadline - Date.now()
    return left >= 1 ? Math.min(SERVER_WAIT_MS, left) : undefined
  }

  /** Sleeps before the next poll; false when the wait is over. */
  async pause(): Promise<boolean> {
    const left = this.deadline - Date.now()
    if (left <= 0) return false
    const d = Math.min(this.delay, left)
    this.delay = Math.min(this.delay * 2, POLL_MAX_MS)
    await new Promise((r) => setTimeout(r, d))
    return true
  }
}

// --- The flows -------------------------------------------------------------------------------

/** What the route gets (`req.idempotency`, `c.get('idempotency')`). */
export interface Info {
  key: string
  scope: string
  /** The claim's attempt (1 for the first execution). */
  attempt: number
  mode: Mode
  /** Transaction mode: the connection whose transaction holds the claim (write through it; do not commit). */
  client?: PoolClient
}

/**
 * What the route callback rejects with when the client has gone (its connection closed while
 * the key was being claimed): the route is not called, the claim is released (phased: failed
 * retryably; transaction: rolled back), and the adapter ends the request without an answer.
 */
export class ClientGone extends Error {
  constructor() {
    super('the client closed the connection before the route was called')
    this.name = 'ClientGone'
  }
}

/** What the adapter does once the flow has ended. */
export type Result =
  /** Answer this instead of the route's response (a replay, an answer of the layer's own). */
  | { kind: 'reply'; reply: Reply }
  /** Send the route's captured response (stored, or released for a retry). */
  | { kind: 'send' }
  /** Pass the streamed response through as it comes, and call `ended()` once it has ended. */
  | { kind: 'stream'; ended: () => Promise<void> }

/** Runs the route: resolves with its response once the response is whole, or begins to stream. */
export type Route = (info: Info) => Promise<Captured>

/**
 * Claim, run the route or answer without it, store the outcome. A route that rejects (an
 * adapter's error, not the route's own exception, which arrives as `threw`) releases the key
 * or rolls back, and the rejection propagates.
 */
export function run<Req>(s: Settings<Req>, p: Prepared, route: Route): Promise<Result> {
  return p.mode === 'transaction' ? transactionFlow(s, p, route) : phasedFlow(s, p, route)
}

function onPool(s: { pool: Pool }): ClientBase {
  // The phased flow's statements are each one statement on its own: any pooled connection.
  return s.pool as unknown as ClientBase
}

/**
 * IK002 when the route's outcome is stored: the key is no longer in progress (its ttl ran out,
 * or `idem_forget`, while the route ran). The route's response is sent unstored, with a
 * warning; a retry executes again. Anything else is rethrown.
 */
function unstored(p: Prepared, e: unknown): void {
  if (!(e instanceof NotInProgress)) throw e
  console.warn(
    `idempotency: the key ${JSON.stringify(p.key)} (scope ${JSON.stringify(p.scope)}) was no longer in progress when the route's outcome was stored (found: ${e.found ?? 'unknown'}); the route's response is sent unstored, and a retry executes again`,
  )
}

async function held<Req>(s: Settings<Req>, p: Prepared, b: Begin, poll: Poll): Promise<Result | null> {
  if (b.outcome === 'replay') return { kind: 'reply', reply: replayReply(b) }
  if (await poll.pause()) return null
  return { kind: 'reply', reply: inProgressReply(s, await leaseOf(onPool(s), p.scope, p.key), p.prefer, p.key) }
}

async function phasedFlow<Req>(s: Settings<Req>, p: Prepared, route: Route): Promise<Result> {
  const poll = new Poll(p.prefer.wait)
  for (;;) {
    let c
    try {
      c = await claim(onPool(s), { scope: p.scope, key: p.key, command: p.command, ttl: s.ttl, lease: s.lease, wait: poll.serverWait() })
    } catch (e) {
      return { kind: 'reply', reply: errorReply(e) }
    }
    if (c.outcome !== 'execute') {
      const r = await held(s, p, c.begin, poll)
      if (r) return r
      continue
    }
    const attempt = c.attempt as number
    let captured: Captured
    try {
      captured = await route({ key: p.key, scope: p.scope, attempt, mode: 'phased' })
    } catch (e) {
      await c.fail({ retryable: true, httpStatus: 500 }).catch(() => undefined)
      throw e
    }
    try {
      if (captured.body === null) {
        const status = captured.status
        return { kind: 'stream', ended: () => c.fail({ retryable: true, httpStatus: status }).catch((e) => unstored(p, e)) }
      }
      if (!stores(captured)) {
        await c.fail({ retryable: true, httpStatus: captured.threw ? 500 : captured.status })
        return { kind: 'send' }
      }
      await store(onPool(s), s, p, captured, attempt)
      return { kind: 'send' }
    } catch (e) {
      try {
        unstored(p, e)
      } catch {
        return { kind: 'reply', reply: errorReply(e) }
      }
      return { kind: 'send' }
    }
  }
}

/**
 * Store the route's whole response: in the server's one statement, whole when it fits the
 * database's `idempotency.max_response_size`, else omitted (`completeFitting`).
 */
function store<Req>(client: ClientBase, s: Settings<Req>, p: Prepared, captured: Captured, attempt: number): Promise<void> {
  const doc = storedResponse(s, captured.headers, captured.body as Buffer)
  return completeFitting(client, p.scope, p.key, {
    response: doc as unknown as Json,
    omitted: (doc.omitted ? doc : omitted(doc)) as unknown as Json,
    httpStatus: captured.status,
    attempt,
  })
}

/**
 * Transaction mode: storing the outcome failed, and the COMMIT sent with it ended the aborted
 * transaction as a rollback: nothing of the request happened, the next retry executes. IK002
 * (the key's ttl ran out during the transaction) is 503 with Retry-After: 1; anything else
 * as the error maps.
 */
function rolledBack(p: Prepared, e: unknown): Reply {
  if (!(e instanceof NotInProgress)) return errorReply(e)
  console.warn(
    `idempotency: the key ${JSON.stringify(p.key)} (scope ${JSON.stringify(p.scope)}) was no longer in progress when the route's outcome was stored (found: ${e.found ?? 'unknown'}); the transaction was rolled back, and a retry executes again`,
  )
  return problemReply(new Problem(503, code.SERVICE_UNAVAILABLE, 'the idempotency key expired while the request ran; nothing was done: try again', { [RETRY_AFTER]: '1' }))
}

/**
 * ROLLBACK the layer's transaction after `e`; for a refusal (IK001, IK002, IK003), read its
 * data in the same flight. Resolves with the ROLLBACK's error, if any (the connection is then
 * not reused).
 */
async function rollbackAndLoad(client: PoolClient, e: unknown): Promise<Error | undefined> {
  const refusal = e instanceof RecordRefusal ? e : null
  const [rolled, read] = together(client, () => [client.query('ROLLBACK'), refusal ? client.query(refusal.recordQuery()) : null] as const)
  const [rb, record] = await Promise.allSettled([rolled, read ?? Promise.resolve(null)])
  refusal?.settle(record)
  return rb.status === 'rejected' ? (rb.reason as Error) : undefined
}

async function settle(statements: Promise<unknown>[]): Promise<void> {
  // Sent together (one round trip on a pipelined client); the first failure is thrown once all
  // have settled, so that no rejection is left unhandled.
  const results = await Promise.allSettled(statements)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}

async function transactionFlow<Req>(s: Settings<Req>, p: Prepared, route: Route): Promise<Result> {
  const poll = new Poll(p.prefer.wait)
  for (;;) {
    let client: PoolClient
    try {
      client = await s.pool.connect()
    } catch (e) {
      return { kind: 'reply', reply: errorReply(e) }
    }
    let keep = false // the client stays out of the pool until a stream has ended
    let broken: Error | undefined
    try {
      let b: Begin
      try {
        const [started, claimed] = together(client, () => [
          client.query('BEGIN'),
          begin(client, p.scope, p.key, p.command, { ttl: s.ttl, wait: poll.serverWait() }),
        ] as const)
        await settle([started, claimed])
        b = await claimed
      } catch (e) {
        // idem_begin ran in the layer's transaction: IK001's first use is read once it is
        // rolled back (the ROLLBACK and the read in one flight on a pipelined client).
        await rollbackAndLoad(client, e)
        return { kind: 'reply', reply: errorReply(e) }
      }
      if (b.outcome !== 'execute') {
        await client.query('ROLLBACK')
        const r = await held(s, p, b, poll)
        if (r) return r
        continue
      }
      const attempt = b.attempt as number
      let captured: Captured
      try {
        captured = await route({ key: p.key, scope: p.scope, attempt, mode: 'transaction', client })
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw e
      }
      try {
        if (!keepsWrites(captured)) {
          // 5xx, 429, an exception: nothing of the route's and no claim commits.
          await client.query('ROLLBACK')
          return captured.body === null ? { kind: 'stream', ended: async () => undefined } : { kind: 'send' }
        }
        // The outcome and COMMIT in one flight: if storing fails, the COMMIT ends the
        // aborted transaction as a rollback (the ROLLBACK below only makes sure of it).
        await settle(
          together(client, () => [
            captured.body === null
              ? // Streamed: the route's writes commit with the key failed retryably.
                fail(client, p.scope, p.key, { retryable: true, httpStatus: captured.status, attempt })
              : store(client, s, p, captured, attempt),
            client.query('COMMIT'),
          ]),
        )
        if (captured.body !== null) return { kind: 'send' }
        keep = true
        return { kind: 'stream', ended: async () => client.release() }
      } catch (e) {
        broken = await rollbackAndLoad(client, e)
        return { kind: 'reply', reply: rolledBack(p, e) }
      }
    } finally {
      if (!keep) client.release(broken)
    }
  }
}
