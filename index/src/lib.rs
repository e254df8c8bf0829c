//! The vector index of Traum Engine: CLAP embeddings of audio files and of their
//! 10 s windows, searchable by cosine similarity with one hit per file.
//!
//! [`VectorIndex`] is the interface the service uses; [`EdgeIndex`] implements it with
//! an in-process Qdrant (`qdrant-edge`) in a directory. A Qdrant-server backend can
//! implement the same trait.
//!
//! # Points
//!
//! [`EdgeIndex`] keeps two qdrant-edge shards in its directory: `windows/` with one
//! point per window and `files/` with one point per file (its file vector). Every point
//! carries the payload search filters on:
//!
//! | field | on | |
//! |---|---|---|
//! | `file_id` | all | UUID string (keyword index) |
//! | `kind` | all | `"file"` or `"window"` |
//! | `duration_s` | all | float index |
//! | `format` | all | lower-cased container/codec (keyword index) |
//! | `created_at` | all | unix seconds (integer index) |
//! | `window_count` | files | number of windows (integer index) |
//! | `window_index`, `start_s`, `end_s` | windows | `window_index` has an integer index |
//!
//! Point ids are deterministic ([`point_id`]): UUID v5 in the namespace of the file id,
//! named `file` or `window/<i>`. Upserting a file again overwrites the same points; the
//! windows at index ≥ the new window count (left from a longer previous version) are
//! then deleted, so re-indexing never duplicates vectors. The new windows are written
//! before the stale ones are deleted, and the file point last, so a concurrent search
//! never misses the file (it may, for that instant, still see an old window).
//!
//! An upsert is several qdrant operations on two shards and is not atomic: if it fails
//! half-way (an I/O error, a crash before the flush), retry it; it is idempotent.
//!
//! # Search: grouping windows into files
//!
//! Files are ranked by their best-matching window; a file without windows (none exist
//! in practice) is ranked by its file vector. qdrant-edge 0.7.2 has no group-by, so
//! search fetches window hits in score order and keeps the first hit of each file,
//! which is its best window. Round 1 asks for `oversample × limit` hits. If these hold
//! fewer than `limit` distinct files and the shard had more, the next round asks again,
//! excluding the files already found (so it can only return new files, each first hit
//! again the file's best window, all scoring below the files already found) with four
//! times the oversampling, capped at `max_candidates` hits per round and `max_rounds`
//! rounds. Files without windows come from one more query on the file shard (filtered
//! to `window_count = 0`, which the payload index answers without a graph walk) and are
//! merged in by score.
//!
//! The result is what an exact group-by would give (up to HNSW's approximation), except
//! in one case: when the best-matching files have so many similar windows that
//! `max_rounds` rounds of at most `max_candidates` hits do not reach `limit` files, the
//! result is shorter than `limit` (never mis-ordered). Each round finds at least one new
//! file, so at least `min(limit, max_rounds)` files come back when that many match.
//!
//! Two options widen what the window graph found. With [`IndexConfig::file_candidates`]
//! the nearest files by file vector (the file shard's own, ten times smaller graph) join
//! in, and those the window graph did not rank get every window scored exactly: one query
//! over their window point ids, which follow from each file's `window_count`. With
//! [`IndexConfig::rescore_files`] every file found is scored that way. Either can only
//! add files with their true best window or correct a file's score upwards; on clustered
//! data, recall@10 at 1M windows was 0.62 with the window graph alone at `ef` 50 and
//! 0.96 at `ef` 40 with 20 file candidates (see the README for what they cost).
//!
//! # Durability
//!
//! With [`IndexConfig::flush_on_write`] (the default) every write is flushed before it
//! returns `Ok`, so the service may report a file as indexed as soon as `upsert_file`
//! returns. qdrant-edge 0.7.2 writes every update to its WAL but never replays it on
//! load: only flushed data survives a crash.
//!
//! # HNSW
//!
//! qdrant-edge optimises only when asked: until [`VectorIndex::optimize`] runs, new
//! points sit in an appendable segment that is searched exactly (brute force).
//! `optimize` merges segments and builds HNSW graphs for segments above
//! [`IndexConfig::indexing_threshold_kb`]; the service should call it after a batch of
//! indexing (it blocks writers, not searches, while it runs; see `index/README.md` for
//! its cost).
//!
//! Searches with a user filter let qdrant use ACORN when the filter is selective
//! (estimated < 40 % of points match); filters matching fewer points than the full-scan
//! threshold (10 MB of vectors, ~5 000 512-d vectors) are answered exactly from the
//! payload index. qdrant's payload-aware HNSW links are off by default
//! ([`IndexConfig::filter_links`]).

mod config;
mod edge;
mod error;
mod qdrant;
mod schema;
mod types;

pub use config::{safe_name, IndexConfig, QdrantConfig};
pub use edge::{allocated_bytes, EdgeIndex, IndexStats, ShardStats};
pub use error::{BoxError, IndexError, Result};
pub use qdrant::QdrantIndex;
pub use types::{
    point_id, CollectionStatus, FileHit, FileVectors, IndexCounts, IndexStatus, NodeStatus,
    SearchFilter, SearchParams, WindowHit, WindowVector,
};
pub use uuid::Uuid;

use async_trait::async_trait;

/// A store of file and window vectors that answers "which files sound like this".
///
/// Object-safe: hold it as `Arc<dyn VectorIndex>`.
#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// Embedding size this index holds.
    fn dim(&self) -> usize;

    /// Insert or replace a file: its file vector and all its windows. Idempotent; windows
    /// of a previous version beyond the new window count are removed.
    async fn upsert_file(&self, file: FileVectors) -> Result<()>;

    /// Insert or replace several files at once (one write and one flush for the batch).
    /// When a file id occurs twice, the last occurrence wins.
    async fn upsert_files(&self, files: Vec<FileVectors>) -> Result<()> {
        for file in files {
            self.upsert_file(file).await?;
        }
        Ok(())
    }

    /// Remove every point of a file. Removing a file that is not there is not an error.
    async fn delete_file(&self, file_id: Uuid) -> Result<()>;

    /// Files ranked by their best-matching window, one hit per file, best first.
    async fn search(&self, query: &[f32], params: SearchParams) -> Result<Vec<FileHit>>;

    /// The stored file vector of a file (for "similar to this file"), `None` if absent.
    async fn file_vector(&self, file_id: Uuid) -> Result<Option<Vec<f32>>>;

    /// How many files and windows are stored.
    async fn count(&self) -> Result<IndexCounts>;

    /// Persist everything written so far.
    async fn flush(&self) -> Result<()>;

    /// Maintenance: build search indexes, vacuum deleted points (qdrant-edge: and drop
    /// write-ahead-log files whose operations are flushed). A backend that does this
    /// by itself (a Qdrant server) leaves the default, which does nothing.
    async fn optimize(&self) -> Result<()> {
        Ok(())
    }

    /// Which backend this is, its nodes and its collections (for health pages and metrics).
    async fn status(&self) -> Result<IndexStatus>;
}
