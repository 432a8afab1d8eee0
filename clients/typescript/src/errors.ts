// The extension's errors as exception classes, chosen by SQLSTATE, never by message text.
//
// | SQLSTATE | class |
// |---|---|
// | IK001 | KeyReused (with the DETAIL's fields) |
// | IK002 | NotInProgress |
// | IK003 | LeaseLost |
// | 42501 | NotOwner |
// | 22023, 22004 | InvalidArgument |
// | 40001 | SerializationFailure (retried by retrySerialization) |
//
// Any other error is passed through as node-postgres raised it.

import { DatabaseError } from 'pg'

export class IdempotencyError extends Error {
  readonly sqlstate: string
  readonly detail: string | undefined
  readonly hint: string | undefined
  constructor(readonly cause: DatabaseError) {
    super(cause.message)
    this.name = new.target.name
    this.sqlstate = cause.code ?? ''
    this.detail = cause.detail
    this.hint = cause.hint
  }
}

/**
 * IK001: the key was first used with a different command (HTTP 422). `firstUsed` is the time
 * as the server printed it (session DateStyle and TimeZone), `firstUsedAt` that time parsed
 * when the DateStyle is ISO (the default); the fingerprints are the first 8 hex digits.
 */
export class KeyReused extends IdempotencyError {
  readonly scope: string | null
  readonly key: string | null
  readonly firstUsed: string | null
  readonly firstUsedAt: Date | null
  readonly storedFingerprint: string | null
  readonly givenFingerprint: string | null
  constructor(cause: DatabaseError, scope?: string, key?: string) {
    super(cause)
    const f = parseKeyReusedDetail(this.detail ?? '', scope, key)
    this.scope = f ? f.scope : (scope ?? null)
    this.key = f ? f.key : (key ?? null)
    this.firstUsed = f ? f.firstUsed : null
    this.storedFingerprint = f ? f.stored : null
    this.givenFingerprint = f ? f.given : null
    this.firstUsedAt = this.firstUsed ? parseIsoTimestamptz(this.firstUsed) : null
  }
}

/** IK002: complete, fail or checkpoint on a key that is not in progress. */
export class NotInProgress extends IdempotencyError {
  /** What the server found: absent, expired, completed or failed (null if unknown). */
  readonly found: 'absent' | 'expired' | 'completed' | 'failed' | null
  constructor(cause: DatabaseError) {
    super(cause)
    const m = / (has no record|has expired|is completed|has failed)\.$/.exec(this.detail ?? '')
    const by = { 'has no record': 'absent', 'has expired': 'expired', 'is completed': 'completed', 'has failed': 'failed' } as const
    this.found = m ? by[m[1] as keyof typeof by] : null
  }
}

/** IK003: another request took the key over; this holder must not report its outcome. */
export class LeaseLost extends IdempotencyError {
  readonly currentAttempt: number | null
  readonly givenAttempt: number | null
  constructor(cause: DatabaseError) {
    super(cause)
    const m = / is at attempt (-?\d+); this call is from attempt (-?\d+)\.$/.exec(this.detail ?? '')
    this.currentAttempt = m ? Number(m[1]) : null
    this.givenAttempt = m ? Number(m[2]) : null
  }
}

/** 42501: the record belongs to a role the caller is not a member of (HTTP 403). */
export class NotOwner extends IdempotencyError {}

/** 22023 (out of its domain) or 22004 (NULL). */
export class InvalidArgument extends IdempotencyError {}

/** 40001: the transaction met a concurrent commit it cannot see; run it again. */
export class SerializationFailure extends IdempotencyError {}

/** The error to throw for a database error: one of the classes above, or the error itself. */
export function translate(e: unknown, scope?: string, key?: string): unknown {
  if (!(e instanceof DatabaseError)) return e
  switch (e.code) {
    case 'IK001':
      return new KeyReused(e, scope, key)
    case 'IK002':
      return new NotInProgress(e)
    case 'IK003':
      return new LeaseLost(e)
    case '42501':
      return new NotOwner(e)
    case '22023':
    case '22004':
      return new InvalidArgument(e)
    case '40001':
      return new SerializationFailure(e)
    default:
      return e
  }
}

const TAIL =
  /^was first used at (.+) with command fingerprint ([0-9a-f]{8}); this request's fingerprint is ([0-9a-f]{8})\.$/
const HEAD = /^Scope "(.*)", key "(.*)" (?=was first used at )/

/**
 * IK001's DETAIL: `Scope "<scope>", key "<key>" was first used at <time> with command
 * fingerprint <8 hex>; this request's fingerprint is <8 hex>.` A scope or key may hold
 * `", key "` itself, so when the caller knows them the head is matched literally.
 */
export function parseKeyReusedDetail(
  detail: string,
  scope?: string,
  key?: string,
): { scope: string; key: string; firstUsed: string; stored: string; given: string } | null {
  let rest: string
  if (scope !== undefined && key !== undefined) {
    const head = `Scope "${scope}", key "${key}" `
    if (!detail.startsWith(head)) return null
    rest = detail.slice(head.length)
  } else {
    const h = HEAD.exec(detail)
    if (!h) return null
    scope = h[1]
    key = h[2]
    rest = detail.slice(h[0].length)
  }
  const t = TAIL.exec(rest)
  if (!t) return null
  return { scope, key, firstUsed: t[1], stored: t[2], given: t[3] }
}

const ISO = /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/

/** A timestamptz as PostgreSQL prints it with DateStyle ISO (to the millisecond), else null. */
export function parseIsoTimestamptz(text: string): Date | null {
  const m = ISO.exec(text)
  if (!m) return null
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number)
  const ms = Number((m[7] ?? '0').padEnd(6, '0').slice(0, 3))
  const offset = (Number(m[9]) * 3600 + Number(m[10] ?? 0) * 60 + Number(m[11] ?? 0)) * (m[8] === '+' ? 1 : -1)
  return new Date(Date.UTC(y, mo - 1, d, h, mi, s, ms) - offset * 1000)
}
