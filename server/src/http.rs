//! HTTP: `/graphql` (POST queries and multipart uploads, GET GraphiQL or a
//! WebSocket for subscriptions), `/files/{id}` (originals, with Range),
//! `/metrics`, `/healthz`, and the web client at `/`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::{BatchRequest, BatchResponse, UploadValue};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State, WebSocketUpgrade};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use uuid::Uuid;

use crate::auth::{Auth, Caller, Scope};
use crate::error::{code, human_bytes, ApiError};
use crate::graphql::{Received, TraumSchema, UploadReceipts};
use crate::library::Library;
use crate::storage::{blocking, AsyncStagingWriter};

/// What the HTTP layer needs besides the library.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Most files in one multipart request.
    pub max_files_per_request: usize,
    /// Most bytes of a JSON request body.
    pub max_json_bytes: usize,
    /// Most bytes of a whole multipart request (all its files).
    pub max_request_bytes: u64,
    /// Most operations in one batched request.
    pub max_batch_operations: usize,
    /// Upload requests received at once.
    pub max_concurrent_uploads: usize,

    /// GraphiQL's npm packages (`server/graphiql/node_modules`); none: look in the usual places.
    pub graphiql_dir: Option<PathBuf>,
    /// Origins allowed by CORS (`*` for any); none: same origin only.
    pub cors_origins: Vec<String>,
    /// The built web client, served at `/` when present.
    pub client_dir: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_files_per_request: 32,
            max_json_bytes: 1 << 20,
            max_request_bytes: 1_000_000_000,
            max_batch_operations: 16,
            max_concurrent_uploads: 8,
            graphiql_dir: None,
            cors_origins: Vec::new(),
            client_dir: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    library: Arc<Library>,
    schema: TraumSchema,
    auth: Arc<Auth>,
    config: Arc<HttpConfig>,
    /// Upload requests being received at once: more are refused (TOO_BUSY), not queued.
    uploads: Arc<tokio::sync::Semaphore>,
    /// GraphiQL's npm packages, when installed.
    graphiql_modules: Option<Arc<PathBuf>>,
}

/// The whole HTTP service.
pub fn router(
    library: Arc<Library>,
    schema: TraumSchema,
    auth: Arc<Auth>,
    config: HttpConfig,
) -> Router {
    let cors = cors_layer(&config.cors_origins);
    let client_dir = config.client_dir.clone();
    let graphiql_modules = find_graphiql_modules(config.graphiql_dir.as_deref()).map(Arc::new);
    if graphiql_modules.is_none() {
        tracing::warn!(
            "GraphiQL's assets are not installed (scripts/setup-web.sh); GET /graphql says how"
        );
    }
    let state = AppState {
        library,
        schema,
        auth: auth.clone(),
        uploads: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_uploads.max(1),
        )),
        config: Arc::new(config),
        graphiql_modules,
    };
    // Everything that reads or changes the library knows its caller (and spends its budget).
    let api = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/files/{id}", get(file_get))
        .route("/metrics", get(metrics_get))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        ));
    let mut router = Router::new()
        .merge(api)
        .route("/graphiql/{name}", get(graphiql_asset))
        // Alive: the process answers. Ready: it can serve (database and vector store
        // answer); load balancers route by this one.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    router = match client_dir.filter(|d| d.join("index.html").is_file()) {
        Some(dir) => {
            // Unknown paths are client routes: they get index.html. The build
            // writes .gz twins (the wasm shrinks ~3x); file names do not
            // change between builds, so browsers revalidate (Last-Modified)
            // instead of running a stale client after an upgrade.
            let index = ServeFile::new(dir.join("index.html")).precompressed_gzip();
            let files = ServeDir::new(dir).precompressed_gzip().fallback(index);
            router.fallback_service(
                tower::ServiceBuilder::new()
                    .layer(SetResponseHeaderLayer::overriding(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("no-cache"),
                    ))
                    .layer(SetResponseHeaderLayer::overriding(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(CLIENT_CSP),
                    ))
                    .layer(SetResponseHeaderLayer::overriding(
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ))
                    .layer(SetResponseHeaderLayer::overriding(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    ))
                    .service(files),
            )
        }
        None => router.fallback(get(no_client)),
    };
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The web client's content security policy: its scripts and wasm come from this server
/// only (no inline or remote script, no eval; wasm needs 'wasm-unsafe-eval'), it talks to
/// this server only, and no other site may frame it.
pub const CLIENT_CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; \
     connect-src 'self' ws: wss:; font-src 'self' data:; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring an invalid CORS origin");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::RANGE, header::AUTHORIZATION])
            .expose_headers([header::CONTENT_RANGE, header::ACCEPT_RANGES]),
    )
}

