// The client on node-postgres: the SQL functions as typed calls, and the one-transaction
// (`transaction`) and phased (`claim`) helpers.
//
// On a client made with `pipeline: true` (node-postgres 8.23+), the helpers write the
// statements whose results they do not need yet together, so that BEGIN + idem_begin +
// SAVEPOINT cost one round trip and the completion + COMMIT another (docs/clients.md has the
// round trips of each flow). On an ordinary client the same statements go one by one.

import type { ClientBase, QueryConfig, QueryResult } from 'pg'

import { translate, RecordRefusal, SerializationFailure, type CallContext } from './errors'
import {
  SQL,
  Begin,
  Check,
  Interval,
  Json,
  JsonInput,
  Lease,
  Outcome,
  beginRow,
  checkRow,
  interval,
  jsonb,
  leaseRow,
} from './model'

type Statement = [text: string, values?: unknown[]] | QueryConfig

function send(client: ClientBase, s: Statement): Promise<QueryResult> {
  return Array.isArray(s) ? client.query(s[0], s[1]) : client.query(s)
}

function pipelined(client: ClientBase): boolean {
  return (client as unknown as { pipeline?: boolean }).pipeline === true
}

/**
 * Calls `send`, which issues statements without awaiting them; on a pipelined client, they
 * reach the socket in one write (node-postgres writes each statement on its own, one system
 * call each, unless the socket is corked around them).
 */
export function together<T>(client: ClientBase, send: () => T): T {
  const stream = pipelined(client) ? (client as unknown as { connection?: { stream?: { cork?: () => void; uncork?: () => void } } }).connection?.stream : undefined
  if (!stream?.cork || !stream.uncork) return send()
  stream.cork()
  try {
    return send()
  } finally {
    stream.uncork()
  }
}

/**
 * Send the statements in order; on a pipelined client all at once (one round trip, one
 * write), else one after the other. Every result is settled: one failure does not hide the
 * others.
 */
async function batch(client: ClientBase, statements: Statement[]): Promise<PromiseSettledResult<QueryResult>[]> {
  if (pipelined(client)) {
    return Promise.allSettled(together(client, () => statements.map((s) => send(client, s))))
  }
  // One by one, the statements after a failure are not sent: in the aborted transaction they
  // could only fail too.
  const out: PromiseSettledResult<QueryResult>[] = []
  let failed: unknown
  for (const s of statements) {
    if (failed !== undefined) {
      out.push({ status: 'rejected', reason: failed })
      continue
    }
    try {
      out.push({ status: 'fulfilled', value: await send(client, s) })
    } catch (reason) {
      failed = reason
      out.push({ status: 'rejected', reason })
    }
  }
  return out
}

function firstError(results: PromiseSettledResult<unknown>[]): unknown {
  for (const r of results) if (r.status === 'rejected') return r.reason
  return undefined
}

async function rollback(client: ClientBase): Promise<void> {
  // After a failed COMMIT there is no transaction left: the warning that ROLLBACK then gives
  // is harmless.
  await client.query('ROLLBACK').catch(() => undefined)
}

/**
 * Roll back the library's own transaction after `e`; for a refusal (IK001, IK002, IK003), read
 * its data in the same flight (one round trip on a pipelined client), now that the connection
 * is out of the aborted transaction. A failed read leaves the data empty.
 */
async function rollbackAfter(client: ClientBase, e: unknown): Promise<void> {
  if (!(e instanceof RecordRefusal)) return rollback(client)
  const [, record] = await batch(client, [['ROLLBACK'], e.recordQuery()])
  e.settle(record)
}

/* eslint-disable @typescript-eslint/no-explicit-any */
/**
 * Whether a statement sent now runs outside any transaction: a pool (each statement on an idle
 * connection of its own), or a node-postgres client that is idle (transaction status `I`, as
 * of its last ReadyForQuery) with nothing queued or in flight that could change it first.
 */
