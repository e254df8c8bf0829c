//! GraphQL output and input types.

use std::sync::Arc;

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use entity::audio_file::Model as FileRow;
use entity::search_log::{Model as SearchRow, SearchKind};
use traum_index::SearchFilter;

use crate::auth::{Auth, Scope};
use crate::error::GqlResult;
use crate::events::ApiFileStatus;
use crate::library::{SearchHit, SearchOutcome};

/// An audio file in the library.
pub struct AudioFile(pub FileRow);

#[Object]
impl AudioFile {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// File name as uploaded.
    async fn original_name(&self) -> &str {
        &self.0.original_name
    }
    /// SHA-256 of the bytes (hex); the same content is stored once.
    async fn content_hash(&self) -> &str {
        &self.0.content_hash
    }
    async fn size_bytes(&self) -> f64 {
        self.0.size_bytes as f64
    }
    /// Container, from the content: wav, aiff, flac, mp3, ogg, mp4 or aac.
    async fn container(&self) -> &str {
        &self.0.container
    }
    /// Codec, once decoded (pcm_s16le, flac, mp3, vorbis, aac, …).
    async fn codec(&self) -> Option<&str> {
        self.0.codec.as_deref()
    }
    /// Length in seconds: the header's claim while queued, the decoded length once indexed
    /// (what the windows and duration filters use).
    async fn duration_s(&self) -> Option<f64> {
        self.0.duration_s
    }
    /// Source sample rate in Hz.
    async fn sample_rate(&self) -> Option<i32> {
        self.0.sample_rate
    }
    async fn channels(&self) -> Option<i32> {
        self.0.channels
    }
    async fn status(&self) -> ApiFileStatus {
        self.0.status.into()
    }
    /// Windows embedded so far (of `windowsTotal`).
    async fn windows_done(&self) -> i32 {
        self.0.windows_done
    }
    async fn windows_total(&self) -> i32 {
        self.0.windows_total
    }
    /// Stable code when FAILED (UNSUPPORTED_FORMAT, CORRUPT, EMPTY, …).
    async fn error_code(&self) -> Option<&str> {
        self.0.error_code.as_deref()
    }
    /// Why it FAILED, for people.
    async fn error_message(&self) -> Option<&str> {
        self.0.error_message.as_deref()
    }
    /// The model that made its vectors.
    async fn model_id(&self) -> Option<&str> {
        self.0.model_id.as_deref()
    }
    /// How many times processing started.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn indexed_at(&self) -> Option<DateTime<Utc>> {
        self.0.indexed_at
    }
    /// Every place its content was found (one library entry for the same content in
    /// several folders, or in a folder and the uploads).
    async fn locations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<FileLocation>> {
        let lib = ctx.data::<Arc<crate::library::Library>>()?;
        let rows = entity::store::sources::locations_of_file(&lib.db, self.0.id)
            .await
            .gql()?;
        Ok(rows
            .into_iter()
            .map(|row| FileLocation {
                row,
                storage: lib.paths.storage.clone(),
            })
            .collect())
    }
    /// Where the original streams from (supports HTTP Range). On a server that wants keys
    /// this is a signed URL valid for an hour, so an `<audio>` element can play it without
    /// the key in its query string.
    async fn url(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        let auth = ctx.data::<Arc<Auth>>()?;
        let open = auth
            .anonymous_scope()
            .await
            .is_some_and(|s| s.allows(Scope::Read));
        Ok(if open {
            format!("/files/{}", self.0.id)
        } else {
            auth.signed_file_url(self.0.id)
        })
    }
}

/// Where a file's content was found: a path in a folder source, or the stored upload.
pub struct FileLocation {
    pub row: entity::file_location::Model,
    pub storage: std::path::PathBuf,
}

#[Object]
impl FileLocation {
    async fn source_id(&self) -> ID {
        ID(self.row.source_id.to_string())
    }
    /// The absolute path in a folder; for an upload, the stored copy's path relative to the
    /// storage directory.
    async fn path(&self) -> &str {
        &self.row.path
    }
    /// Whether the path exists now.
    async fn exists(&self) -> bool {
        let path = std::path::Path::new(&self.row.path);
        if path.is_absolute() {
            path.exists()
        } else {
            self.storage.join(path).exists()
        }
    }
}

