"""Client for the `idempotency` PostgreSQL extension.

- `idempotency.sync` and `idempotency.aio`: the SQL functions as typed calls, and the
  one-transaction (`transaction`) and phased (`claim`) helpers, on psycopg 3.
- `idempotency.errors`: exceptions by SQLSTATE.
- `idempotency.http`: outcomes and errors mapped to HTTP (status, headers, problem `code`),
  and the `Idempotency-Key` and `Authorization: Bearer` parsers.
- `idempotency.starlette`: an integration for Starlette and FastAPI.
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
