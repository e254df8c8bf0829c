//! Errors of the service, each with a stable code that GraphQL clients see as
//! `extensions.code`.

use async_graphql::ErrorExtensions;
use traum_audio::{AudioError, ErrorKind};

use crate::storage::Rejection;

/// Stable error codes (the `code` extension of GraphQL errors).
pub mod code {
    pub const UNSUPPORTED_FORMAT: &str = "UNSUPPORTED_FORMAT";
    pub const TOO_LARGE: &str = "TOO_LARGE";
    pub const EMPTY: &str = "EMPTY";
    pub const TOO_MANY_FILES: &str = "TOO_MANY_FILES";
    pub const CORRUPT: &str = "CORRUPT";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const NOT_READY: &str = "NOT_READY";
    pub const EMBED_FAILED: &str = "EMBED_FAILED";
    pub const INDEX_FAILED: &str = "INDEX_FAILED";
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    pub const STORAGE_FULL: &str = "STORAGE_FULL";
    pub const QUERY_TOO_DEEP: &str = "QUERY_TOO_DEEP";
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const TOO_BUSY: &str = "TOO_BUSY";
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";
    pub const CLIP_TOO_LONG: &str = "CLIP_TOO_LONG";
    pub const INTERNAL: &str = "INTERNAL";
}

/// What went wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An upload refused while it was received.
    #[error("{filename}: {}", rejection_message(.rejection))]
    Rejected {
        filename: String,
        rejection: Rejection,
    },
    #[error("at most {limit} files per request, got {got}")]
    TooManyFiles { limit: usize, got: usize },
    #[error("the request is larger than {} (the server's --max-request-mb); send fewer or smaller files per request", human_bytes(*limit))]
    RequestTooLarge { limit: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// Decoding an audio query failed.
    #[error("{0}")]
    Audio(#[from] AudioError),
    #[error("the model failed: {0}")]
    Embed(String),
    #[error("vector index: {0}")]
    Index(#[from] traum_index::IndexError),
    #[error("database: {0}")]
    Store(#[from] entity::store::StoreError),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The disk (or a file system quota) is full.
    #[error("{0}")]
    StorageFull(String),
    #[error("this server wants an API key: send `Authorization: Bearer <key>` (over WebSocket, in connection_init); an admin creates one with `traum keys create`")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    /// Too much at once (uploads or searches in flight); try again shortly.
    #[error("{0}")]
    TooBusy(String),
    /// The library's storage quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A search clip longer than the server embeds.
    #[error("the clip is longer than {limit_s:.0} s; search with a shorter excerpt (the server's --max-clip-s)")]
    ClipTooLong { limit_s: f64 },
    #[error("{0}")]
    Internal(String),
}

/// A sentence a person can act on.
pub fn rejection_message(r: &Rejection) -> String {
    match r {
        Rejection::TooLarge { limit } => format!(
            "file is larger than the upload limit of {} (set --max-upload-mb to raise it)",
            human_bytes(*limit)
        ),
        Rejection::Empty => "file is empty".to_string(),
        Rejection::UnsupportedFormat { looked_like } => format!(
            "not a supported audio file (it looks like {looked_like}; supported: {})",
            traum_audio::SUPPORTED_FORMATS
        ),
    }
}

pub fn rejection_code(r: &Rejection) -> &'static str {
    match r {
        Rejection::TooLarge { .. } => code::TOO_LARGE,
        Rejection::Empty => code::EMPTY,
        Rejection::UnsupportedFormat { .. } => code::UNSUPPORTED_FORMAT,
    }
}

/// The stored `error_code` for an audio error found while decoding.
pub fn audio_error_code(e: &AudioError) -> &'static str {
    match e.kind() {
        ErrorKind::UnsupportedFormat | ErrorKind::UnsupportedCodec | ErrorKind::NoAudioTrack => {
            code::UNSUPPORTED_FORMAT
        }
        ErrorKind::Empty => code::EMPTY,
        ErrorKind::Corrupt | ErrorKind::InvalidHeader => code::CORRUPT,
        _ => code::INTERNAL,
    }
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Rejected { rejection, .. } => rejection_code(rejection),
            ApiError::TooManyFiles { .. } => code::TOO_MANY_FILES,
            ApiError::RequestTooLarge { .. } => code::TOO_LARGE,
            ApiError::NotFound(_) => code::NOT_FOUND,
            ApiError::BadRequest(_) => code::BAD_REQUEST,
            ApiError::Audio(e) => audio_error_code(e),
            ApiError::Embed(_) => code::EMBED_FAILED,
            ApiError::Index(_) => code::INDEX_FAILED,
            ApiError::Store(entity::store::StoreError::NotFound(_))
            | ApiError::Store(entity::store::StoreError::Missing(_)) => code::NOT_FOUND,
            ApiError::Store(entity::store::StoreError::InvalidArgument(_)) => code::BAD_REQUEST,
            ApiError::Store(entity::store::StoreError::InvalidCursor(_)) => code::BAD_REQUEST,
            ApiError::Store(_) => code::INTERNAL,
            ApiError::ShuttingDown => code::SHUTTING_DOWN,
            ApiError::StorageFull(_) => code::STORAGE_FULL,
            ApiError::Unauthenticated => code::UNAUTHENTICATED,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::TooBusy(_) => code::TOO_BUSY,
            ApiError::QuotaExceeded(_) => code::QUOTA_EXCEEDED,
            ApiError::ClipTooLong { .. } => code::CLIP_TOO_LONG,
            ApiError::Internal(_) => code::INTERNAL,
        }
    }

    pub fn not_found_file(id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("no audio file with id {id}"))
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        if self.code() == code::INTERNAL {
            tracing::error!(error = %self, "internal error");
        }
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| e.set("code", self.code()))
    }
}

/// `?` in resolvers: async-graphql's blanket `From<impl Display>` would drop
/// the `code` extension, so results convert explicitly.
pub trait GqlResult<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T, E: Into<ApiError>> GqlResult<T> for Result<T, E> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.into().extend())
    }
}

/// `1.5 MB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
