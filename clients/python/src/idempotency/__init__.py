"""Client for the `idempotency` PostgreSQL extension.

- `idempotency.sync` and `idempotency.aio`: the SQL functions as typed calls, and the
  one-transaction (`transaction`) and phased (`claim`) helpers, on psycopg 3.
- `idempotency.errors`: exceptions by SQLSTATE.
- `idempotency.http`: outcomes and errors mapped to HTTP (status, headers, problem `code`),
  and the `Idempotency-Key` and `Authorization: Bearer` parsers.
- `idempotency.layer`: the drop-in layer's framework-neutral part (docs/http.md).
- `idempotency.starlette`: the drop-in layer for Starlette and FastAPI (`IdempotencyMiddleware`)
  and endpoint decorators.
- `idempotency.django`: the drop-in layer for Django (`IdempotencyMiddleware`, `@idempotent`).
"""

from ._model import Begin, Check, Lease, Outcome, State
from .errors import (
    IdempotencyError,
    InvalidArgument,
    KeyReused,
    LeaseLost,
    NotInProgress,
    NotOwner,
    SerializationFailure,
)

__all__ = [
    "Begin",
    "Check",
    "Lease",
    "Outcome",
    "State",
    "IdempotencyError",
    "InvalidArgument",
    "KeyReused",
    "LeaseLost",
    "NotInProgress",
    "NotOwner",
    "SerializationFailure",
]
