//! The server's request-parsing targets: the GraphQL multipart upload parser and GraphQL
//! requests (parse, validation, depth and complexity limits, execution).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_graphql::BatchRequest;
use bytes::Bytes;
use futures_util::StreamExt as _;
use traum_server::auth::{Caller, Scope};
use traum_server::error::ApiError;
use traum_server::graphql::{schema_without_data, Received, SchemaLimits, TraumSchema};
use traum_server::http::{parse_multipart, MultipartLimits};

/// One runtime for every execution: the parser stages files on blocking threads, as in the
/// server. Current-thread, so an execution is deterministic apart from the blocking pool.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("harness: cannot build a tokio runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// multipart
// ---------------------------------------------------------------------------------------------

/// The `multipart` target's limits: small, so that inputs AFL can make reach every refusal.
pub const MULTIPART_MAX_JSON_BYTES: usize = 4096;
pub const MULTIPART_MAX_FILES: usize = 4;
pub const MULTIPART_MAX_FILE_BYTES: u64 = 8192;
/// The whole request's bound (the server's `--max-request-mb`).
pub const MULTIPART_MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Where the `multipart` target stages files: one directory per process, which must be empty
/// again after every input (nothing staged outlives its request).
fn incoming_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("traum-fuzz-incoming-")
            .tempdir()
            .expect("harness: cannot create the staging directory")
    })
    .path()
}

fn leftover_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("harness: cannot list the staging directory")
        .map(|e| e.expect("harness: staging directory entry").path())
        .collect()
}

/// Builds the `multipart` target's staging directory now (see [`crate::warm_up_mel`]).
pub fn warm_up_multipart() {
    runtime();
    incoming_dir();
}

/// Parses an arbitrary multipart body with [`parse_multipart`], as the server does.
///
/// Input layout: 4 bytes of chunk pattern (how the body stream is cut, see
/// [`crate::chunk_len`]; all zero: one piece), the boundary up to the first `\n` (at most 200
/// bytes; none: the input has no body), then the body. The content type is
/// `multipart/form-data; boundary=<boundary>`.
///
/// Promises checked: no panic; a request whose body went past the limit is refused; at most
/// [`MULTIPART_MAX_FILES`] uploads, each staged file within [`MULTIPART_MAX_FILE_BYTES`] and
/// of the size its bytes on disk have; nothing staged remains once the request is dropped,
/// whether it was accepted or refused.
pub fn multipart(data: &[u8]) {
    multipart_outcome(data);
}

/// [`multipart`], saying what became of the input: `None` if it holds no boundary line, else
/// the number of uploads accepted, or the refusal.
pub fn multipart_outcome(data: &[u8]) -> Option<Result<usize, String>> {
    let mut b = crate::Bytes(data);
    let pattern: Vec<usize> = (0..4).map(|_| crate::chunk_len(b.u8())).collect();
    let rest = b.0;
    let nl = rest.iter().take(200).position(|&c| c == b'\n')?;
    let boundary = String::from_utf8_lossy(&rest[..nl]);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let body = Bytes::copy_from_slice(&rest[nl + 1..]);

    let plan: Vec<usize> = if pattern.iter().all(|&n| n == 0) {
        vec![body.len()]
    } else {
        crate::chunk_plan(&pattern, body.len())
    };
    // The server's `SharedBody`: counts what was read and ends in an error past the limit.
    let seen = Arc::new(AtomicU64::new(0));
    let chunks: Vec<Result<Bytes, std::io::Error>> = {
        let mut at = 0;
        let mut out = Vec::with_capacity(plan.len());
        let mut total = 0u64;
        for n in plan {
            total += n as u64;
            if total > MULTIPART_MAX_REQUEST_BYTES {
                out.push(Err(std::io::Error::other(
                    "the request body is larger than the limit",
                )));
                break;
            }
            out.push(Ok(body.slice(at..at + n)));
            at += n;
        }
        out
    };
    let counter = seen.clone();
    let stream = futures_util::stream::iter(chunks).inspect(move |item| {
        let n = item
            .as_ref()
            .map_or(MULTIPART_MAX_REQUEST_BYTES + 1, |b| b.len() as u64);
        counter.fetch_add(n, Ordering::Relaxed);
    });
    let over_limit = || seen.load(Ordering::Relaxed) > MULTIPART_MAX_REQUEST_BYTES;
    let incoming = incoming_dir();
    let limits = MultipartLimits {
        max_json_bytes: MULTIPART_MAX_JSON_BYTES,
        max_files: MULTIPART_MAX_FILES,
        max_file_bytes: MULTIPART_MAX_FILE_BYTES,
        incoming: incoming.to_path_buf(),
    };

    let result = runtime().block_on(parse_multipart(
        &limits,
        &content_type,
        stream,
        &over_limit,
        MULTIPART_MAX_REQUEST_BYTES,
    ));
    let outcome = match &result {
        Ok(request) => {
            assert!(
                !over_limit(),
                "parse_multipart accepted a request whose body went past the limit"
            );
            let mut uploads = 0;
            for receipts in &request.receipts {
                for item in receipts.0.lock().unwrap().iter().flatten() {
                    uploads += 1;
                    if let Received::Staged(staged) = item {
                        assert!(
                            staged.size <= MULTIPART_MAX_FILE_BYTES,
                            "staged a {}-byte file over the {MULTIPART_MAX_FILE_BYTES}-byte limit",
                            staged.size
                        );
                        let on_disk = std::fs::metadata(&staged.tmp_path)
                            .unwrap_or_else(|e| {
                                panic!("staged file {} is missing: {e}", staged.tmp_path.display())
                            })
                            .len();
                        assert_eq!(on_disk, staged.size, "staged size and bytes on disk differ");
                        assert!(
                            staged.tmp_path.starts_with(incoming),
                            "staged outside the staging directory: {}",
                            staged.tmp_path.display()
                        );
                    }
                }
            }
            assert!(
                uploads <= MULTIPART_MAX_FILES,
                "{uploads} uploads accepted (limit {MULTIPART_MAX_FILES})"
            );
            let variables: usize = match &request.batch {
                BatchRequest::Single(r) => r.uploads.len(),
                BatchRequest::Batch(v) => v.iter().map(|r| r.uploads.len()).sum(),
            };
            assert_eq!(
                variables, uploads,
                "uploads in the operations and receipts differ"
            );
            Ok(uploads)
        }
        Err(e) => {
            assert_refusal_is_coded(e);
            Err(e.to_string())
        }
    };
    drop(result);
    let left = leftover_files(incoming);
    assert!(
        left.is_empty(),
        "staged files outlived their request: {left:?}"
    );
    Some(outcome)
}

