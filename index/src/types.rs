//! The data that goes into and comes out of the index.

use uuid::Uuid;

/// Everything the index stores for one audio file: its vector (the normalised
/// mean of its windows'), one vector per window, and the metadata search can
/// filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct FileVectors {
    /// The file's id (the database's primary key).
    pub file_id: Uuid,
    /// Length of the audio in seconds.
    pub duration_s: f64,
    /// Container/codec, e.g. `"wav"`, `"flac"`, `"mp3"`, `"m4a/aac"`. Stored lower-cased;
    /// [`SearchFilter::formats`] matches it case-insensitively.
    pub format: String,
    /// When the file was added, unix seconds.
    pub created_at: i64,
    /// The file's vector.
    pub vector: Vec<f32>,
    /// The file's windows in order: `windows[i]` is window `i`.
    pub windows: Vec<WindowVector>,
}

/// One window of a file: where it lies and its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowVector {
    pub start_s: f64,
    pub end_s: f64,
    pub vector: Vec<f32>,
}

/// Which files a search may return. Every bound is optional; an empty filter matches all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilter {
    /// Only files at least this long (inclusive).
    pub min_duration_s: Option<f64>,
    /// Only files at most this long (inclusive).
    pub max_duration_s: Option<f64>,
    /// Only files in any of these formats (case-insensitive). Empty: any format.
    pub formats: Vec<String>,
    /// Only files created strictly after this time (unix seconds).
    pub created_after: Option<i64>,
    /// Only files created strictly before this time (unix seconds).
    pub created_before: Option<i64>,
}

/// How to search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    /// At most this many files.
    pub limit: usize,
    /// Only files whose best score (cosine similarity) is at least this.
    pub score_threshold: Option<f32>,
    pub filter: SearchFilter,
    /// Leave this file out (e.g. the file a "similar to this file" query came from).
    pub exclude_file: Option<Uuid>,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            limit: 10,
            score_threshold: None,
            filter: SearchFilter::default(),
            exclude_file: None,
        }
    }
}

impl SearchParams {
    /// Default parameters with this limit.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }
}

/// One file in a search result.
#[derive(Debug, Clone, PartialEq)]
pub struct FileHit {
    pub file_id: Uuid,
    /// Cosine similarity of the file's best window (or of its file vector when it has no
    /// windows) to the query.
    pub score: f32,
    /// The best-matching window: where in the file the match is. `None` only for a file
    /// indexed without windows.
    pub best_window: Option<WindowHit>,
}

/// The best window of a hit.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowHit {
    pub index: u32,
    pub start_s: f64,
    pub end_s: f64,
    pub score: f32,
}

/// How much the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCounts {
    pub files: u64,
    pub windows: u64,
}

/// What a backend reports about itself ([`crate::VectorIndex::status`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexStatus {
    /// `"edge"` (in-process) or `"qdrant"` (server or cluster).
    pub backend: &'static str,
    /// The server nodes and whether each answered (empty for the in-process index).
    pub nodes: Vec<NodeStatus>,
    /// The collections (shards, for the in-process index) and what they hold; empty when
    /// no node answered.
    pub collections: Vec<CollectionStatus>,
}

/// One Qdrant node as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub url: String,
    pub reachable: bool,
    /// The server's version, when it answered.
    pub version: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// One collection (or in-process shard).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStatus {
    pub name: String,
    /// Qdrant's collection status: `green` (ready), `yellow` (optimising), `grey`
    /// (optimisation pending), `red` (failed); the in-process index says `green` while it is
    /// open (its `optimize` runs when the service asks) and `red` once it is closed.
    pub status: String,
    /// Points (approximate while deletes are not vacuumed).
    pub points: u64,
    /// Vectors in HNSW graphs.
    pub indexed_vectors: u64,
    pub segments: u64,
}

/// The deterministic point ids: UUID v5 in the file id's namespace, named `file` for the
/// file vector and `window/<index>` for a window. Re-indexing a file hits the same points.
pub mod point_id {
    use uuid::Uuid;

    /// Id of the point holding the file vector of `file_id`.
    pub fn file(file_id: Uuid) -> Uuid {
        Uuid::new_v5(&file_id, b"file")
    }

    /// Id of the point holding window `index` of `file_id`.
    pub fn window(file_id: Uuid, index: u32) -> Uuid {
        Uuid::new_v5(&file_id, format!("window/{index}").as_bytes())
    }
}