async fn no_client() -> Html<&'static str> {
    Html(
        "<!doctype html><title>Traum Engine</title><h1>Traum Engine</h1>\
         <p>The web client is not built. The API is at <a href=\"/graphql\">/graphql</a>.</p>",
    )
}

/// GraphiQL, a query sent as GET (GraphQL over HTTP), or the subscription WebSocket
/// (graphql-transport-ws or graphql-ws).
async fn graphql_get(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let caller = caller_of(&req);
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        let query = req.uri().query().unwrap_or("");
        if query.split('&').any(|kv| kv.starts_with("query=")) {
            return graphql_get_query(&state, query, caller).await;
        }
        return graphiql_page();
    }
    let (mut parts, _) = req.into_parts();
    // The first subprotocol offered that we speak (what async-graphql-axum's extractor picks).
    let protocol = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return (
            StatusCode::BAD_REQUEST,
            "a subscription WebSocket needs Sec-WebSocket-Protocol: graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let schema = state.schema.clone();
    let auth = state.auth.clone();
    // A subscription message is a GraphQL request like a POST body: the same bound (axum's
    // default would let every socket buffer 64 MiB).
    let max_message = state.config.max_json_bytes.max(64 * 1024);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        // Clients send little (a subscribe, pings), but tungstenite zero-fills its whole read
        // buffer on every read attempt, and async-graphql's socket polls the read side each
        // time it sends an event: with the default 128 KiB, fan-out to 1000 subscribers spent
        // 40 % of the server's CPU in memset (and 128 MiB on buffers). Larger messages still
        // arrive, a few KiB per read.
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| crate::websocket::serve(socket, schema, protocol, auth, caller))
        .into_response()
}

/// Read buffer of a subscription WebSocket (see its use).
const WS_READ_BUFFER: usize = 4 * 1024;

/// `GET /graphql?query=…&variables=…`: queries only; a mutation over GET is refused (405), as
/// the GraphQL-over-HTTP spec says, since GET must not change anything.
async fn graphql_get_query(state: &AppState, query_string: &str, caller: Caller) -> Response {
    let request = match async_graphql::http::parse_query_string(query_string) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                &format!("invalid GraphQL GET request: {e}"),
            )
        }
    };
    if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
        use async_graphql::parser::types::{DocumentOperations, OperationType};
        let ty = match &doc.operations {
            DocumentOperations::Single(op) => Some(op.node.ty),
            DocumentOperations::Multiple(ops) => match &request.operation_name {
                Some(name) => ops.get(name.as_str()).map(|op| op.node.ty),
                None if ops.len() == 1 => ops.values().next().map(|op| op.node.ty),
                None => None,
            },
        };
        if matches!(
            ty,
            Some(OperationType::Mutation | OperationType::Subscription)
        ) {
            let mut res = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                code::BAD_REQUEST,
                "only queries may be sent with GET; send mutations with POST",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return res;
        }
    }
    state
        .library
        .metrics
        .graphql_requests
        .with_label_values(&["get"])
        .inc();
    execute(state, BatchRequest::Single(request), caller).await
}

