//! The service's problem documents (RFC 9457 with `code`, docs/http.md part 2): a handler
//! answers `Result<Response, Problem>`, and `?` turns the client crate's errors (and a
//! database or pool error) into a [`Problem`]. The document itself, its title by code and its
//! `application/problem+json` response come from `idempotency_client::layer::Problem`; this
//! type adds what only the service answers with (`WWW-Authenticate` on a 401) and the log line
//! of a 5xx from the client crate.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use idempotency_client::headers::KeyError;
use idempotency_client::http::code;
use idempotency_client::layer::{answers, Problem as Document};
use idempotency_client::{Error, Failure};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Problem {
    doc: Document,
    /// `WWW-Authenticate: Bearer` (the 401).
    www_authenticate: bool,
}

impl Problem {
    pub fn new(status: u16, code: &str, detail: &str) -> Problem {
        Problem {
            doc: Document::new(status, code, detail),
            www_authenticate: false,
        }
    }

    /// `Retry-After: <seconds>`.
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.doc = self.doc.retry_after(seconds);
        self
    }

    /// The document: `type`, `title`, `status`, `detail`, `code` (and `first_used_at` on 422).
    pub fn document(&self) -> Value {
        self.doc.document()
    }

    /// This problem as a key's stored failure (what its replay answers).
    pub fn failure(&self, retryable: bool) -> Failure {
        Failure {
            error: Some(self.document()),
            retryable,
            http_status: i32::from(self.doc.status),
        }
    }

    /// 401 `unauthorized` with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Problem {
        Problem {
            www_authenticate: true,
            ..Problem::new(
                401,
                code::UNAUTHORIZED,
                "Send Authorization: Bearer <tenant>, the tenant being 1 to 64 of [A-Za-z0-9_-].",
            )
        }
    }

    /// 404 `not_found`: an unknown id, another tenant's, or no such route.
    pub fn not_found() -> Problem {
        Problem::new(404, code::NOT_FOUND, "No such resource for this tenant.")
    }

    /// 400 `invalid_request`.
    pub fn invalid(detail: &str) -> Problem {
        Problem::new(400, code::INVALID_REQUEST, detail)
    }

    /// 500 `internal_error`.
    pub fn internal(detail: &str) -> Problem {
        Problem::new(500, code::INTERNAL_ERROR, detail)
    }

    /// 503 `service_unavailable` with `Retry-After: 1`.
    pub fn unavailable(detail: &str) -> Problem {
        Problem::new(503, code::SERVICE_UNAVAILABLE, detail).retry_after(1)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = self.doc.into_response();
        if self.www_authenticate {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// 400 `idempotency_key_missing` / `idempotency_key_invalid`.
impl From<KeyError> for Problem {
    fn from(e: KeyError) -> Problem {
        Problem {
            doc: answers::key_error(e),
            www_authenticate: false,
        }
    }
}

/// An error of the client crate, by its SQLSTATE (docs/http.md's table); a 5xx is logged.
impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        let doc = answers::error(&e);
        if doc.status >= 500 {
            eprintln!("payments-api: {e}");
        }
        Problem {
            doc,
            www_authenticate: false,
        }
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(e: tokio_postgres::Error) -> Problem {
        Error::from_db(e, None).into()
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(e: deadpool_postgres::PoolError) -> Problem {
        Error::from(e).into()
    }
}
