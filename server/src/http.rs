//! HTTP: `/graphql` (POST queries and multipart uploads, GET GraphiQL or a
//! WebSocket for subscriptions), `/files/{id}` (originals, with Range),
//! `/metrics`, `/healthz`, and the web client at `/`.

use std::path::PathBuf;
use std::sync::Arc;

use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::{BatchRequest, BatchResponse, UploadValue};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State, WebSocketUpgrade};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::TryStreamExt;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use uuid::Uuid;

use crate::error::{code, human_bytes, ApiError};
use crate::graphql::{Received, TraumSchema, UploadReceipts};
use crate::library::Library;
use crate::storage::StagingWriter;

/// What the HTTP layer needs besides the library.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Most files in one multipart request.
    pub max_files_per_request: usize,
    /// Most bytes of a JSON request body.
    pub max_json_bytes: usize,
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
            cors_origins: Vec::new(),
            client_dir: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    library: Arc<Library>,
    schema: TraumSchema,
    config: Arc<HttpConfig>,
}

/// The whole HTTP service.
pub fn router(library: Arc<Library>, schema: TraumSchema, config: HttpConfig) -> Router {
    let cors = cors_layer(&config.cors_origins);
    let client_dir = config.client_dir.clone();
    let state = AppState {
        library,
        schema,
        config: Arc::new(config),
    };
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/files/{id}", get(file_get))
        .route("/metrics", get(metrics_get))
        .route("/healthz", get(|| async { "ok" }))
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

/// GraphiQL, or the subscription WebSocket (graphql-transport-ws or graphql-ws).
async fn graphql_get(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
        .into_response();
    }
    let (mut parts, _) = req.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| GraphQLWebSocket::new(socket, schema, protocol).serve())
        .into_response()
}

/// A GraphQL error response (request-level), with a `code` extension.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "data": null,
        "errors": [{ "message": message, "extensions": { "code": code } }],
    });
    (status, axum::Json(body)).into_response()
}

async fn graphql_post(State(state): State<AppState>, req: axum::extract::Request) -> Response {
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
        return match multipart_request(&state, &content_type, req.into_body()).await {
            Ok((batch, receipts)) => execute(&state, batch.data(receipts)).await,
            Err(e) => {
                let status = match e.code() {
                    code::TOO_MANY_FILES => StatusCode::PAYLOAD_TOO_LARGE,
                    code::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                error_response(status, e.code(), &e.to_string())
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
    let bytes = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::TOO_LARGE,
                &format!(
                    "request body is larger than {}; upload files as multipart",
                    human_bytes(limit as u64)
                ),
            )
        }
    };
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
    execute(&state, batch).await
}

async fn execute(state: &AppState, batch: BatchRequest) -> Response {
    let mut response: BatchResponse = state.schema.execute_batch(batch).await;
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

/// Reads a GraphQL multipart request (spec: `operations`, `map`, then the
/// files), streaming each file to disk through a [`StagingWriter`].
async fn multipart_request(
    state: &AppState,
    content_type: &str,
    body: Body,
) -> Result<(BatchRequest, Arc<UploadReceipts>), ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::BadRequest(format!("multipart request: {e}")))?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    // `operations` and `map` are read whole: keep them small. File parts are
    // streamed and limited by the StagingWriter.
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .for_field("operations", state.config.max_json_bytes as u64)
            .for_field("map", 64 * 1024),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let bad = |what: &str| ApiError::BadRequest(format!("multipart request: {what}"));

    let mut operations: Option<BatchRequest> = None;
    let mut map: Option<std::collections::HashMap<String, Vec<String>>> = None;
    let mut received: Vec<(String, Received)> = Vec::new();
    let limit = state.library.config.max_file_bytes;
    let incoming = state.library.paths.incoming();

    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(&e.to_string()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "operations" => {
                let text = field.text().await.map_err(|e| bad(&e.to_string()))?;
                operations = Some(
                    serde_json::from_str(&text)
                        .map_err(|e| bad(&format!("invalid operations: {e}")))?,
                );
            }
            "map" => {
                let text = field.text().await.map_err(|e| bad(&e.to_string()))?;
                let parsed: std::collections::HashMap<String, Vec<String>> =
                    serde_json::from_str(&text).map_err(|e| bad(&format!("invalid map: {e}")))?;
                let max = state.config.max_files_per_request;
                if parsed.len() > max {
                    return Err(ApiError::TooManyFiles {
                        limit: max,
                        got: parsed.len(),
                    });
                }
                map = Some(parsed);
            }
            _ => {
                let Some(map) = map.as_ref() else {
                    return Err(bad("file parts must come after `operations` and `map`"));
                };
                if !map.contains_key(&name) {
                    return Err(bad(&format!("file part {name:?} is not in the map")));
                }
                let filename = field.file_name().unwrap_or(&name).to_string();
                let mut writer = StagingWriter::create(&incoming, &filename, limit)?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| bad(&format!("reading {filename}: {e}")))?
                {
                    writer.write(&chunk)?;
                }
                let item = match tokio::task::block_in_place(|| writer.finish())? {
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
    if matches!(batch, BatchRequest::Batch(_)) {
        return Err(bad(
            "batched operations with files are not supported; send one operation \
             (uploadFiles takes a list of files)",
        ));
    }
    let map = map.ok_or_else(|| bad("the `map` part is missing"))?;
    let receipts = Arc::new(UploadReceipts::default());
    {
        let mut slots = receipts.0.lock().unwrap();
        for (name, item) in received {
            let paths = &map[&name];
            let (filename, content_type) = match &item {
                Received::Staged(s) => (s.original_name.clone(), Some(s.container.mime().into())),
                Received::Rejected { filename, .. } => (filename.clone(), None),
            };
            let mut item = Some(item);
            for path in paths {
                // A placeholder: resolvers take the staged file from the
                // receipts by index, not this (empty) temp file.
                let placeholder = UploadValue {
                    filename: filename.clone(),
                    content_type: content_type.clone(),
                    content: tempfile::tempfile()
                        .map_err(|e| ApiError::Internal(format!("temp file: {e}")))?,
                };
                let BatchRequest::Single(request) = &mut batch else {
                    unreachable!("checked above")
                };
                let before = request.uploads.len();
                request.set_upload(path, placeholder);
                if request.uploads.len() == before {
                    return Err(bad(&format!("map path {path:?} names no variable")));
                }
                // One slot per upload: async-graphql numbers an `Upload` by
                // its position among the request's uploads.
                slots.push(item.take());
            }
        }
    }
    Ok((batch, receipts))
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
    let row = match entity::store::get(&state.library.db, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such file").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "file lookup failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "database error").into_response();
        }
    };
    let path = state.library.paths.resolve(&row.stored_path);
    let mime = crate::storage::Container::from_name(&row.container)
        .map(|c| c.mime())
        .unwrap_or("application/octet-stream");
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

async fn metrics_get(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.library.metrics.render(),
    )
        .into_response()
}
