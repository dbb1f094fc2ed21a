//! [`BudgetKey`]: which budget a request spends.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;

use crate::request::{Tenant, TenantKey};

/// Which budget a request spends: a function of its head and the model it asks for.
///
/// The default is its [`Tenant`] (by [`Tenant::from_request`], 32 hex digits or
/// `anonymous`). Cheap to clone.
///
/// ```
/// use tower_sse::budget::BudgetKey;
/// use tower_sse::request::Tenant;
///
/// let (parts, ()) = http::Request::post("/v1/chat/completions")
///     .header("authorization", "Bearer sk-alice")
///     .header("x-team", "search")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let alice = Tenant::from_key("sk-alice").to_string();
/// assert_eq!(BudgetKey::tenant().key(&parts, Some("gpt-4o")), alice);
/// assert_eq!(BudgetKey::tenant_and_model().key(&parts, Some("gpt-4o")), format!("{alice}/gpt-4o"));
/// assert_eq!(BudgetKey::header("x-team").key(&parts, None), "search");
/// let by_path = BudgetKey::from_fn(|parts, _model| parts.uri.path().to_owned());
/// assert_eq!(by_path.key(&parts, None), "/v1/chat/completions");
/// ```
#[derive(Clone, Default)]
pub struct BudgetKey {
    kind: Kind,
}

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Tenant,
    TenantKey(TenantKey, bool),
    Header(HeaderName),
    Fn(Arc<dyn Fn(&http::request::Parts, Option<&str>) -> String + Send + Sync>),
}

/// Longest header value used as a key as it is; longer ones (or ones with bytes other than
/// printable ASCII) are hashed like a tenant.
const MAX_PLAIN_KEY: usize = 128;

impl BudgetKey {
    /// The request's tenant ([`Tenant::from_request`]).
    pub fn tenant() -> Self {
        Self::default()
    }

    /// The tenant as your [`TenantKey`] finds it.
    pub fn tenant_key(key: TenantKey) -> Self {
        Self {
            kind: Kind::TenantKey(key, false),
        }
    }

    /// The tenant and the model asked for: `<tenant>/<model>` (`-` without a model), so
    /// that each model of a tenant has its own budget.
    pub fn tenant_and_model() -> Self {
        Self {
            kind: Kind::TenantKey(TenantKey::credentials(), true),
        }
    }

    /// A header's value (as it is when it is printable ASCII of at most 128 bytes, else
    /// hashed like a tenant); `anonymous` when the request has none.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name (a configuration error, at start).
    pub fn header(name: &str) -> Self {
        let name = HeaderName::try_from(name).expect("a valid header name");
        Self {
            kind: Kind::Header(name),
        }
    }

    /// Any function of the request's head and model.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&http::request::Parts, Option<&str>) -> String + Send + Sync + 'static,
    {
        Self {
            kind: Kind::Fn(Arc::new(f)),
        }
    }

    /// The key of this request.
    pub fn key(&self, parts: &http::request::Parts, model: Option<&str>) -> String {
        match &self.kind {
            Kind::Tenant => Tenant::from_request(parts).to_string(),
            Kind::TenantKey(key, with_model) => {
                let tenant = key.tenant(parts);
                if *with_model {
                    format!("{tenant}/{}", model.unwrap_or("-"))
                } else {
                    tenant.to_string()
                }
            }
            Kind::Header(name) => match parts.headers.get(name) {
                None => Tenant::anonymous().to_string(),
                Some(value) => {
                    let bytes = value.as_bytes();
                    if bytes.len() <= MAX_PLAIN_KEY && bytes.iter().all(u8::is_ascii_graphic) {
                        String::from_utf8_lossy(bytes).into_owned()
                    } else {
                        Tenant::from_key(bytes).to_string()
                    }
                }
            },
            Kind::Fn(f) => f(parts, model),
        }
    }
}

impl fmt::Debug for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Tenant => f.write_str("BudgetKey::tenant()"),
            Kind::TenantKey(_, false) => f.write_str("BudgetKey::tenant_key(..)"),
            Kind::TenantKey(_, true) => f.write_str("BudgetKey::tenant_and_model()"),
            Kind::Header(name) => write!(f, "BudgetKey::header({name:?})"),
            Kind::Fn(_) => f.write_str("BudgetKey::from_fn(..)"),
        }
    }
}
