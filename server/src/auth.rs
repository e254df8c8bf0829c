//! Who is calling, and what they may do: API keys (only their SHA-256 is stored), scopes,
//! signed playback URLs, and per-caller rate limits.
//!
//! A key travels as `Authorization: Bearer <key>` over HTTP, and in the WebSocket's
//! `connection_init` payload (`{"Authorization": "Bearer <key>"}`, `{"authorization": …}`,
//! `{"headers": {"Authorization": …}}` or `{"apiKey": "<key>"}`; the upgrade request's own
//! header works too). Scopes nest: `read` < `write` < `admin`.
//!
//! Without keys a server on a loopback address stays open (a desktop install); once a key
//! exists, callers need one. On any other address it refuses to start without a key unless
//! anonymous access is allowed explicitly (`--allow-anonymous <scope>`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::{Context, ErrorExtensions, Guard};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use entity::api_key::Scope;

use crate::error::{code, ApiError};

/// How long a signed playback URL stays valid.
pub const SIGNED_URL_TTL: Duration = Duration::from_secs(3600);

/// What a caller without a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Everything while no live key exists, nothing once one does (loopback default).
    UntilKeysExist,
    /// This scope, keys or not (`--allow-anonymous`); `None`: nothing.
    Fixed(Option<Scope>),
}

/// Per-caller request budget: a token bucket.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests per minute, sustained; 0 disables the limit.
    pub per_minute: u32,
    /// Requests that may come at once.
    pub burst: u32,
}

/// A caller: who (the key, if any) and the scope they hold (`None`: nothing).
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Option<KeyRef>,
    pub scope: Option<Scope>,
    /// Where the request came from (rate limits of anonymous callers).
    pub peer: Option<IpAddr>,
}

/// The key a caller presented.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
}

impl Caller {
    fn anonymous(scope: Option<Scope>, peer: Option<IpAddr>) -> Self {
        Self {
            key: None,
            scope,
            peer,
        }
    }

    /// Whether this caller may do what `needed` allows; the error says why not.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        match (self.scope, &self.key) {
            (Some(have), _) if have.allows(needed) => Ok(()),
            (_, None) => Err(ApiError::Unauthenticated),
            (have, Some(key)) => Err(ApiError::Forbidden(format!(
                "the API key {:?} ({}, scope {}) may not do this: it needs the {needed} scope",
                key.name,
                key.prefix,
                have.map_or("none", Scope::as_str)
            ))),
        }
    }

    /// The bucket this caller's requests count against.
    fn bucket(&self) -> String {
        match (&self.key, self.peer) {
            (Some(k), _) => format!("key:{}", k.id),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "anonymous".to_string(),
        }
    }
}

/// Why a presented key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the API key is not valid (unknown or revoked)")]
    InvalidKey,
    #[error("the Authorization header is not `Bearer <key>`")]
    Malformed,
    #[error("checking the key failed: {0}")]
    Store(#[from] entity::store::StoreError),
}

/// Authentication and rate limiting for the whole server.
pub struct Auth {
    db: DatabaseConnection,
    anonymous: Anonymous,
    url_secret: Vec<u8>,
    limiter: Option<RateLimiter>,
    /// When each key's `last_used_at` was last written.
    touched: Mutex<HashMap<Uuid, Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

const URL_SECRET_SETTING: &str = "playback_url_secret";

impl Auth {
    /// Reads (or creates) the URL-signing secret every replica shares.
    pub async fn new(
        db: DatabaseConnection,
        anonymous: Anonymous,
        rate: RateLimit,
    ) -> Result<Arc<Self>, entity::store::StoreError> {
        let secret = entity::store::setting_or_insert(&db, URL_SECRET_SETTING, || {
            format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
        })
        .await?;
        Ok(Arc::new(Self {
            db,
            anonymous,
            url_secret: secret.into_bytes(),
            limiter: (rate.per_minute > 0).then(|| RateLimiter::new(rate)),
            touched: Mutex::new(HashMap::new()),
        }))
    }