/// What a library source is.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A folder read in place: scanned, then watched while the server runs.
    Folder,
    /// Uploaded files (stored copies).
    Upload,
}

/// A place the library's files come from.
pub struct LibrarySource {
    pub row: entity::library_source::Model,
    pub file_count: u64,
}

#[Object]
impl LibrarySource {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn kind(&self) -> SourceKind {
        match self.row.kind {
            entity::library_source::SourceKind::Folder => SourceKind::Folder,
            entity::library_source::SourceKind::Upload => SourceKind::Upload,
        }
    }
    /// The folder (absolute, symbolic links resolved); the storage directory for uploads.
    async fn path(&self) -> &str {
        &self.row.path
    }
    async fn state(&self) -> crate::events::ApiSourceState {
        self.row.state.into()
    }
    /// Files with a location in this source.
    async fn file_count(&self) -> i32 {
        self.file_count.min(i32::MAX as u64) as i32
    }
    /// The running scan's counters, or the last one's.
    async fn scan(&self) -> crate::events::SourceScan {
        crate::events::SourceScan::from_row(&self.row)
    }
    async fn scan_started_at(&self) -> Option<DateTime<Utc>> {
        self.row.scan_started_at
    }
    /// When the last scan ended.
    async fn scanned_at(&self) -> Option<DateTime<Utc>> {
        self.row.scanned_at
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
}

/// One file of a search result.
#[derive(SimpleObject)]
pub struct SearchResult {
    pub file: AudioFile,
    /// Cosine similarity of the best-matching window to the query.
    pub score: f64,
    /// Where in the file the match is.
    pub best_window: Option<MatchWindow>,
}

/// A 10 s window of a file.
#[derive(SimpleObject)]
pub struct MatchWindow {
    pub index: i32,
    pub start_s: f64,
    pub end_s: f64,
    pub score: f64,
}

impl From<SearchHit> for SearchResult {
    fn from(h: SearchHit) -> Self {
        Self {
            file: AudioFile(h.file),
            score: f64::from(h.hit.score),
            best_window: h.hit.best_window.map(|w| MatchWindow {
                index: w.index as i32,
                start_s: w.start_s,
                end_s: w.end_s,
                score: f64::from(w.score),
            }),
        }
    }
}

/// A search with its results.
#[derive(SimpleObject)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    /// Server-side time, milliseconds.
    pub latency_ms: f64,
    /// The model index that answered (its key, `<model>@<weights digest>`): the query was
    /// embedded by that model.
    pub model: String,
}

impl From<SearchOutcome> for SearchResponse {
    fn from(o: SearchOutcome) -> Self {
        Self {
            latency_ms: o.latency_ms,
            model: o.model,
            results: o.hits.into_iter().map(Into::into).collect(),
        }
    }
}

/// Restricts a search.
#[derive(Debug, Clone, Default, InputObject)]
pub struct SearchFilterInput {
    pub min_duration_s: Option<f64>,
    pub max_duration_s: Option<f64>,
    /// Containers (wav, flac, mp3, ogg, mp4, aac); any when empty.
    pub formats: Option<Vec<String>>,
    /// Uploaded after this time.
    pub uploaded_after: Option<DateTime<Utc>>,
    /// Uploaded before this time.
    pub uploaded_before: Option<DateTime<Utc>>,
}

impl From<SearchFilterInput> for SearchFilter {
    fn from(f: SearchFilterInput) -> Self {
        SearchFilter {
            min_duration_s: f.min_duration_s,
            max_duration_s: f.max_duration_s,
            formats: f.formats.unwrap_or_default(),
            created_after: f.uploaded_after.map(|t| t.timestamp()),
            created_before: f.uploaded_before.map(|t| t.timestamp()),
        }
    }
}