function outsideTransaction(client: ClientBase): boolean {
  const c = client as any
  if (typeof c.getTransactionStatus !== 'function') {
    return typeof c.connect === 'function' && typeof c.totalCount === 'number' // a pg.Pool
  }
  return (
    c.getTransactionStatus() === 'I' &&
    c.readyForQuery === true &&
    !c._activeQuery &&
    !(c._queryQueue?.length > 0) &&
    !(c._sentQueryQueue?.length > 0)
  )
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/**
 * One statement of a plain call. A refusal's data are read at once when the call ran outside
 * any transaction; inside one (the caller's), they stay empty: `load` them after the rollback.
 */
async function one(client: ClientBase, text: string, values: unknown[], context: CallContext = {}) {
  const autocommit = outsideTransaction(client)
  try {
    return (await client.query(text, values)).rows[0]
  } catch (err) {
    const e = translate(err, context)
    if (autocommit && e instanceof RecordRefusal) await e.load(client)
    throw e
  }
}

// --- Plain calls -------------------------------------------------------------------------

export interface BeginOptions {
  ttl?: Interval
  lease?: Interval
  wait?: Interval
}

function beginParams(scope: string, key: string, command: JsonInput, o: BeginOptions): unknown[] {
  return [scope, key, jsonb(command), interval(o.ttl), interval(o.lease), interval(o.wait)]
}

/** `idem_begin`: claim the key, or learn that it is stored or held. */
export async function begin(client: ClientBase, scope: string, key: string, command: JsonInput, options: BeginOptions = {}): Promise<Begin> {
  return beginRow(await one(client, SQL.begin, beginParams(scope, key, command, options), { scope, key, command }))
}

export interface CompleteOptions {
  response?: JsonInput
  resource?: string
  httpStatus?: number
}

export interface FailOptions {
  error?: JsonInput
  retryable?: boolean
  httpStatus?: number
}

function completeParams(scope: string, key: string, o: CompleteOptions, attempt: number | null | undefined): unknown[] {
  return [scope, key, jsonb(o.response), o.resource ?? null, o.httpStatus ?? 200, attempt ?? null]
}

function failParams(scope: string, key: string, o: FailOptions, attempt: number | null | undefined): unknown[] {
  return [scope, key, jsonb(o.error), o.retryable ?? true, o.httpStatus ?? 500, attempt ?? null]
}

/** `idem_complete`: store the final outcome of a key in progress. */
export async function complete(client: ClientBase, scope: string, key: string, options: CompleteOptions & { attempt?: number } = {}): Promise<void> {
  await one(client, SQL.complete, completeParams(scope, key, options, options.attempt), { scope, key, attempt: options.attempt })
}

/**
 * `idem_complete` of a response that the server stores whole when it fits the database's
 * `idempotency.max_response_size` (the size the extension checks: the jsonb's, uncompressed,
 * without its 4-byte header, hence the `- 4`),
 * else in its `omitted` form: decided in the same statement, so that no savepoint and no
 * second try are needed when the setting is lower than the layer's own limit.
 */
export const SQL_COMPLETE_FITTING =
  'SELECT idem_complete($1, $2, response => CASE WHEN pg_column_size($3::jsonb) - 4' +
  " <= pg_size_bytes(current_setting('idempotency.max_response_size')) THEN $3::jsonb ELSE $4::jsonb END," +
  ' http_status => $5::int, attempt => $6::int)'

export interface CompleteFittingOptions {
  response: JsonInput
  /** Stored instead of `response` when that is over the database's limit. */
  omitted: JsonInput
  httpStatus?: number
  attempt?: number
}

/** `idem_complete` with `response`, or `omitted` when the response is over `idempotency.max_response_size`. */
export async function completeFitting(client: ClientBase, scope: string, key: string, o: CompleteFittingOptions): Promise<void> {
  await one(client, SQL_COMPLETE_FITTING, [scope, key, jsonb(o.response), jsonb(o.omitted), o.httpStatus ?? 200, o.attempt ?? null], { scope, key, attempt: o.attempt })
}

/** `idem_fail`: store a failure; a retryable one is executed again by the next request. */
export async function fail(client: ClientBase, scope: string, key: string, options: FailOptions & { attempt?: number } = {}): Promise<void> {
  await one(client, SQL.fail, failParams(scope, key, options, options.attempt), { scope, key, attempt: options.attempt })
}

/** `idem_checkpoint`: record progress and renew the lease; returns the new lease end. */
export async function checkpoint(client: ClientBase, scope: string, key: string, recoveryPoint: string, data?: JsonInput, options: { attempt?: number } = {}): Promise<Date> {
  return (await one(client, SQL.checkpoint, [scope, key, recoveryPoint, jsonb(data), options.attempt ?? null], { scope, key, attempt: options.attempt })).lease_end
}

/** `idem_check`: the key's committed state; read-only, works on a hot standby. */
export async function check(client: ClientBase, scope: string, key: string, command?: JsonInput): Promise<Check> {
  return checkRow(await one(client, SQL.check, [scope, key, jsonb(command)], { scope, key }))
}

/** When the key's lease ends, with the database's clock (for `Retry-After`). */
export async function lease(client: ClientBase, scope: string, key: string): Promise<Lease> {
  return leaseRow(await one(client, SQL.lease, [scope, key], { scope, key }))
}

/** `idem_fingerprint`: the 32-byte SHA-256 of the canonical command. */
export async function fingerprint(client: ClientBase, command: JsonInput): Promise<Buffer> {
  return (await one(client, SQL.fingerprint, [jsonb(command)])).v
}

/** `idem_canonical`: the exact text that is hashed. */
export async function canonical(client: ClientBase, command: JsonInput): Promise<string> {
  return (await one(client, SQL.canonical, [jsonb(command)])).v
}

/** `idem_purge`: delete up to `maxRows` expired records; returns how many. */
export async function purge(client: ClientBase, maxRows = 10000): Promise<number> {
  return Number((await one(client, SQL.purge, [maxRows])).v)
}

/** `idem_forget`: an operator's eviction of one live key. */
export async function forget(client: ClientBase, scope: string, key: string): Promise<boolean> {
  return (await one(client, SQL.forget, [scope, key], { scope, key })).v
}

/**
 * Run `fn` again when it fails with 40001, up to `attempts` times in all. `fn` must run a
 * whole transaction (a `transaction(...)` call): only running it again from the start can
 * succeed. Waits between runs grow exponentially, with jitter.
 */
export async function retrySerialization<T>(fn: () => Promise<T>, options: { attempts?: number; baseDelayMs?: number } = {}): Promise<T> {
  const attempts = options.attempts ?? 5
  const base = options.baseDelayMs ?? 10
  for (let i = 0; ; i++) {
    try {
      return await fn()
    } catch (e) {
      const serialization = e instanceof SerializationFailure || (e as { code?: string })?.code === '40001'
      if (!serialization || i === attempts - 1) throw e
    }
    await new Promise((r) => setTimeout(r, base * 2 ** i * (0.5 + Math.random())))
  }
}

// --- Helpers that own their transactions ------------------------------------------------

/** The end of a unit of work: what it records is written with the commit. */
class Finishing {
  protected final: ['complete', unknown[]] | ['fail', unknown[]] | null = null
  protected executing = true
  protected pending: Promise<QueryResult>[] = []

  constructor(
    readonly client: ClientBase,
    readonly scope: string,
    readonly key: string,
    protected fencing: number | null,
  ) {}

  /** Store this outcome when the work ends (with the commit, in one round trip). */
  complete(options: CompleteOptions = {}): void {
    this.record(['complete', completeParams(this.scope, this.key, options, this.fencing)])
  }

  /**
   * Store a failure when the work ends: the work's own writes are rolled back to the
   * savepoint taken after the claim; the failure commits.
   */
  fail(options: FailOptions = {}): void {
    this.record(['fail', failParams(this.scope, this.key, options, this.fencing)])
  }

  /**
   * A statement of the work whose result the work does not wait for: sent at once, and
   * awaited with the completion (one round trip for both on a pipelined client). If it
   * fails, nothing commits and its error is thrown.
   */
  query(text: string, values?: unknown[]): Promise<QueryResult> {
    const p = this.client.query(text, values)
    p.catch(() => undefined) // settled with the completion
    this.pending.push(p)
    return p
  }

  private record(final: NonNullable<Finishing['final']>): void {
    if (!this.executing) throw new Error('only a request that executes may complete or fail the key')
    if (this.final) throw new Error(`the key was already marked to ${this.final[0]}`)
    this.final = final
  }

  /** Writes the recorded outcome and commits; rolls back and throws on any error. */
  protected async finish(before: Promise<QueryResult>[]): Promise<void> {
    if (!this.final) {
      await Promise.allSettled([...before, ...this.pending])
      await rollback(this.client)
      throw new Error('the work ended without complete() or fail(): nothing was stored')
    }
    let statements: Statement[]
    if (this.final[0] === 'fail') {
      // The failure must not commit over a statement of the work that failed unseen.
      const err = firstError(await Promise.allSettled([...before, ...this.pending]))
      if (err !== undefined) return this.abort(err)
      before = []
      this.pending = []
      statements = [[SQL.rollbackToSavepoint], [SQL.fail, this.final[1]], ['COMMIT']]
    } else {
      statements = [[SQL.complete, this.final[1]], ['COMMIT']]
    }
    const earlier = Promise.allSettled([...before, ...this.pending])
    const results = await batch(this.client, statements)
    const err = firstError([...(await earlier), ...results])
    if (err !== undefined) return this.abort(err)
  }

  protected async abort(err: unknown): Promise<never> {
    const e = translate(err, { scope: this.scope, key: this.key, attempt: this.fencing })
    await rollbackAfter(this.client, e)
    throw e
  }

  protected async abandon(before: Promise<QueryResult>[]): Promise<void> {
    await Promise.allSettled([...before, ...this.pending])
    await rollback(this.client)
  }
}

/** The one-transaction way: see `transaction()`. */
export class Transaction extends Finishing {
  /** For `in_progress`: when the holder's lease ends (read when the work returns). */
  lease: Lease | null = null

  constructor(
    client: ClientBase,
    scope: string,
    key: string,
    readonly begin: Begin,
  ) {
    super(client, scope, key, begin.attempt)
    this.executing = begin.outcome === 'execute'
  }

  get outcome(): Outcome {
    return this.begin.outcome
  }

  get attempt(): number | null {
    return this.begin.attempt
  }

  /** @internal */
  async end(failed: unknown, threw: boolean): Promise<void> {
    if (threw) {
      await this.abandon([])
      throw failed
    }
    if (this.executing) return this.finish([])
    await Promise.allSettled(this.pending)
    if (this.begin.outcome === 'in_progress') {
      const [l, rb] = await batch(this.client, [[SQL.lease, [this.scope, this.key]], ['ROLLBACK']])
      if (l.status === 'rejected' || rb.status === 'rejected') return this.abort(firstError([l, rb]))
      this.lease = leaseRow(l.value.rows[0])
    } else {
      const [rb] = await batch(this.client, [['ROLLBACK']])
      if (rb.status === 'rejected') throw rb.reason
    }
  }
}

export interface Request {
  scope: string
  key: string
  command: JsonInput
  ttl?: Interval
  wait?: Interval
}

/**
 * The one-transaction helper. BEGIN, `idem_begin` and a savepoint (one round trip on a
 * pipelined client), then `work(tx)`: on `execute` do the work on `tx.client` and call
 * `tx.complete(...)` or `tx.fail(...)`; then the completion (or the rollback to the savepoint
 * and the failure) and COMMIT, in one round trip. On `replay` and `in_progress` the
 * transaction is rolled back (for `in_progress`, `tx.lease` tells when the holder's lease
 * ends). If `work` throws, everything is rolled back, the claim included, and the error
 * propagates: a retry starts afresh. The client must not be inside a transaction.
 */
export async function transaction<T>(client: ClientBase, request: Request, work: (tx: Transaction) => Promise<T>): Promise<{ tx: Transaction; value: T }> {
  const { scope, key } = request
  const params = beginParams(scope, key, request.command, { ttl: request.ttl, wait: request.wait })
  const [b, row, sp] = await batch(client, [['BEGIN'], [SQL.begin, params], [SQL.savepoint]])
  const err = firstError([b, row, sp])
  if (err !== undefined || row.status !== 'fulfilled') {
    const e = translate(err, { scope, key, command: request.command })
    await rollbackAfter(client, e)
    throw e
  }
  const tx = new Transaction(client, scope, key, beginRow(row.value.rows[0]))
  let value: T
  try {
    value = await work(tx)
  } catch (e) {
    await tx.end(e, true)
    throw e
  }
  await tx.end(undefined, false)
  return { tx, value }
}

/** The last phase of a claim: see `Claim.finish()`. */
export class Finish extends Finishing {
  /** @internal */
  async run<T>(work: (f: Finish) => Promise<T>): Promise<T> {
    // BEGIN and the savepoint go out now; their results are awaited with the completion.
    const started = pipelined(this.client)
      ? together(this.client, () => [this.client.query('BEGIN'), this.client.query(SQL.savepoint)])
      : [await this.client.query('BEGIN'), await this.client.query(SQL.savepoint)].map((r) => Promise.resolve(r))
    started.forEach((p) => p.catch(() => undefined))
    let value: T
    try {
      value = await work(this)
    } catch (e) {
      await this.abandon(started)
      throw e
    }
    await this.finish(started)
    return value
  }
}

/** A committed claim of the phased way: see `claim()`. */
export class Claim {
  constructor(
    readonly client: ClientBase,
    readonly scope: string,
    readonly key: string,
    readonly begin: Begin,
  ) {}

  get outcome(): Outcome {
    return this.begin.outcome
  }
  get attempt(): number | null {
    return this.begin.attempt
  }
  get recoveryPoint(): string | null {
    return this.begin.recoveryPoint
  }
  get recoveryData(): Json {
    return this.begin.recoveryData
  }

  private executing(): number {
    if (this.begin.outcome !== 'execute' || this.begin.attempt === null) {
      throw new Error('only a claim that executes holds the key')
    }
    return this.begin.attempt
  }

  /** Commit a recovery point (fenced by this claim's attempt); renews the lease. */
  checkpoint(recoveryPoint: string, data?: JsonInput): Promise<Date> {
    return checkpoint(this.client, this.scope, this.key, recoveryPoint, data, { attempt: this.executing() })
  }

  /** Complete in a statement of its own (when no business write goes with it). */
  complete(options: CompleteOptions = {}): Promise<void> {
    return complete(this.client, this.scope, this.key, { ...options, attempt: this.executing() })
  }

  /** Fail in a statement of its own; a retryable failure is executed again (attempt + 1). */
  fail(options: FailOptions = {}): Promise<void> {
    return fail(this.client, this.scope, this.key, { ...options, attempt: this.executing() })
  }

  /** When the holder's lease ends (for an `in_progress` claim's `Retry-After`). */
  lease(): Promise<Lease> {
    return lease(this.client, this.scope, this.key)
  }

  /**
   * A transaction for the business write that goes with the completion: in `work`, write on
   * `f.client` (or with `f.query`) and call `f.complete(...)` or `f.fail(...)`; then both
   * commit together, fenced by this claim's attempt (`LeaseLost` if another request took over).
   */
  finish<T>(work: (f: Finish) => Promise<T>): Promise<T> {
    return new Finish(this.client, this.scope, this.key, this.executing()).run(work)
  }
}

export interface ClaimRequest extends Request {
  lease?: Interval
}

/**
 * The phased helper: `idem_begin` as a statement of its own, committed at once, so that the
 * claim holds a lease while the caller works outside the database. On `execute`,
 * `claim.attempt` is the fencing token and `claim.recoveryPoint`/`recoveryData` the last
 * checkpoint of an earlier attempt (resume from there).
 */
export async function claim(client: ClientBase, request: ClaimRequest): Promise<Claim> {
  const { scope, key } = request
  const b = await begin(client, scope, key, request.command, { ttl: request.ttl, lease: request.lease, wait: request.wait })
  return new Claim(client, scope, key, b)
}