    /// Read each time (one indexed count; keys may come from `traum keys` in another
    /// process, and the first one must close the server at once). Fails closed: a database
    /// error counts as "keys exist".
    async fn keys_exist(&self) -> bool {
        entity::store::count_live_keys(&self.db)
            .await
            .map_or(true, |n| n > 0)
    }

    /// What a caller without a key may do right now.
    pub async fn anonymous_scope(&self) -> Option<Scope> {
        match self.anonymous {
            Anonymous::Fixed(scope) => scope,
            Anonymous::UntilKeysExist => {
                if self.keys_exist().await {
                    None
                } else {
                    Some(Scope::Admin)
                }
            }
        }
    }

    /// Whether callers need a key for everything (no anonymous read).
    pub async fn keys_required(&self) -> bool {
        self.anonymous_scope().await.is_none()
    }

    /// The caller a key (or none) makes.
    pub async fn authenticate(
        &self,
        key: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        let Some(secret) = key else {
            return Ok(Caller::anonymous(self.anonymous_scope().await, peer));
        };
        let row = entity::store::find_key(&self.db, secret)
            .await?
            .ok_or(AuthError::InvalidKey)?;
        self.touch(row.id);
        Ok(Caller {
            key: Some(KeyRef {
                id: row.id,
                name: row.name,
                prefix: row.prefix,
            }),
            scope: Some(row.scope),
            peer,
        })
    }

    /// Records a key's use at most once a minute, off the request path.
    fn touch(&self, id: Uuid) {
        let due = {
            let mut touched = self.touched.lock().unwrap();
            let due = touched
                .get(&id)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
            if due {
                touched.insert(id, Instant::now());
            }
            due
        };
        if due {
            let db = self.db.clone();
            tokio::spawn(async move {
                if let Err(e) = entity::store::touch_key(&db, id).await {
                    tracing::debug!(error = %e, "could not record a key's use");
                }
            });
        }
    }

    /// `/files/{id}?exp=…&sig=…`: lets a player fetch one file for a while without a key.
    pub fn signed_file_url(&self, id: Uuid) -> String {
        let exp = chrono::Utc::now().timestamp() + SIGNED_URL_TTL.as_secs() as i64;
        format!("/files/{id}?exp={exp}&sig={}", self.file_signature(id, exp))
    }

    fn file_signature(&self, id: Uuid, exp: i64) -> String {
        let mac = hmac_sha256(&self.url_secret, format!("file:{id}:{exp}").as_bytes());
        hex::encode(&mac[..16])
    }

    /// Whether `exp` and `sig` (from the query string) sign this file and have not expired.
    pub fn check_file_signature(&self, id: Uuid, exp: &str, sig: &str) -> bool {
        let Ok(exp) = exp.parse::<i64>() else {
            return false;
        };
        if exp < chrono::Utc::now().timestamp() {
            return false;
        }
        constant_time_eq(self.file_signature(id, exp).as_bytes(), sig.as_bytes())
    }

    /// Takes one request from the caller's budget; `Err(retry_after)` when it is spent.
    pub fn take(&self, caller: &Caller) -> Result<(), Duration> {
        match &self.limiter {
            Some(l) => l.take(&caller.bucket()),
            None => Ok(()),
        }
    }
}

/// The key in an `Authorization` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, key) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(key.trim().to_string()))
}

/// The key in a WebSocket `connection_init` payload, in any of the shapes clients send.
pub fn key_from_init_payload(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    let find = |obj: &serde_json::Map<String, serde_json::Value>| -> Option<String> {
        for (k, v) in obj {
            let Some(v) = v.as_str() else { continue };
            if k.eq_ignore_ascii_case("authorization") {
                let v = v.trim();
                return Some(match v.split_once(' ') {
                    Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => {
                        key.trim().to_string()
                    }
                    _ => v.to_string(),
                });
            }
            if k.eq_ignore_ascii_case("apikey") || k.eq_ignore_ascii_case("api_key") {
                return Some(v.trim().to_string());
            }
        }
        None
    };
    find(obj).or_else(|| obj.get("headers")?.as_object().and_then(find))
}

