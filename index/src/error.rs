//! Errors of the vector index.

use std::path::PathBuf;

/// A boxed error from a storage backend (qdrant-edge or qdrant-client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in the index. Each variant names its cause.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The index on disk was built with another model (another embedding size).
    #[error(
        "index at {} holds {stored}-d vectors but the model produces {expected}-d; \
         reindex or use a new data dir",
        path.display()
    )]
    DimensionMismatch {
        path: PathBuf,
        stored: usize,
        expected: usize,
    },

    /// A vector passed to the index has the wrong length.
    #[error("{what} has {got} dimensions but the index holds {expected}-d vectors")]
    VectorDimension {
        what: String,
        got: usize,
        expected: usize,
    },

    /// A vector passed to the index holds NaN or an infinity.
    #[error("{what} contains a non-finite value (NaN or infinity)")]
    NonFiniteVector { what: String },

    /// An argument is out of range (a zero dimension, a window ending before it starts, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The directory holds a vector store that this crate did not make.
    #[error("index at {} is not usable: {reason}", path.display())]
    Incompatible { path: PathBuf, reason: String },

    /// The index directory could not be created or read.
    #[error("cannot use index directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The index is open already, in this process or another one.
    #[error("index at {} is already open (in this or another process)", path.display())]
    Locked { path: PathBuf },

    /// Opening (creating or loading) the store failed.
    #[error("cannot open index at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    /// A storage operation (upsert, delete, query, flush, …) failed in the backend.
    #[error("index {op} failed: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: BoxError,
    },

    /// A stored point lacks a payload field this crate writes on every point.
    #[error("index point {point} has a malformed payload: {reason}")]
    CorruptPayload { point: String, reason: String },

    /// Reopening the store (to drop its write-ahead log) failed; it stays closed until the
    /// process restarts.
    #[error("index at {} is closed: reopening it failed: {reason}", path.display())]
    Closed { path: PathBuf, reason: String },

    /// A Qdrant collection exists but does not fit this model or this crate's points.
    #[error("Qdrant collection `{collection}` cannot be used: {reason}")]
    Collection { collection: String, reason: String },

    /// No Qdrant node answered (each refused, timed out or could not be reached).
    #[error("index {op} failed: no Qdrant node answered ({nodes}): {source}")]
    Unreachable {
        op: &'static str,
        nodes: String,
        #[source]
        source: BoxError,
    },

    /// The blocking task running an operation panicked or was cancelled.
    #[error("index {op} task did not complete: {message}")]
    Task { op: &'static str, message: String },
}

impl IndexError {
    pub(crate) fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            op,
            source: source.into(),
        }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