/// GraphiQL's page. Its scripts and styles come from this server (`/graphiql/…`, pinned
/// production builds from npm), never from a CDN: self-hosted boxes are often offline.
fn graphiql_page() -> Response {
    let mut res = Html(GRAPHIQL_HTML).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(GRAPHIQL_CSP),
    );
    res
}

const GRAPHIQL_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Traum Engine · GraphiQL</title>
<link rel="stylesheet" href="/graphiql/graphiql.min.css">
<link rel="stylesheet" href="/graphiql/page.css">
</head>
<body>
<div id="graphiql"><p class="traum-loading">Loading GraphiQL…</p></div>
<script src="/graphiql/react.production.min.js"></script>
<script src="/graphiql/react-dom.production.min.js"></script>
<script src="/graphiql/graphiql.min.js"></script>
<script src="/graphiql/init.js"></script>
</body>
</html>
"#;

/// GraphiQL needs inline styles (its editor sets them) and data: images (icons).
const GRAPHIQL_CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
     worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The four files GraphiQL needs, from its npm packages (`server/graphiql`, `npm ci`), plus
/// our two small ones.
const GRAPHIQL_ASSETS: &[(&str, &str, &str)] = &[
    (
        "graphiql.min.js",
        "graphiql/graphiql.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "graphiql.min.css",
        "graphiql/graphiql.min.css",
        "text/css; charset=utf-8",
    ),
    (
        "react.production.min.js",
        "react/umd/react.production.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "react-dom.production.min.js",
        "react-dom/umd/react-dom.production.min.js",
        "text/javascript; charset=utf-8",
    ),
];

const GRAPHIQL_INIT_JS: &str = include_str!("graphiql/init.js");
const GRAPHIQL_PAGE_CSS: &str = include_str!("graphiql/page.css");

/// Where GraphiQL's npm packages are: the configured folder, else `server/graphiql` under the
/// working directory, beside the binary, or in the source tree this binary was built from.
pub fn find_graphiql_modules(configured: Option<&std::path::Path>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match configured {
        Some(dir) => vec![dir.to_path_buf(), dir.join("node_modules")],
        None => {
            let mut c = vec![PathBuf::from("server/graphiql/node_modules")];
            if let Some(exe_dir) = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            {
                c.push(exe_dir.join("graphiql/node_modules"));
            }
            c.push(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/graphiql/node_modules"
            )));
            c
        }
    };
    candidates
        .into_iter()
        .find(|dir| dir.join(GRAPHIQL_ASSETS[0].1).is_file())
}

async fn graphiql_asset(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let typed = |mime: &'static str, body: &'static str| {
        (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response()
    };
    match name.as_str() {
        "init.js" => return typed("text/javascript; charset=utf-8", GRAPHIQL_INIT_JS),
        "page.css" => return typed("text/css; charset=utf-8", GRAPHIQL_PAGE_CSS),
        _ => {}
    }
    let Some((_, rel, mime)) = GRAPHIQL_ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such GraphiQL asset").into_response();
    };
    let Some(dir) = state.graphiql_modules.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            "document.getElementById('graphiql').innerHTML = '<p class=\"traum-loading\">\
             GraphiQL is not installed on this server: run <code>scripts/setup-web.sh</code> \
             (it runs <code>npm ci</code> in <code>server/graphiql</code>), or point \
             <code>--graphiql-dir</code> at those packages. The API itself works.</p>';",
        )
            .into_response();
    };
    let serve = ServeFile::new_with_mime(dir.join(rel), &mime.parse().expect("static mime"));
    match serve.oneshot(req).await {
        Ok(mut res) => {
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            res.map(Body::new).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "serving a GraphiQL asset failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file").into_response()
        }
    }
}

/// A GraphQL error response (request-level), with a `code` extension.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": code } }],
    });
    (status, axum::Json(body)).into_response()
}