/// Middleware: resolves the caller of every request (a bad key is refused here, 401) and
/// spends one request of its budget (429 with `Retry-After` when spent).
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // Refusals read what is left of the body first: an upload refused here still gets its
    // answer, not a reset.
    let refuse = |req: Request, res: Response| crate::http::refuse_draining(req.into_body(), res);
    let key = match bearer(req.headers()) {
        Ok(key) => key,
        Err(e) => return refuse(req, unauthorized(&e.to_string())).await,
    };
    let caller = match auth.authenticate(key.as_deref(), peer).await {
        Ok(c) => c,
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "authentication failed");
            let res = crate::http::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL,
                "cannot check API keys right now; try again",
            );
            return refuse(req, res).await;
        }
        Err(e) => return refuse(req, unauthorized(&e.to_string())).await,
    };
    if let Err(retry) = auth.take(&caller) {
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        let mut res = crate::http::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            code::RATE_LIMITED,
            &format!("too many requests; try again in {secs} s"),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return refuse(req, res).await;
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut res = crate::http::error_response(
        StatusCode::UNAUTHORIZED,
        code::UNAUTHENTICATED,
        &format!(
            "{message}; send a valid key as `Authorization: Bearer <key>` (an admin creates \
             one with `traum keys create`)"
        ),
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"traum\""),
    );
    res.into_response()
}

/// GraphQL guard: the field needs this scope.
pub struct Need(pub Scope);

impl Guard for Need {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        match ctx.data_opt::<Caller>() {
            Some(caller) => caller.require(self.0).map_err(|e| e.extend()),
            None => Err(ApiError::Unauthenticated.extend()),
        }
    }
}

/// Token buckets per caller.
struct RateLimiter {
    rate: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    fn new(rate: RateLimit) -> Self {
        Self {
            rate: RateLimit {
                per_minute: rate.per_minute,
                burst: rate.burst.max(1),
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, bucket: &str) -> Result<(), Duration> {
        let per_s = f64::from(self.rate.per_minute) / 60.0;
        let burst = f64::from(self.rate.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 100_000 {
            // Full buckets carry no state: forget them rather than grow without bound.
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * per_s < burst);
        }
        let (tokens, at) = buckets.entry(bucket.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_s).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_s))
        }
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn bearer_and_init_payloads() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap().as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        for p in [
            r#"{"Authorization":"Bearer k1"}"#,
            r#"{"authorization":"Bearer k1"}"#,
            r#"{"headers":{"Authorization":"Bearer k1"}}"#,
            r#"{"apiKey":"k1"}"#,
        ] {
            assert_eq!(
                key_from_init_payload(&json(p)).as_deref(),
                Some("k1"),
                "{p}"
            );
        }
        assert_eq!(key_from_init_payload(&json("{}")), None);
        assert_eq!(key_from_init_payload(&json("null")), None);
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let l = RateLimiter::new(RateLimit {
            per_minute: 60,
            burst: 3,
        });
        for _ in 0..3 {
            l.take("a").unwrap();
        }
        let retry = l.take("a").unwrap_err();
        assert!(
            retry <= Duration::from_secs(1) && retry > Duration::ZERO,
            "{retry:?}"
        );
        // Another caller has its own budget.
        l.take("b").unwrap();
    }

    #[test]
    fn scopes_nest() {
        let caller = |scope| Caller {
            key: Some(KeyRef {
                id: Uuid::nil(),
                name: "k".into(),
                prefix: "traum_0000".into(),
            }),
            scope: Some(scope),
            peer: None,
        };
        assert!(caller(Scope::Read).require(Scope::Read).is_ok());
        assert!(caller(Scope::Read).require(Scope::Write).is_err());
        assert!(caller(Scope::Write).require(Scope::Read).is_ok());
        assert!(caller(Scope::Admin).require(Scope::Write).is_ok());
        assert!(matches!(
            Caller::anonymous(None, None).require(Scope::Read),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            caller(Scope::Read).require(Scope::Admin),
            Err(ApiError::Forbidden(_))
        ));
    }
}
