//! The layer's settings, their defaults, and the check made when the layer is built.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderName, Method};

use super::answers::Problem;

/// How a route runs (docs/http.md, "Two modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The claim commits at once under a lease; the route runs with no transaction of the
    /// layer's; the outcome is stored in a second short transaction.
    Phased,
    /// The claim, the route's writes through the layer's connection and the stored outcome
    /// commit together, before the response leaves.
    Transaction,
}

/// What the tenant function answers: the tenant, nothing (401), or a problem of its own.
pub type TenantResult = Result<Option<String>, Problem>;
pub(crate) type TenantFn = Arc<dyn Fn(&Parts) -> BoxFuture<'static, TenantResult> + Send + Sync>;
pub(crate) type ModeFn = Arc<dyn Fn(&Parts) -> Mode + Send + Sync>;
pub(crate) type StatusUrlFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The settings common to every layer (docs/http.md, "The layer's answers").
#[derive(Clone)]
pub struct Options {
    pub(crate) tenant: Option<TenantFn>,
    pub(crate) global_keys: bool,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) command_headers: Vec<HeaderName>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_stored_body: usize,
    pub(crate) max_wait: Duration,
    pub(crate) status_url: Option<StatusUrlFn>,
    pub(crate) mode: ModeFn,
}

/// The scope of every key under `global_keys`.
pub const GLOBAL_SCOPE: &str = "global";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_STORED_BODY: usize = 512 * 1024;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

impl Default for Options {
    /// `POST` and `PATCH`, the key required, the database's ttl and lease, no command or
    /// replay headers, 1 MiB of request body, 512 KiB of stored body, 10 s of waiting, phased;
    /// no tenant yet (which [`Options::check`] refuses).
    fn default() -> Self {
        Options {
            tenant: None,
            global_keys: false,
            methods: vec![Method::POST, Method::PATCH],
            required: true,
            ttl: None,
            lease: None,
            command_headers: Vec::new(),
            replay_headers: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_stored_body: DEFAULT_MAX_STORED_BODY,
            max_wait: DEFAULT_MAX_WAIT,
            status_url: None,
            mode: Arc::new(|_| Mode::Phased),
        }
    }
}