async fn graphql_post(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let caller = caller_of(&req);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if content_type.starts_with("multipart/form-data") {
        state
            .library
            .metrics
            .graphql_requests
            .with_label_values(&["multipart"])
            .inc();
        let body = SharedBody::new(req.into_body(), state.config.max_request_bytes);
        // Refusals that need no byte of the body come first: scope, load, quota.
        let admitted = admit_upload(&state, &caller).await;
        let parsed = match admitted {
            Ok(_permit) => multipart_request(&state, &content_type, &body).await,
            Err(e) => Err(e),
        };
        return match parsed {
            Ok(MultipartRequest { batch, receipts }) => {
                let batch = match batch {
                    BatchRequest::Single(r) => BatchRequest::Single(r.data(receipts[0].clone())),
                    BatchRequest::Batch(v) => BatchRequest::Batch(
                        v.into_iter()
                            .zip(receipts)
                            .map(|(r, receipts)| r.data(receipts))
                            .collect(),
                    ),
                };
                execute(&state, batch, caller).await
            }
            Err(e) => {
                // Refused before the body was read: take in the rest (up to a bound) so the
                // client, still sending, reads this answer instead of a reset.
                body.drain().await;
                let mut res = api_error_response(&e);
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                res
            }
        };
    }
    state
        .library
        .metrics
        .graphql_requests
        .with_label_values(&["json"])
        .inc();
    let limit = state.config.max_json_bytes;
    let body = SharedBody::new(req.into_body(), limit as u64);
    let mut bytes = Vec::new();
    {
        let mut stream = std::pin::pin!(body.stream());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(_) if body.over_limit() => {
                    body.drain().await;
                    let mut res = error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        code::TOO_LARGE,
                        &format!(
                            "request body is larger than {}; upload files as multipart",
                            human_bytes(limit as u64)
                        ),
                    );
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return res;
                }
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        code::BAD_REQUEST,
                        &format!("reading the request body: {e}"),
                    )
                }
            }
        }
    }
    let batch: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                &format!("invalid GraphQL request: {e}"),
            )
        }
    };
    execute(&state, batch, caller).await
}

/// The caller the auth middleware found (anonymous without scope if it did not run).
fn caller_of(req: &axum::extract::Request) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller {
        key: None,
        scope: None,
        peer: None,
    })
}

/// May this caller upload now? Needs the write scope, a free upload slot (the permit is
/// held while the request is read), and room under the storage quota.
async fn admit_upload(
    state: &AppState,
    caller: &Caller,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    caller.require(Scope::Write)?;
    let permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::TooBusy(format!(
            "{} uploads are being received already; try again in a moment",
            state.config.max_concurrent_uploads
        ))
    })?;
    if let Some(quota) = state.library.config.storage_quota_bytes {
        let used = state.library.stored_bytes().await?;
        if used >= quota {
            return Err(ApiError::QuotaExceeded(format!(
                "the library is full: it stores {} of its {} quota (--max-library-gb); \
                 delete files or raise the quota",
                human_bytes(used),
                human_bytes(quota)
            )));
        }
    }
    Ok(permit)
}

