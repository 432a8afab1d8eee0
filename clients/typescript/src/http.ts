// The extension's answers mapped to HTTP, as plain functions any framework can call.
//
// | the extension says | status | code | headers |
// |---|---|---|---|
// | replay | the stored http_status | the stored problem's, for a failure | Idempotent-Replayed: true |
// | in_progress | 409 | request_in_progress | Retry-After: seconds to the lease end, at least 1 |
// | in_progress, Prefer: respond-async | 202 | | Location: /v1/idempotency-keys/<key> |
// | IK001 KeyReused | 422 | idempotency_key_reused | |
// | IK003 LeaseLost | 409 | request_in_progress | Retry-After: 1 |
// | IK002 NotInProgress | 500 | internal_error | |
// | 42501 NotOwner | 403 | forbidden | |
// | 22023, 22004 InvalidArgument | 400 | invalid_request | |
// | 40001 (after the retries), 25006, a lost connection | 503 | service_unavailable | Retry-After: 1 |
// | any other error | 500 | internal_error | |
//
// Errors are RFC 9457 problem documents (application/problem+json) with a stable `code`.

import { DatabaseError } from 'pg'
import { parseItem } from 'structured-headers'

import { InvalidArgument, KeyReused, LeaseLost, NotInProgress, NotOwner, SerializationFailure } from './errors'
import type { Begin, Json, Lease } from './model'

export const IDEMPOTENT_REPLAYED = 'Idempotent-Replayed'
export const RETRY_AFTER = 'Retry-After'
export const PROBLEM_JSON = 'application/problem+json'

export const code = {
  UNAUTHORIZED: 'unauthorized',
  INVALID_REQUEST: 'invalid_request',
  IDEMPOTENCY_KEY_MISSING: 'idempotency_key_missing',
  IDEMPOTENCY_KEY_INVALID: 'idempotency_key_invalid',
  IDEMPOTENCY_KEY_REUSED: 'idempotency_key_reused',
  PAYLOAD_TOO_LARGE: 'payload_too_large',
  REQUEST_IN_PROGRESS: 'request_in_progress',
  CARD_DECLINED: 'card_declined',
  PROCESSOR_UNAVAILABLE: 'processor_unavailable',
  REFUND_EXCEEDS_PAYMENT: 'refund_exceeds_payment',
  NOT_FOUND: 'not_found',
  // Beyond the payments service's list: answers that no request of its contract should get.
  FORBIDDEN: 'forbidden',
  SERVICE_UNAVAILABLE: 'service_unavailable',
  INTERNAL_ERROR: 'internal_error',
} as const

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  402: 'Payment Required',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Content Too Large',
  422: 'Unprocessable Content',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
}

/** A problem document with the `code` member (extra members merged in). */
export function problem(status: number, code: string, detail: string, extra: Record<string, Json> = {}): Record<string, Json> {
  return { ...extra, type: `urn:problem-type:${code}`, title: TITLES[status] ?? 'Error', status, detail, code }
}

/** An RFC 9457 problem: throw it from a handler, or send `body()` with `headers`. */
export class Problem extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
    readonly headers: Record<string, string> = {},
    readonly extra: Record<string, Json> = {},
  ) {
    super(`${status} ${code}: ${detail}`)
    this.name = 'Problem'
  }

  body(): Record<string, Json> {
    return problem(this.status, this.code, this.detail, this.extra)
  }
}

// --- The request side ---------------------------------------------------------------------

const BARE_TOKEN = /^[A-Za-z0-9._~:+/=-]+$/
const TENANT = /^[A-Za-z0-9_-]{1,64}$/

function invalidKey(detail: string): Problem {
  return new Problem(400, code.IDEMPOTENCY_KEY_INVALID, detail)
}

/**
 * The key from the `Idempotency-Key` header (undefined: missing; an array: several headers).
 * An RFC 8941 sf-string (parsed with a structured-field parser, no parameters) or a
 * bare token `[A-Za-z0-9._~:+/=-]+` name the same key; 1 to 255 bytes, no control characters.
 */
export function parseIdempotencyKey(header: string | string[] | undefined): string {
  if (header === undefined) throw new Problem(400, code.IDEMPOTENCY_KEY_MISSING, 'the Idempotency-Key header is required')
  if (Array.isArray(header)) {
    if (header.length !== 1) throw invalidKey('send exactly one Idempotency-Key header')
    header = header[0]
  }
  const raw = header.replace(/^[ \t]+|[ \t]+$/g, '')
  let key: string
  if (raw.startsWith('"')) {
    let value: unknown
    let params: Map<string, unknown>
    try {
      ;[value, params] = parseItem(raw)
    } catch {
      throw invalidKey('the Idempotency-Key is not a valid sf-string')
    }
    if (typeof value !== 'string') throw invalidKey('the Idempotency-Key is not a valid sf-string')
    if (params.size > 0) throw invalidKey('the Idempotency-Key takes no parameters')
    key = value
  } else if (BARE_TOKEN.test(raw)) {
    key = raw
  } else {
    throw invalidKey('the Idempotency-Key must be an sf-string or a token')
  }
  const bytes = Buffer.byteLength(key, 'utf8')
  if (bytes < 1 || bytes > 255) throw invalidKey('the Idempotency-Key must be 1 to 255 bytes')
  if (/[\x00-\x1f\x7f]/.test(key)) throw invalidKey('the Idempotency-Key must not hold control characters')
  return key
}

