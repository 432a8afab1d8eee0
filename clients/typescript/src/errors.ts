// The extension's errors as exception classes, chosen by SQLSTATE alone: no message, DETAIL or
// HINT is read (the server's wording may change; the session's DateStyle does not matter).
//
// | SQLSTATE | class |
// |---|---|
// | IK001 | KeyReused (first use, both fingerprints: read from the record, see `load`) |
// | IK002 | NotInProgress (what was found: read from the record) |
// | IK003 | LeaseLost (the record's attempt: read from the record; the attempt given) |
// | 42501 | NotOwner |
// | 22023, 22004 | InvalidArgument |
// | 40001 | SerializationFailure (retried by retrySerialization) |
//
// Any other error is passed through as node-postgres raised it.
//
// What a caller needs after IK001, IK002 or IK003 comes from one follow-up read of the record
// (`SQL_RECORD`), which the library runs itself where the connection can run it: right after
// it rolled back its own transaction (`transaction()`, `claim(...).finish()`), and after a
// plain call made outside any transaction (autocommit, a pool; the phased way). After a plain
// call inside a transaction the caller owns, the data stay empty (`loaded` false) until the
// caller, after its ROLLBACK, calls `load(client)`. The data are the record as read right
// after the refusal: it may have changed meanwhile (completed, expired, purged).

import { DatabaseError, types as pgTypes } from 'pg'
import type { CustomTypesConfig, QueryConfig, QueryResult } from 'pg'

import { jsonb, type JsonInput } from './model'

/** What the follow-up read needs to know of the refused call. */
export interface CallContext {
  scope?: string
  key?: string
  /** The command of the call (IK001: its fingerprint is computed by the server). */
  command?: JsonInput
  /** The attempt the call gave (IK003). */
  attempt?: number | null
}

/** Anything that runs a query: a client, a pool client, a pool. */
export interface Queryable {
  query(config: QueryConfig): Promise<QueryResult>
}

export class IdempotencyError extends Error {
  readonly sqlstate: string
  readonly detail: string | undefined
  readonly hint: string | undefined
  constructor(readonly cause: DatabaseError) {
    super(cause.message)
    this.name = new.target.name
    this.sqlstate = cause.code ?? ''
    // Kept for logs only: no code of this library reads them.
    this.detail = cause.detail
    this.hint = cause.hint
  }
}

/**
 * The follow-up read of a refusal: the record (`idem_check`, read by column name, so that the
 * stored `fingerprint` of a 0.4.0 server is read when present), its creation time as exact
 * epoch microseconds (no timestamp goes through text), and the given command's fingerprint
 * ($3; NULL when there is none: `idem_fingerprint` is STRICT). One statement, independent of
 * DateStyle and TimeZone.
 */
export const SQL_RECORD =
  'SELECT c.*, (extract(epoch FROM c.created_at) * 1000000)::bigint AS first_used_us,' +
  ' idem_fingerprint($3::jsonb) AS given_fingerprint FROM idem_check($1, $2) AS c'

const BYTEA = 17
const INT4 = 23

function bytea(text: string): Buffer {
  if (text.startsWith('\\x')) return Buffer.from(text.slice(2), 'hex')
  return pgTypes.getTypeParser(BYTEA, 'text')(text) as Buffer // bytea_output = escape
}

/**
 * The follow-up's own parsers, whatever the application set globally: int8 stays text (made a
 * BigInt here), bytea a Buffer, int4 a number, and every other column text (the record's
 * timestamps are not parsed at all).
 */
const RECORD_TYPES: CustomTypesConfig = {
  getTypeParser: ((oid: number) => {
    if (oid === BYTEA) return bytea
    if (oid === INT4) return (v: string) => Number(v)
    return (v: string) => v
  }) as CustomTypesConfig['getTypeParser'],
}

/* eslint-disable @typescript-eslint/no-explicit-any */
type RecordRow = Record<string, any>

/** IK001, IK002, IK003: a refusal whose data come from a read of the record. */
export abstract class RecordRefusal extends IdempotencyError {
  readonly scope: string | null
  readonly key: string | null
  #loaded = false
  /** @internal */
  protected readonly context: CallContext

  constructor(cause: DatabaseError, context: CallContext = {}) {
    super(cause)
    this.context = context
    this.scope = context.scope ?? null
    this.key = context.key ?? null
  }

  /** Whether the data were read (by the library after the refusal, or by `load`). */
  get loaded(): boolean {
    return this.#loaded
  }

  /** @internal The follow-up statement (SQL_RECORD) with this refusal's parameters. */
  recordQuery(): QueryConfig {
    return { text: SQL_RECORD, values: [this.scope, this.key, jsonb(this.context.command)], types: RECORD_TYPES }
  }