/// Refuses a request whose body may still be arriving: reads the rest of it first (up to a
/// bound), so the client gets this answer instead of a reset, and closes the connection.
pub(crate) async fn refuse_draining(body: Body, mut res: Response) -> Response {
    SharedBody::new(body, u64::MAX).drain().await;
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A request-level refusal, with the status its code calls for.
fn api_error_response(e: &ApiError) -> Response {
    let status = match e.code() {
        code::TOO_MANY_FILES | code::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        code::STORAGE_FULL | code::QUOTA_EXCEEDED => StatusCode::INSUFFICIENT_STORAGE,
        code::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        code::FORBIDDEN => StatusCode::FORBIDDEN,
        code::TOO_BUSY => StatusCode::SERVICE_UNAVAILABLE,
        code::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
        code::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error_response(status, e.code(), &e.to_string())
}

async fn execute(state: &AppState, batch: BatchRequest, caller: Caller) -> Response {
    if let BatchRequest::Batch(v) = &batch {
        let max = state.config.max_batch_operations;
        if v.len() > max {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                &format!(
                    "at most {max} operations per batched request, got {}",
                    v.len()
                ),
            );
        }
        if v.is_empty() {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "the batched request holds no operation",
            );
        }
    }
    let mut response: BatchResponse = state.schema.execute_batch(batch.data(caller)).await;
    match &mut response {
        BatchResponse::Single(r) => add_error_codes(r),
        BatchResponse::Batch(rs) => rs.iter_mut().for_each(add_error_codes),
    }
    let mut res = axum::Json(&response).into_response();
    if let Some(cache) = response.cache_control().value() {
        if let Ok(v) = HeaderValue::from_str(&cache) {
            res.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    res
}

/// Every error gets a `code`: ours carry one; async-graphql's own (parse,
/// validation, limits, input coercion) get one here.
fn add_error_codes(response: &mut async_graphql::Response) {
    for e in &mut response.errors {
        if let Some(tidy) = tidy_error_message(&e.message) {
            e.message = tidy;
        }
        let has_code = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if has_code {
            continue;
        }
        let code = if e.message.contains("nested too deep") {
            "QUERY_TOO_DEEP"
        } else if e.message.contains("too complex") {
            "QUERY_TOO_COMPLEX"
        } else {
            code::BAD_REQUEST
        };
        e.extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}

/// Longest error message sent back, in bytes.
const MAX_ERROR_MESSAGE: usize = 1024;

/// A shorter message for errors that would echo the request: the parser's syntax errors quote
/// the whole offending line (a one-line query of 1 MB comes back whole) and draw a caret under
/// the column. They become "syntax error at line L, column C: expected …"; anything else over
/// [`MAX_ERROR_MESSAGE`] is cut. `None`: keep the message as it is.
fn tidy_error_message(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix(" --> ") {
        let at = rest.lines().next().unwrap_or("").trim();
        let (line, column) = at.split_once(':').unwrap_or((at, "?"));
        let expected = message
            .lines()
            .rev()
            .find_map(|l| l.trim_start().strip_prefix("= "))
            .unwrap_or("unexpected input");
        let mut tidy = format!("syntax error at line {line}, column {column}: {expected}");
        truncate_at_char(&mut tidy, MAX_ERROR_MESSAGE);
        return Some(tidy);
    }
    if message.len() > MAX_ERROR_MESSAGE {
        let mut tidy = message.to_string();
        truncate_at_char(&mut tidy, MAX_ERROR_MESSAGE);
        tidy.push_str(&format!(" … ({} more bytes)", message.len() - tidy.len()));
        return Some(tidy);
    }
    None
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Bytes read from a refused request's body before the answer goes out, so a client still
/// sending gets the coded error instead of a broken pipe; past this (or the time), the
/// connection is closed.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(15);

/// A request body that several readers take turns on: the multipart parser, then (if the
/// request is refused early) the drain. Counts bytes against the request's limit.
struct SharedBody {
    stream: tokio::sync::Mutex<axum::body::BodyDataStream>,
    seen: AtomicU64,
    limit: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
struct BodyTooLarge;

impl SharedBody {
    fn new(body: Body, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            stream: tokio::sync::Mutex::new(body.into_data_stream()),
            seen: AtomicU64::new(0),
            limit,
        })
    }

    fn over_limit(&self) -> bool {
        self.seen.load(Ordering::Relaxed) > self.limit
    }

    /// The body as a stream of chunks that ends in an error past the limit.
    fn stream(
        self: &Arc<Self>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(self.clone(), |body| async move {
            let next = body.stream.lock().await.next().await?;
            let item = match next {
                Ok(bytes) => {
                    let seen = body.seen.fetch_add(bytes.len() as u64, Ordering::Relaxed)
                        + bytes.len() as u64;
                    if seen > body.limit {
                        Err(std::io::Error::other(BodyTooLarge))
                    } else {
                        Ok(bytes)
                    }
                }
                Err(e) => Err(std::io::Error::other(e)),
            };
            Some((item, body))
        })
    }

    /// Reads and drops what is left of the body, up to a bound.
    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_MAX_TIME;
        let mut stream = self.stream.lock().await;
        let mut drained = 0u64;
        while drained < DRAIN_MAX_BYTES {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(bytes))) => drained += bytes.len() as u64,
                _ => break,
            }
        }
    }
}