/// A refused multipart request says why in one of the request-level ways (not an internal
/// error, which would mean the parser broke, or a storage error, which the fuzzer cannot cause).
fn assert_refusal_is_coded(e: &ApiError) {
    assert!(
        matches!(
            e,
            ApiError::BadRequest(_)
                | ApiError::TooManyFiles { .. }
                | ApiError::RequestTooLarge { .. }
        ),
        "parse_multipart refused with an unexpected error: {e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// graphql
// ---------------------------------------------------------------------------------------------

/// Most operations in one batched request (the server's `--max-batch-operations` default).
pub const GRAPHQL_MAX_BATCH: usize = 16;

fn schema() -> &'static TraumSchema {
    static SCHEMA: OnceLock<TraumSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_without_data(SchemaLimits::default()))
}

/// Builds the `graphql` target's schema now (see [`crate::warm_up_mel`]).
pub fn warm_up_graphql() {
    runtime();
    schema();
}

/// Runs an arbitrary GraphQL request against the server's schema, with its depth and
/// complexity limits, as an admin caller (so that guards let fields through to their
/// resolvers, which then find no library: this target is about parsing, validation and the
/// limits, not the data).
///
/// Input layout: one mode byte (even: the rest is a JSON request body, single or batched, as
/// `POST /graphql` reads it; odd: the rest is the query text), then the body.
///
/// Promises checked: no panic, and every response serialises.
pub fn graphql(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let batch = if mode & 1 == 0 {
        match serde_json::from_slice::<BatchRequest>(rest) {
            Ok(batch) => batch,
            Err(_) => return,
        }
    } else {
        BatchRequest::Single(async_graphql::Request::new(String::from_utf8_lossy(rest)))
    };
    if let BatchRequest::Batch(v) = &batch {
        if v.is_empty() || v.len() > GRAPHQL_MAX_BATCH {
            return;
        }
    }
    let caller = Caller {
        key: None,
        scope: Some(Scope::Admin),
        peer: None,
    };
    let response = runtime().block_on(schema().execute_batch(batch.data(caller)));
    serde_json::to_vec(&response)
        .unwrap_or_else(|e| panic!("the response does not serialise: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/corpus/multipart/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The harness reaches the parser: well-formed seeds are accepted with their uploads, each
    /// malformed one is refused for its own reason (not for a harness mistake such as a bad
    /// boundary).
    #[test]
    fn multipart_seeds_reach_the_parser() {
        for (name, uploads) in [
            ("single.bin", 1),
            ("two_files.bin", 2),
            ("one_part_two_vars.bin", 2),
            ("batched.bin", 2),
            ("split_chunks.bin", 1),
            ("too_large.bin", 1), // refused alone (TOO_LARGE), the request goes on
        ] {
            assert_eq!(multipart_outcome(&seed(name)), Some(Ok(uploads)), "{name}");
        }
        for (name, why) in [
            ("second_map.bin", "sent twice"),
            ("repeated_part.bin", "sent twice"),
            ("file_before_map.bin", "must come after"),
            ("missing_part.bin", "did not send"),
            ("too_many.bin", "at most 4 files"),
            ("bad_path.bin", "names no variable"),
            ("truncated.bin", "multipart"),
        ] {
            match multipart_outcome(&seed(name)) {
                Some(Err(e)) => assert!(e.contains(why), "{name}: {e}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn graphql_inputs_run() {
        // Every mode and the limits: none may panic.
        graphql(b"\x01{ health { status } }");
        graphql(b"\x00{\"query\":\"{ access { scope } }\"}");
        graphql(b"\x00[{\"query\":\"{ health { status } }\"}]");
        let deep = format!("\x01{}{}", "{a".repeat(50_000), "}".repeat(50_000));
        graphql(deep.as_bytes());
    }
}