  /**
   * Read the data of this refusal from the record, on a connection that can run a statement:
   * outside any transaction, or in a new one (never in the aborted transaction of the refused
   * call: roll it back first). Resolves with whether it read them; a failed read (connection
   * lost, ...) leaves the data empty and is not thrown: the refusal stays the error to handle.
   * The data are the record as read now, which may have changed since the refusal.
   */
  async load(client: Queryable): Promise<boolean> {
    if (this.scope === null || this.key === null) return false
    let row: RecordRow | undefined
    try {
      row = (await client.query(this.recordQuery())).rows[0]
    } catch {
      return false
    }
    if (!row) return false
    this.fill(row)
    this.#loaded = true
    return true
  }

  /** @internal */
  settle(result: PromiseSettledResult<QueryResult | null>): void {
    if (result.status !== 'fulfilled' || !result.value?.rows[0]) return
    this.fill(result.value.rows[0])
    this.#loaded = true
  }

  protected abstract fill(row: RecordRow): void
}

/**
 * IK001: the key was first used with a different command (HTTP 422). The data (null until
 * `loaded`): `firstUsedAt` the record's creation (a Date, to the millisecond) and
 * `firstUsedMicros` the same instant exactly (microseconds since 1970-01-01 UTC);
 * `storedFingerprint` the 32-byte fingerprint of the record's command (read from a 0.4.0
 * server's `idem_check`; null from a 0.3.0 one) and `givenFingerprint` the refused command's.
 * A record gone since the refusal (expired, purged) leaves the first use null.
 */
export class KeyReused extends RecordRefusal {
  #firstUsedMicros: bigint | null = null
  #storedFingerprint: Buffer | null = null
  #givenFingerprint: Buffer | null = null

  get firstUsedMicros(): bigint | null {
    return this.#firstUsedMicros
  }
  get firstUsedAt(): Date | null {
    // Floor division: the Date holds the millisecond the instant falls in.
    const us = this.#firstUsedMicros
    if (us === null) return null
    const ms = us / 1000n - (us % 1000n < 0n ? 1n : 0n)
    return new Date(Number(ms))
  }
  get storedFingerprint(): Buffer | null {
    return this.#storedFingerprint
  }
  get givenFingerprint(): Buffer | null {
    return this.#givenFingerprint
  }

  protected fill(row: RecordRow): void {
    const us = row.first_used_us
    this.#firstUsedMicros = us === null || us === undefined ? null : BigInt(us)
    this.#storedFingerprint = 'fingerprint' in row ? (row.fingerprint ?? null) : null
    this.#givenFingerprint = row.given_fingerprint ?? null
  }
}

/** What IK002 found: `idem_check`'s state (an expired record is `absent`). */
export type Found = 'absent' | 'in_progress' | 'completed' | 'failed'

/**
 * IK002: complete, fail or checkpoint on a key that is not in progress. `found` (null until
 * `loaded`): the record's state as read after the refusal, `absent` (no record, or expired),
 * `completed`, `failed`, or `in_progress` if another request claimed it meanwhile.
 */
export class NotInProgress extends RecordRefusal {
  #found: Found | null = null

  get found(): Found | null {
    return this.#found
  }

  protected fill(row: RecordRow): void {
    this.#found = row.state ?? null
  }
}

/**
 * IK003: another request took the key over; this holder must not report its outcome.
 * `givenAttempt` is the attempt the call gave; `currentAttempt` (null until `loaded`, and for
 * a record gone since) the record's attempt as read after the refusal.
 */
export class LeaseLost extends RecordRefusal {
  readonly givenAttempt: number | null
  #currentAttempt: number | null = null

  constructor(cause: DatabaseError, context: CallContext = {}) {
    super(cause, context)
    this.givenAttempt = context.attempt ?? null
  }

  get currentAttempt(): number | null {
    return this.#currentAttempt
  }

  protected fill(row: RecordRow): void {
    this.#currentAttempt = row.attempt ?? null
  }
}

/** 42501: the record belongs to a role the caller is not a member of (HTTP 403). */
export class NotOwner extends IdempotencyError {}

/** 22023 (out of its domain) or 22004 (NULL). */
export class InvalidArgument extends IdempotencyError {}

/** 40001: the transaction met a concurrent commit it cannot see; run it again. */
export class SerializationFailure extends IdempotencyError {}

/**
 * The error to throw for a database error: one of the classes above (by its SQLSTATE alone),
 * or the error itself. A refusal's data are empty: see `RecordRefusal.load`.
 */
export function translate(e: unknown, context: CallContext = {}): unknown {
  if (!(e instanceof DatabaseError)) return e
  switch (e.code) {
    case 'IK001':
      return new KeyReused(e, context)
    case 'IK002':
      return new NotInProgress(e, context)
    case 'IK003':
      return new LeaseLost(e, context)
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