/// A layer that must not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Neither a tenant function nor `global_keys`.
    NoTenant,
    /// `Set-Cookie` or `Set-Cookie2` named in `replay_headers`.
    ReplaysCookies(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoTenant => f.write_str(
                "the idempotency layer needs a tenant function (.tenant(...)), or .global_keys() \
                 to let every client share one scope",
            ),
            ConfigError::ReplaysCookies(h) => write!(
                f,
                "the idempotency layer never stores {h}: remove it from replay_headers"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Options {
    /// The tenant function, synchronous: the tenant, `None` (401), or a [`Problem`].
    pub fn tenant<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> TenantResult + Send + Sync + 'static,
    {
        self.tenant = Some(Arc::new(move |p| {
            let r = f(p);
            Box::pin(std::future::ready(r))
        }));
        self
    }

    /// The tenant function, asynchronous (its future owns what it needs of the request).
    pub fn tenant_async<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TenantResult> + Send + 'static,
    {
        self.tenant = Some(Arc::new(move |p| Box::pin(f(p))));
        self
    }

    /// Every request shares the scope `global`: one client's key can answer another's request.
    pub fn global_keys(mut self) -> Self {
        self.global_keys = true;
        self
    }

    /// The methods covered (default `POST`, `PATCH`); any other passes through untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// `false`: a covered request without `Idempotency-Key` passes through untouched.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// How long a key is remembered (default: the database's `idempotency.ttl`).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// A phased claim's lease (default: the database's `idempotency.lease`).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Request headers that are part of the command.
    pub fn command_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.command_headers = names.into_iter().collect();
        self
    }

    /// Response headers stored and replayed beside those that describe the body.
    pub fn replay_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.replay_headers = names.into_iter().collect();
        self
    }

    /// The largest request body read (default 1 MiB); a longer one is 413.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// The largest response body stored (default 512 KiB); a longer one is stored omitted.
    pub fn max_stored_body(mut self, n: usize) -> Self {
        self.max_stored_body = n;
        self
    }

    /// The cap of `Prefer: wait` (default 10 s).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// The `Location` of a 202 for `Prefer: respond-async`, from the key.
    pub fn status_url<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> String + Send + Sync + 'static,
    {
        self.status_url = Some(Arc::new(f));
        self
    }

    /// One mode for every request.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Arc::new(move |_| mode);
        self
    }

    /// The mode as a function of the request.
    pub fn mode_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Mode + Send + Sync + 'static,
    {
        self.mode = Arc::new(f);
        self
    }

    /// Refuses what the layer must not be built with: no tenant function without
    /// `global_keys`, `Set-Cookie` or `Set-Cookie2` in `replay_headers`.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.tenant.is_none() && !self.global_keys {
            return Err(ConfigError::NoTenant);
        }
        if let Some(h) = self
            .replay_headers
            .iter()
            .find(|h| *h == http::header::SET_COOKIE || h.as_str() == "set-cookie2")
        {
            return Err(ConfigError::ReplaysCookies(h.as_str().to_owned()));
        }
        Ok(())
    }

    pub(crate) fn covers(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        http::Request::builder()
            .uri("/x")
            .header("x-tenant", "t1")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn defaults() {
        let o = Options::default();
        assert_eq!(o.methods, vec![Method::POST, Method::PATCH]);
        assert!(o.required && !o.global_keys);
        assert_eq!((o.ttl, o.lease), (None, None));
        assert_eq!(o.max_body_bytes, 1_048_576);
        assert_eq!(o.max_stored_body, 524_288);
        assert_eq!(o.max_wait, Duration::from_secs(10));
        assert!(o.command_headers.is_empty() && o.replay_headers.is_empty());
        assert!(o.status_url.is_none());
        assert_eq!((o.mode)(&parts()), Mode::Phased);
        assert!(o.covers(&Method::POST) && o.covers(&Method::PATCH));
        assert!(!o.covers(&Method::PUT) && !o.covers(&Method::GET));
    }

    #[test]
    fn refuses_no_tenant_and_replayed_cookies() {
        assert_eq!(Options::default().check(), Err(ConfigError::NoTenant));
        assert_eq!(Options::default().global_keys().check(), Ok(()));
        let with_tenant = Options::default().tenant(|_| Ok(Some("t".into())));
        assert_eq!(with_tenant.clone().check(), Ok(()));
        for cookie in ["set-cookie", "Set-Cookie2"] {
            let o = with_tenant.clone().replay_headers([
                HeaderName::from_static("x-a"),
                HeaderName::from_bytes(cookie.as_bytes()).unwrap(),
            ]);
            assert_eq!(
                o.check(),
                Err(ConfigError::ReplaysCookies(cookie.to_ascii_lowercase()))
            );
        }
        assert!(with_tenant
            .replay_headers([HeaderName::from_static("x-a")])
            .check()
            .is_ok());
    }

    #[tokio::test]
    async fn tenant_functions_sync_and_async_and_modes() {
        let o = Options::default()
            .tenant(|p| {
                Ok(p.headers
                    .get("x-tenant")
                    .map(|v| v.to_str().unwrap().to_owned()))
            })
            .mode_fn(|p| {
                if p.uri.path().starts_with("/x") {
                    Mode::Transaction
                } else {
                    Mode::Phased
                }
            })
            .methods([Method::PUT]);
        let p = parts();
        assert_eq!(
            (o.tenant.as_ref().unwrap())(&p).await,
            Ok(Some("t1".into()))
        );
        assert_eq!((o.mode)(&p), Mode::Transaction);
        assert!(o.covers(&Method::PUT) && !o.covers(&Method::POST));
        let o = Options::default().tenant_async(|p| {
            let h = p.headers.contains_key("x-tenant");
            async move {
                if h {
                    Err(Problem::new(403, "forbidden", "no"))
                } else {
                    Ok(None)
                }
            }
        });
        assert_eq!(
            (o.tenant.as_ref().unwrap())(&p).await.unwrap_err().status,
            403
        );
        assert_eq!(
            Options::default().mode(Mode::Transaction).mode.as_ref()(&p),
            Mode::Transaction
        );
    }
}
