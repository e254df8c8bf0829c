//! `audio_file`: one row per distinct uploaded file.
//!
//! Files are deduplicated by [`Model::content_hash`] (SHA-256 of the bytes):
//! uploading the same content twice gives the existing row back. The id is
//! derived from that hash ([`crate::store::id_for_hash`]) and is also what
//! the Qdrant point ids are derived from.
//!
//! Life cycle: `queued` → (claimed by a worker) `decoding` → `embedding` →
//! `indexed`, or `failed` with a stable [`error_code`] and a human-readable
//! message. A worker holds a lease (`lease_owner`, `lease_token`, `lease_expires_at`)
//! while it works; a file whose lease expired is picked up again, by any process.

use sea_orm::entity::prelude::*;

/// Processing state of a file, stored as a short string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum FileStatus {
    /// Waiting for a worker.
    #[sea_orm(string_value = "queued")]
    Queued,
    /// Claimed; the audio is being decoded.
    #[sea_orm(string_value = "decoding")]
    Decoding,
    /// Decoded; windows are being embedded (`windows_done` of `windows_total`).
    #[sea_orm(string_value = "embedding")]
    Embedding,
    /// Vectors are in the index.
    #[sea_orm(string_value = "indexed")]
    Indexed,
    /// Gave up; see `error_code` and `error_message`.
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl FileStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [FileStatus; 5] = [
        FileStatus::Queued,
        FileStatus::Decoding,
        FileStatus::Embedding,
        FileStatus::Indexed,
        FileStatus::Failed,
    ];

    /// The stored string (`"queued"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Queued => "queued",
            FileStatus::Decoding => "decoding",
            FileStatus::Embedding => "embedding",
            FileStatus::Indexed => "indexed",
            FileStatus::Failed => "failed",
        }
    }

    /// A worker holds (or held) the file: `decoding` or `embedding`.
    pub fn is_in_progress(self) -> bool {
        matches!(self, FileStatus::Decoding | FileStatus::Embedding)
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FileStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown file status {s:?}"))
    }
}

/// Stable values of [`Model::error_code`]. Clients may branch on them; the
/// message next to them is for people.
pub mod error_code {
    /// The container or codec is not one traum-audio decodes.
    pub const UNSUPPORTED_FORMAT: &str = "UNSUPPORTED_FORMAT";
    /// The file is damaged or truncated.
    pub const CORRUPT: &str = "CORRUPT";
    /// The file holds no audio (zero samples).
    pub const EMPTY: &str = "EMPTY";
    /// The model failed on the decoded audio.
    pub const EMBED_FAILED: &str = "EMBED_FAILED";
    /// The vectors could not be written to the index.
    pub const INDEX_FAILED: &str = "INDEX_FAILED";
    /// Work on the file was interrupted (crash, shutdown) too many times.
    pub const TOO_MANY_ATTEMPTS: &str = "TOO_MANY_ATTEMPTS";
    /// Anything else.
    pub const INTERNAL: &str = "INTERNAL";
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audio_file")]
pub struct Model {
    /// UUIDv5 of the content hash; also the basis of the Qdrant point ids.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// File name as uploaded.
    #[sea_orm(column_type = "Text")]
    pub original_name: String,
    /// Where the bytes are kept (relative to the data directory or absolute).
    #[sea_orm(column_type = "Text")]
    pub stored_path: String,
    /// SHA-256 of the bytes, lowercase hex (64 characters). Unique.
    #[sea_orm(column_type = "String(StringLen::N(64))", unique)]
    pub content_hash: String,
    pub size_bytes: i64,
    /// Container as sniffed at upload (`wav`, `flac`, `mp3`, `ogg`, `mp4`, …).
    #[sea_orm(column_type = "String(StringLen::N(32))")]
    pub container: String,
    /// Codec, once decoded.
    #[sea_orm(column_type = "String(StringLen::N(32))", nullable)]
    pub codec: Option<String>,
    /// Duration in seconds, once decoded.
    pub duration_s: Option<f64>,
    /// Source sample rate in Hz, once decoded.
    pub sample_rate: Option<i32>,
    /// Source channel count, once decoded.
    pub channels: Option<i32>,
    pub status: FileStatus,
    /// Embedding progress for long files.
    pub windows_done: i32,
    pub windows_total: i32,
    /// A stable code from [`error_code`] when `status` is `failed`.
    #[sea_orm(column_type = "String(StringLen::N(64))", nullable)]
    pub error_code: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    /// Which model produced the vectors.
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub model_id: Option<String>,
    /// How many times a worker claimed the file.
    pub attempts: i32,
    /// The worker holding the file, while one does.
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
    /// New at every claim; every write of the worker holding the file names it (see
    /// [`crate::store::work`]).
    pub lease_token: Option<Uuid>,
    /// Not claimed again before this time (back-off after a passing failure).
    pub retry_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub indexed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