/** The tenant named by `Authorization: Bearer <tenant>` (`[A-Za-z0-9_-]{1,64}`); else 401. */
export function parseBearerTenant(header: string | undefined): string {
  const m = /^\s*(\S+) +(\S+)\s*$/.exec(header ?? '')
  if (m && m[1].toLowerCase() === 'bearer' && TENANT.test(m[2])) return m[2]
  throw new Problem(401, code.UNAUTHORIZED, 'send Authorization: Bearer <tenant>', { 'WWW-Authenticate': 'Bearer' })
}

export interface Prefer {
  respondAsync: boolean
  wait: number | null
}

/** `Prefer: respond-async` and `Prefer: wait=N` (RFC 7240); `wait` capped at `maxWait` seconds (10). */
export function parsePrefer(header: string | string[] | undefined, maxWait = 10): Prefer {
  const out: Prefer = { respondAsync: false, wait: null }
  for (const value of ([] as string[]).concat(header ?? [])) {
    for (const pref of value.split(',')) {
      const [name, arg = ''] = pref.split(';')[0].trim().split('=', 2)
      const n = name.trim().toLowerCase()
      if (n === 'respond-async') out.respondAsync = true
      else if (n === 'wait') {
        const w = Number.parseInt(arg.trim().replace(/^"|"$/g, ''), 10)
        if (Number.isFinite(w)) out.wait = Math.min(maxWait, Math.max(0, w))
      }
    }
  }
  return out
}

/** The fingerprinted command of an HTTP request: another endpoint or body is another one. */
export function command(method: string, path: string, body: Json): Json {
  return { method, path, body }
}

// --- The response side ----------------------------------------------------------------------

/** What to answer instead of executing. For a replay of a `resource`, `body` is undefined: rebuild it. */
export interface Answer {
  status: number
  headers: Record<string, string>
  body: Json | undefined
  code: string | null
}

export function mediaType(a: { status: number }): string {
  return a.status >= 400 ? PROBLEM_JSON : 'application/json'
}

/** The answer for `idem_begin`'s row, or null for `execute` (the caller does the work). */
export function answerForBegin(begin: Begin, options: { lease?: Lease | null; key?: string; prefer?: Prefer } = {}): Answer | null {
  if (begin.outcome === 'execute') return null
  if (begin.outcome === 'replay') return answerForReplay(begin)
  if (options.prefer?.respondAsync && options.key !== undefined) {
    return { status: 202, headers: { Location: `/v1/idempotency-keys/${encodeURIComponent(options.key)}` }, body: undefined, code: null }
  }
  const retry = options.lease ? options.lease.retryAfter : 1
  return {
    status: 409,
    headers: { [RETRY_AFTER]: String(retry) },
    body: problem(409, code.REQUEST_IN_PROGRESS, 'another request holds this idempotency key'),
    code: code.REQUEST_IN_PROGRESS,
  }
}

/** A replay: the stored status and `Idempotent-Replayed: true`; a stored failure's problem is the body. */
export function answerForReplay(begin: Begin): Answer {
  const status = begin.httpStatus ?? 200
  const r = begin.response
  const c = status >= 400 && r && typeof r === 'object' && !Array.isArray(r) && typeof r.code === 'string' ? r.code : null
  const body = begin.state === 'failed' || begin.resource === null ? begin.response : undefined
  return { status, headers: { [IDEMPOTENT_REPLAYED]: 'true' }, body, code: c }
}

/** The problem for an error of the client (or a database error). */
export function problemForError(e: unknown): Problem {
  if (e instanceof Problem) return e
  if (e instanceof KeyReused) {
    const at = e.firstUsedMicros === null ? null : rfc3339Micros(e.firstUsedMicros)
    const when = at ? ` at ${at}` : ''
    const extra: Record<string, Json> = at ? { first_used_at: at } : {}
    return new Problem(422, code.IDEMPOTENCY_KEY_REUSED, `this idempotency key was first used${when} with a different request; use a new key for a different request`, {}, extra)
  }
  if (e instanceof LeaseLost) return new Problem(409, code.REQUEST_IN_PROGRESS, 'another request took this idempotency key over', { [RETRY_AFTER]: '1' })
  if (e instanceof NotInProgress) return new Problem(500, code.INTERNAL_ERROR, 'the idempotency key is no longer in progress')
  if (e instanceof NotOwner) return new Problem(403, code.FORBIDDEN, 'this idempotency key belongs to another role')
  if (e instanceof InvalidArgument) return new Problem(400, code.INVALID_REQUEST, e.message)
  const state = e instanceof DatabaseError ? e.code : undefined
  if (e instanceof SerializationFailure || state === '40001' || state === '25006' || !(e instanceof DatabaseError)) {
    if (e instanceof SerializationFailure || state !== undefined || isConnectionError(e)) {
      return new Problem(503, code.SERVICE_UNAVAILABLE, 'the database is busy; try again', { [RETRY_AFTER]: '1' })
    }
  }
  return new Problem(500, code.INTERNAL_ERROR, 'internal error')
}

/** Epoch microseconds as RFC 3339 in UTC, to the microsecond: `2026-12-01T21:04:21.203170Z`. */
export function rfc3339Micros(us: bigint): string {
  const ms = us / 1000n - (us % 1000n < 0n ? 1n : 0n)
  const rest = us - ms * 1000n
  return `${new Date(Number(ms)).toISOString().slice(0, -1)}${String(rest).padStart(3, '0')}Z`
}

function isConnectionError(e: unknown): boolean {
  const c = (e as { code?: string })?.code
  return c === 'ECONNREFUSED' || c === 'ECONNRESET' || c === 'ENOENT' || c === 'EPIPE' || /Connection terminated|not queryable/.test(String((e as Error)?.message))
}