/// One multipart request, parsed: the operations with their uploads in place, and each
/// operation's receipts (the staged files, by upload index).
pub struct MultipartRequest {
    pub batch: BatchRequest,
    pub receipts: Vec<Arc<UploadReceipts>>,
}

/// What bounds a multipart request's parsing.
#[derive(Debug, Clone)]
pub struct MultipartLimits {
    /// Most bytes of the `operations` part.
    pub max_json_bytes: usize,
    /// Most uploads (map paths) in the request.
    pub max_files: usize,
    /// Largest file (a larger one is refused alone, TOO_LARGE).
    pub max_file_bytes: u64,
    /// Where files are staged.
    pub incoming: PathBuf,
}

/// Reads a GraphQL multipart request (spec: `operations`, `map`, then the file parts),
/// streaming each file to disk through an [`AsyncStagingWriter`].
///
/// Refusals name the cause: a part sent twice, a second `map`, a file part before the map or
/// not in it, a map entry whose part never came, more files than allowed, a body over the
/// request limit. A file refused for its content (type, size, empty) is not a request error:
/// its upload resolves to that refusal and the other files go on.
async fn multipart_request(
    state: &AppState,
    content_type: &str,
    body: &Arc<SharedBody>,
) -> Result<MultipartRequest, ApiError> {
    let limits = MultipartLimits {
        max_json_bytes: state.config.max_json_bytes,
        max_files: state.config.max_files_per_request,
        max_file_bytes: state.library.config.max_file_bytes,
        incoming: state.library.paths.incoming(),
    };
    let over_limit = || body.over_limit();
    parse_multipart(
        &limits,
        content_type,
        body.stream(),
        &over_limit,
        body.limit,
    )
    .await
}

