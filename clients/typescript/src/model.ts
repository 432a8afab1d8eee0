// The typed results of the extension's functions and the SQL that calls them.

/** What `idem_begin` tells the caller to do. */
export type Outcome = 'execute' | 'replay' | 'in_progress'

/** A record's state (`absent` only from `idem_check`). */
export type State = 'absent' | 'in_progress' | 'completed' | 'failed'

/** A JSON value as node-postgres parses jsonb. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/**
 * JSON text passed to the database as it is: for commands whose numbers a JavaScript number
 * cannot hold exactly (beyond 2^53, or more digits than a double keeps), since the fingerprint
 * is computed over the exact decimal value.
 */
export class RawJson {
  constructor(readonly text: string) {}
}

export type JsonInput = Json | RawJson | undefined

/** An interval: milliseconds, or PostgreSQL interval text such as `'30 seconds'`. */
export type Interval = number | string

/** The one row of `idem_begin`. */
export interface Begin {
  outcome: Outcome
  state: State
  attempt: number | null
  recoveryPoint: string | null
  recoveryData: Json
  httpStatus: number | null
  response: Json
  resource: string | null
  fingerprint: Buffer
  expiresAt: Date | null
}

/** The one row of `idem_check`. */
export interface Check {
  state: State
  matches: boolean | null
  attempt: number | null
  recoveryPoint: string | null
  httpStatus: number | null
  response: Json
  resource: string | null
  createdAt: Date | null
  expiresAt: Date | null
  leaseExpiresAt: Date | null
}

/** When a held key's lease ends, read with the database's clock. */
export class Lease {
  constructor(
    readonly leaseExpiresAt: Date | null,
    readonly now: Date,
  ) {}

  /** Whole seconds until the lease ends, at least 1 (the HTTP `Retry-After`). */
  get retryAfter(): number {
    if (this.leaseExpiresAt === null) return 1
    const ms = this.leaseExpiresAt.getTime() - this.now.getTime()
    return Math.max(1, Math.ceil(ms / 1000))
  }
}

export const SQL = {
  begin:
    'SELECT outcome, state, attempt, recovery_point, recovery_data, http_status, response, resource,' +
    ' fingerprint, expires_at FROM idem_begin($1, $2, $3::jsonb, ttl => $4::interval,' +
    ' lease => $5::interval, wait => $6::interval)',
  complete:
    'SELECT idem_complete($1, $2, response => $3::jsonb, resource => $4, http_status => $5::int,' +
    ' attempt => $6::int)',
  fail:
    'SELECT idem_fail($1, $2, error => $3::jsonb, retryable => $4::boolean, http_status => $5::int,' +
    ' attempt => $6::int)',
  checkpoint: 'SELECT idem_checkpoint($1, $2, $3, data => $4::jsonb, attempt => $5::int) AS lease_end',
  check:
    'SELECT state, matches, attempt, recovery_point, http_status, response, resource, created_at,' +
    ' expires_at, lease_expires_at FROM idem_check($1, $2, $3::jsonb)',
  // The lease end with the clock that enforces it, the database server's.
  lease: 'SELECT lease_expires_at, clock_timestamp() AS now FROM idem_check($1, $2)',
  fingerprint: 'SELECT idem_fingerprint($1::jsonb) AS v',
  canonical: 'SELECT idem_canonical($1::jsonb) AS v',
  purge: 'SELECT idem_purge($1::int) AS v',
  forget: 'SELECT idem_forget($1, $2) AS v',
  savepoint: 'SAVEPOINT idempotency_work',
  rollbackToSavepoint: 'ROLLBACK TO SAVEPOINT idempotency_work',
} as const

/** A JSON value as a jsonb parameter; undefined and null are SQL NULL ("none"). */
export function jsonb(value: JsonInput): string | null {
  if (value === undefined || value === null) return null
  if (value instanceof RawJson) return value.text
  return JSON.stringify(value)
}

export function interval(value: Interval | undefined): string | null {
  if (value === undefined) return null
  return typeof value === 'number' ? `${value} milliseconds` : value
}

/* eslint-disable @typescript-eslint/no-explicit-any */
export function beginRow(row: any): Begin {
  if (!row) throw new Error('idem_begin returned no row')
  return {
    outcome: row.outcome,
    state: row.state,
    attempt: row.attempt,
    recoveryPoint: row.recovery_point,
    recoveryData: row.recovery_data,
    httpStatus: row.http_status,
    response: row.response,
    resource: row.resource,
    fingerprint: row.fingerprint,
    expiresAt: row.expires_at,
  }
}

export function checkRow(row: any): Check {
  if (!row) throw new Error('idem_check returned no row')
  return {
    state: row.state,
    matches: row.matches,
    attempt: row.attempt,
    recoveryPoint: row.recovery_point,
    httpStatus: row.http_status,
    response: row.response,
    resource: row.resource,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    leaseExpiresAt: row.lease_expires_at,
  }
}

export function leaseRow(row: any): Lease {
  if (!row) throw new Error('idem_check returned no row')
  return new Lease(row.lease_expires_at, row.now)
}
