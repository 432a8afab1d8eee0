// The scratch database of a test run, clients on it, and a socket that counts round trips.
//
// scripts/client-typescript-test.sh starts a scratch cluster and sets IDEM_TEST_PGHOST (its
// socket directory) and IDEM_TEST_PGPORT. Each test uses a scope of its own.

import { randomUUID } from 'node:crypto'
import net from 'node:net'

import pg from 'pg'

export const HOST = process.env.IDEM_TEST_PGHOST ?? ''
export const PORT = Number(process.env.IDEM_TEST_PGPORT ?? 5432)
export const DATABASE = `idem_ts_${process.pid}`

if (!HOST) throw new Error('IDEM_TEST_PGHOST is not set: run the tests through scripts/client-typescript-test.sh')

/**
 * A socket that counts round trips: a write after the client has received something (or
 * the first write) starts one. node-postgres writes all the queries it pipelines within one
 * turn of the event loop, before any answer can be read, so the count is exact.
 */
export class CountingSocket extends net.Socket {
  count = 0
  /** The socket's writes to the kernel (one write or writev each): corked writes are one. */
  writes = 0
  private answered = true
  constructor() {
    super()
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const sock = this as any
    for (const m of ['_write', '_writev'] as const) {
      const original = sock[m]
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      sock[m] = (...args: any[]) => {
        this.writes += 1
        return original.apply(this, args)
      }
    }
    this.on('data', () => {
      this.answered = true
    })
    // net.Socket.connect assigns `this.write` (to undo an earlier end), so a method override
    // would be replaced: `write` is an accessor whose setter keeps what is assigned and whose
    // getter returns the counting wrapper around it.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    let inner: (...args: any[]) => boolean = net.Socket.prototype.write
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const counting = (...args: any[]): boolean => {
      if (this.answered) {
        this.count += 1
        this.answered = false
      }
      return inner.apply(this, args)
    }
    Object.defineProperty(this, 'write', {
      configurable: true,
      get: () => counting,
      set: (v) => {
        inner = v
      },
    })
  }
  reset(): void {
    this.count = 0
    this.writes = 0
    this.answered = true
  }
}

export async function setupDatabase(): Promise<void> {
  const admin = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: 'postgres' })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${DATABASE}`)
  await admin.query(`CREATE DATABASE ${DATABASE}`)
  await admin.end()
  const c = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: DATABASE })
  await c.connect()
  await c.query('CREATE EXTENSION idempotency')
  await c.query('CREATE TABLE effects (scope text, key text, note text)')
  const { rowCount } = await c.query("SELECT 1 FROM pg_roles WHERE rolname = 'idem_other_role'")
  if (!rowCount) await c.query('CREATE ROLE idem_other_role LOGIN')
  await c.end()
}

export async function dropDatabase(): Promise<void> {
  const admin = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: 'postgres' })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${DATABASE} WITH (FORCE)`)
  await admin.end()
}

export function clientConfig(options: { pipeline?: boolean; user?: string } = {}): pg.ClientConfig {
  return { host: HOST, port: PORT, user: options.user ?? 'postgres', database: DATABASE, pipeline: options.pipeline ?? true } as pg.ClientConfig
}

export async function connect(options: { pipeline?: boolean; user?: string } = {}): Promise<pg.Client> {
  const c = new pg.Client(clientConfig(options))
  await c.connect()
  return c
}

export async function connectCounted(options: { pipeline?: boolean } = {}): Promise<{ client: pg.Client; socket: CountingSocket }> {
  const socket = new CountingSocket()
  const c = new pg.Client({ ...clientConfig(options), stream: () => socket } as pg.ClientConfig)
  await c.connect()
  socket.reset()
  return { client: c, socket }
}

export function newScope(): string {
  return `test:${randomUUID()}`
}

export async function effects(c: pg.ClientBase, scope: string): Promise<string[]> {
  const r = await c.query('SELECT key FROM effects WHERE scope = $1 ORDER BY key', [scope])
  return r.rows.map((row) => row.key)
}

export function writeEffect(c: pg.ClientBase, scope: string, key: string): Promise<pg.QueryResult> {
  return c.query("INSERT INTO effects VALUES ($1, $2, 'done')", [scope, key])
}

/** Until backend `pid` is inside idem_begin, polled from a connection of its own. */
export async function waitForWaiter(pid: number): Promise<void> {
  const w = await connect({ pipeline: false })
  try {
    for (;;) {
      const r = await w.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%idem_begin%'", [pid])
      if (r.rowCount) return
      await new Promise((res) => setTimeout(res, 10))
    }
  } finally {
    await w.end()
  }
}

export async function backendPid(c: pg.ClientBase): Promise<number> {
  return (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
}