/// Parses a GraphQL multipart request from a stream of body chunks (public for the fuzz
/// target). `over_limit` tells whether a stream error was the body passing `body_limit`.
pub async fn parse_multipart(
    limits: &MultipartLimits,
    content_type: &str,
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    over_limit: &(dyn Fn() -> bool + Sync),
    body_limit: u64,
) -> Result<MultipartRequest, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::BadRequest(format!("multipart request: {e}")))?;
    // `operations` and `map` are read whole: keep them small. File parts are
    // streamed and limited by the staging writer.
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .for_field("operations", limits.max_json_bytes as u64)
            .for_field("map", 64 * 1024),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let bad = |what: &str| ApiError::BadRequest(format!("multipart request: {what}"));
    let read_error = |e: multer::Error| {
        if over_limit() {
            ApiError::RequestTooLarge { limit: body_limit }
        } else {
            bad(&e.to_string())
        }
    };
    let max_files = limits.max_files;

    let mut operations: Option<BatchRequest> = None;
    let mut map: Option<HashMap<String, Vec<String>>> = None;
    let mut parts_seen: HashSet<String> = HashSet::new();
    let mut received: Vec<(String, Received)> = Vec::new();
    let limit = limits.max_file_bytes;
    let incoming = &limits.incoming;

    while let Some(mut field) = multipart.next_field().await.map_err(read_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if !parts_seen.insert(name.clone()) {
            return Err(bad(&format!(
                "the part {name:?} is sent twice; each part name may appear once"
            )));
        }
        match name.as_str() {
            "operations" => {
                let text = field.text().await.map_err(read_error)?;
                operations = Some(
                    serde_json::from_str(&text)
                        .map_err(|e| bad(&format!("invalid operations: {e}")))?,
                );
            }
            "map" => {
                let text = field.text().await.map_err(read_error)?;
                let parsed: HashMap<String, Vec<String>> =
                    serde_json::from_str(&text).map_err(|e| bad(&format!("invalid map: {e}")))?;
                let uploads: usize = parsed.values().map(Vec::len).sum();
                if parsed.len() > max_files || uploads > max_files {
                    return Err(ApiError::TooManyFiles {
                        limit: max_files,
                        got: parsed.len().max(uploads),
                    });
                }
                if let Some((key, _)) = parsed.iter().find(|(_, paths)| paths.is_empty()) {
                    return Err(bad(&format!("the map gives file part {key:?} no path")));
                }
                map = Some(parsed);
            }
            _ => {
                let (Some(map), true) = (map.as_ref(), operations.is_some()) else {
                    return Err(bad("file parts must come after `operations` and `map`"));
                };
                if !map.contains_key(&name) {
                    return Err(bad(&format!("file part {name:?} is not in the map")));
                }
                let filename = field.file_name().unwrap_or(&name).to_string();
                let mut writer = AsyncStagingWriter::create(incoming, &filename, limit).await?;
                while let Some(chunk) = field.chunk().await.map_err(|e| {
                    if over_limit() {
                        ApiError::RequestTooLarge { limit: body_limit }
                    } else {
                        bad(&format!("reading {filename}: {e}"))
                    }
                })? {
                    writer.write(&chunk).await?;
                }
                let item = match writer.finish().await? {
                    Ok(staged) => Received::Staged(staged),
                    Err(rejection) => Received::Rejected {
                        filename,
                        rejection,
                    },
                };
                received.push((name, item));
            }
        }
    }
    let mut batch = operations.ok_or_else(|| bad("the `operations` part is missing"))?;
    let map = map.ok_or_else(|| bad("the `map` part is missing"))?;
    if let Some(missing) = map.keys().find(|k| !parts_seen.contains(*k)) {
        return Err(bad(&format!(
            "the map names file part {missing:?}, which the request did not send"
        )));
    }
    let n_requests = match &batch {
        BatchRequest::Single(_) => 1,
        BatchRequest::Batch(v) => v.len(),
    };
    let receipts: Vec<Arc<UploadReceipts>> = (0..n_requests)
        .map(|_| Arc::new(UploadReceipts::default()))
        .collect();
    // Resolvers read staged files from the receipts; the Upload values only need a file
    // handle, so they share one (empty) temp file.
    let placeholder = blocking(tempfile::tempfile)
        .await?
        .map_err(|e| ApiError::Internal(format!("temp file: {e}")))?;
    for (name, item) in received {
        let paths = &map[&name];
        let (filename, content_type) = match &item {
            Received::Staged(s) => (s.original_name.clone(), Some(s.container.mime().into())),
            Received::Rejected { filename, .. } => (filename.clone(), None),
        };
        // One part mapped to several variables (the same file used twice): each use gets
        // its own link to the staged bytes.
        let mut items = Vec::with_capacity(paths.len());
        for _ in 1..paths.len() {
            items.push(item.duplicate().await?);
        }
        items.push(item);
        for (path, item) in paths.iter().zip(items) {
            let (index, var_path) = match &batch {
                BatchRequest::Single(_) => (0, path.as_str()),
                BatchRequest::Batch(_) => {
                    let (i, rest) = path.split_once('.').unwrap_or((path, ""));
                    let i: usize = i
                        .parse()
                        .ok()
                        .filter(|&i| i < n_requests)
                        .ok_or_else(|| {
                            bad(&format!(
                                "map path {path:?} must start with an operation index below {n_requests}"
                            ))
                        })?;
                    (i, rest)
                }
            };
            let request = match &mut batch {
                BatchRequest::Single(r) => r,
                BatchRequest::Batch(v) => &mut v[index],
            };
            let upload = UploadValue {
                filename: filename.clone(),
                content_type: content_type.clone(),
                content: placeholder
                    .try_clone()
                    .map_err(|e| ApiError::Internal(format!("temp file: {e}")))?,
            };
            let before = request.uploads.len();
            request.set_upload(var_path, upload);
            if request.uploads.len() == before {
                return Err(bad(&format!("map path {path:?} names no variable")));
            }
            // One slot per upload: async-graphql numbers an `Upload` by its position among
            // the request's uploads.
            receipts[index].0.lock().unwrap().push(Some(item));
        }
    }
    Ok(MultipartRequest { batch, receipts })
}

