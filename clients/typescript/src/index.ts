// Client for the `idempotency` PostgreSQL extension on node-postgres.
export * from './model'
export * from './errors'
export * from './client'
export * as http from './http'