/// Listing order by upload time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
pub enum FileOrder {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// The result of one file of a batch upload: the file, or why not.
#[derive(SimpleObject)]
pub struct UploadOutcome {
    /// The name the client sent.
    pub filename: String,
    pub file: Option<AudioFile>,
    /// False when the same content was already in the library.
    pub created: bool,
    pub error: Option<UploadError>,
}

impl UploadOutcome {
    pub fn failed(filename: String, e: &crate::error::ApiError) -> Self {
        Self {
            filename,
            file: None,
            created: false,
            error: Some(UploadError {
                code: e.code().into(),
                message: e.to_string(),
            }),
        }
    }
}

/// Why an upload was refused.
#[derive(SimpleObject)]
pub struct UploadError {
    /// UNSUPPORTED_FORMAT, TOO_LARGE, EMPTY, …
    pub code: String,
    pub message: String,
}

/// Is the server ready, and what is it running.
#[derive(SimpleObject)]
pub struct Health {
    /// "ok", or "shutting_down".
    pub status: String,
    pub version: String,
    pub uptime_s: f64,
    /// The active model: it embeds queries and new files, and search reads its index.
    pub model: ModelInfo,
    pub vector_store: VectorStoreInfo,
    pub queue: QueueInfo,
    /// A reindex with another model this server runs (null when none).
    pub reindex: Option<crate::events::ModelReindex>,
}

#[derive(SimpleObject)]
pub struct ModelInfo {
    /// Hub id or directory.
    pub id: String,
    /// Its index's key: `<model>@<first 12 hex digits of the weights digest>`.
    pub key: String,
    /// SHA-256 of the weights file.
    pub weights_digest: String,
    pub device: String,
    pub dtype: String,
    pub loaded: bool,
    pub embedding_dim: i32,
    pub sample_rate: i32,
    pub window_s: f64,
    pub max_batch: i32,
}

#[derive(SimpleObject)]
pub struct VectorStoreInfo {
    /// "qdrant-edge" (in-process) or "qdrant" (server or cluster).
    pub kind: String,
    /// File vectors.
    pub files: f64,
    /// Window vectors.
    pub windows: f64,
    /// All points: files + windows.
    pub points: f64,
    /// Qdrant nodes and whether each answered just now (empty for the in-process store).
    pub nodes: Vec<VectorStoreNode>,
    /// The collections (in-process: shards) and what they hold.
    pub collections: Vec<VectorCollection>,
    /// Why the status check failed, when it did (the counts above still come from the
    /// store).
    pub status_error: Option<String>,
}

#[derive(SimpleObject)]
pub struct VectorStoreNode {
    /// The node's gRPC URL as configured.
    pub url: String,
    pub reachable: bool,
    /// The node's Qdrant version, when it answered.
    pub version: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

#[derive(SimpleObject)]
pub struct VectorCollection {
    pub name: String,
    /// green (ready), yellow (optimising), grey (optimisation pending), red (failed).
    pub status: String,
    /// Points (approximate while deleted points are not yet vacuumed).
    pub points: f64,
    /// Vectors in HNSW graphs.
    pub indexed_vectors: f64,
    pub segments: i32,
}

#[derive(SimpleObject)]
pub struct QueueInfo {
    /// Files waiting for a worker.
    pub queued: i32,
    /// Files being decoded or embedded.
    pub processing: i32,
    pub indexed: i32,
    pub failed: i32,
    /// Windows and texts waiting for the model.
    pub embed_pending: i32,
}

/// Searches so far.
#[derive(SimpleObject)]
pub struct SearchStats {
    pub total: i32,
    pub text: i32,
    pub audio: i32,
    pub similar: i32,
    pub mean_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
}

/// What the library holds.
#[derive(SimpleObject)]
pub struct LibraryStats {
    /// Files in the library, in every state.
    pub files: i32,
    /// Bytes stored.
    pub bytes: f64,
    /// Seconds of audio (of the files decoded so far).
    pub duration_s: f64,
    /// The same, per container, most files first.
    pub formats: Vec<FormatStats>,
}

/// One container's share of the library.
#[derive(SimpleObject)]
pub struct FormatStats {
    /// wav, flac, mp3, ogg or mp4.
    pub format: String,
    pub files: i32,
    pub bytes: f64,
    pub duration_s: f64,
}

impl LibraryStats {
    pub fn from_shares(shares: Vec<entity::store::FormatShare>) -> Self {
        let formats: Vec<FormatStats> = shares
            .into_iter()
            .map(|s| FormatStats {
                format: s.container,
                files: i32::try_from(s.files).unwrap_or(i32::MAX),
                bytes: s.bytes,
                duration_s: s.duration_s,
            })
            .collect();
        LibraryStats {
            files: formats.iter().map(|f| f.files).sum(),
            bytes: formats.iter().map(|f| f.bytes).sum(),
            duration_s: formats.iter().map(|f| f.duration_s).sum(),
            formats,
        }
    }
}

/// Kind of search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "SearchKind")]
pub enum SearchKindGql {
    Text,
    Audio,
    Similar,
}

impl From<SearchKind> for SearchKindGql {
    fn from(k: SearchKind) -> Self {
        match k {
            SearchKind::Text => SearchKindGql::Text,
            SearchKind::Audio => SearchKindGql::Audio,
            SearchKind::Similar => SearchKindGql::Similar,
        }
    }
}

/// A logged search.
pub struct SearchLogEntry(pub SearchRow);

#[Object]
impl SearchLogEntry {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> SearchKindGql {
        self.0.kind.into()
    }
    /// The text; the clip's file name; or the file id of a similar search.
    async fn query_text(&self) -> Option<&str> {
        self.0.query_text.as_deref()
    }
    async fn result_count(&self) -> i32 {
        self.0.result_count
    }
    async fn latency_ms(&self) -> f64 {
        self.0.latency_ms
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A key's scope, as the API names it. Scopes nest: WRITE can read, ADMIN can do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "Scope")]
pub enum ApiScope {
    Read,
    Write,
    Admin,
}

impl From<Scope> for ApiScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Read => ApiScope::Read,
            Scope::Write => ApiScope::Write,
            Scope::Admin => ApiScope::Admin,
        }
    }
}

impl From<ApiScope> for Scope {
    fn from(s: ApiScope) -> Self {
        match s {
            ApiScope::Read => Scope::Read,
            ApiScope::Write => Scope::Write,
            ApiScope::Admin => Scope::Admin,
        }
    }
}

/// What the caller may do.
#[derive(SimpleObject)]
pub struct Access {
    /// The caller's scope; null: nothing (send a key).
    pub scope: Option<ApiScope>,
    /// The key the caller sent, if any.
    pub key_name: Option<String>,
    pub key_prefix: Option<String>,
    /// Whether a caller without a key can do nothing here.
    pub keys_required: bool,
}

/// An API key (its secret is never shown again after creation).
pub struct ApiKeyInfo(pub entity::api_key::Model);

#[Object]
impl ApiKeyInfo {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The key's first characters, to tell keys apart.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    async fn scope(&self) -> ApiScope {
        self.0.scope.into()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// A new key and its secret (shown once).
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    pub key: ApiKeyInfo,
    /// Send as `Authorization: Bearer <secret>`; it cannot be shown again.
    pub secret: String,
}

/// A model index: the vectors one model made of the library.
#[derive(SimpleObject)]
#[graphql(name = "ModelIndex")]
pub struct ModelIndexInfo {
    /// `<model>@<first 12 hex digits of the weights digest>`.
    pub key: String,
    /// What the model is loaded from: a hub id or a directory.
    pub model_id: String,
    /// SHA-256 of the weights file.
    pub weights_digest: String,
    pub dim: i32,
    pub state: crate::events::ApiModelState,
    /// Whether this server has the model loaded (the active one, and a reindex's target).
    pub loaded: bool,
    /// Files embedded with this model (a building index: so far).
    pub files_done: i64,
    /// Files this model could not embed in its last reindex.
    pub files_failed: i64,
    /// Indexed files of the library when last counted.
    pub files_total: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
}

impl ModelIndexInfo {
    pub fn new(lib: &crate::library::Library, row: entity::model_index::Model) -> Self {
        let loaded = lib.models.active().key == row.key
            || lib.models.target().is_some_and(|t| t.key == row.key);
        Self {
            key: row.key,
            model_id: row.model_id,
            weights_digest: row.weights_digest,
            dim: row.dim,
            state: row.state.into(),
            loaded,
            files_done: row.files_done,
            files_failed: row.files_failed,
            files_total: row.files_total,
            error: row.last_error,
            created_at: row.created_at,
            completed_at: row.completed_at,
            activated_at: row.activated_at,
        }
    }
}