/// The original file, with Range support for players.
async fn file_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return (StatusCode::BAD_REQUEST, "not a file id").into_response();
    };
    // A key with read scope, or a signed URL (what `AudioFile.url` gives on such servers).
    let caller = caller_of(&req);
    if let Err(e) = caller.require(Scope::Read) {
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let signed = match (query.get("exp"), query.get("sig")) {
            (Some(exp), Some(sig)) => state.auth.check_file_signature(id, exp, sig),
            _ => false,
        };
        if !signed {
            let status = match e {
                ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            return (
                status,
                "this file needs a key with read scope, or a signed URL (AudioFile.url); \
                 signed URLs expire after an hour",
            )
                .into_response();
        }
    }
    let row = match entity::store::get(&state.library.db, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such file").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "file lookup failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "database error").into_response();
        }
    };
    // Any location that still exists (a folder's file may have moved, or its folder be gone
    // while an upload of the same content remains).
    let path = match state.library.readable_path(&row).await {
        Ok(path) => path,
        Err(e) => {
            tracing::error!(error = %e, "file lookup failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "database error").into_response();
        }
    };
    let mime = crate::storage::Container::from_name(&row.container)
        .map(|c| c.mime())
        .unwrap_or("application/octet-stream");
    let mut req = req;
    let multi_range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(','));
    if multi_range {
        // Several ranges at once (multipart/byteranges): RFC 9110 lets a server ignore Range
        // and send the whole file (200), which every client handles; players ask for one.
        req.headers_mut().remove(header::RANGE);
    } else if let Some(clamped) = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| clamp_range(v, row.size_bytes.max(0) as u64))
    {
        // A last byte past the end means "to the end" (RFC 9110 §14.1.2), not an error.
        req.headers_mut().insert(header::RANGE, clamped);
    }
    let serve = ServeFile::new_with_mime(&path, &mime.parse().expect("static mime"));
    match serve.oneshot(req).await {
        Ok(mut res) => {
            let disposition = format!(
                "inline; filename*=UTF-8''{}",
                percent_encode(&row.original_name)
            );
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            res.map(Body::new).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "serving a file failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file").into_response()
        }
    }
}

/// `bytes=a-b` with `b` at or past the end, as `bytes=a-`; `None` when nothing to change.
fn clamp_range(range: &str, size: u64) -> Option<HeaderValue> {
    let spec = range.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let last: u64 = last.parse().ok()?;
    if first.is_empty() || last < size {
        return None;
    }
    HeaderValue::from_str(&format!("bytes={first}-")).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.library.readiness().await {
        Ok(()) => "ready".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_get(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    if let Err(e) = caller_of(&req).require(Scope::Read) {
        return api_error_response(&e);
    }
    // Node reachability and collection sizes as of now (an unanswered check leaves the
    // last figures; `traum_vector_store_nodes{state="unreachable"}` says why).
    let _ = state.library.index_status().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.library.metrics.render(),
    )
        .into_response()
}
