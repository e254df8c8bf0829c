//! Configuration of the in-process index.

use std::path::PathBuf;

/// Configuration of [`crate::EdgeIndex`]. Build with [`IndexConfig::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    /// Directory of the store (created if missing). An existing store there is loaded.
    pub path: PathBuf,
    /// Embedding size of the model (512 for the LAION CLAP checkpoints).
    pub dim: usize,
    /// Flush to disk after every `upsert_file`/`upsert_files`/`delete_file`, so that an `Ok`
    /// means "on disk". With `false` the caller must call `flush()` before reporting a file as
    /// indexed (qdrant-edge 0.7.2 does not replay its WAL on load: whatever was not flushed is
    /// lost on a crash).
    pub flush_on_write: bool,
    /// Search asks the store for `oversample × (files still wanted)` window hits in its first
    /// round (see the crate docs on grouping).
    pub oversample: usize,
    /// Upper bound on the window hits fetched in one search round.
    pub max_candidates: usize,
    /// Upper bound on search rounds; each round finds at least one new file if any is left.
    pub max_rounds: usize,
    /// `ef` (beam width) of HNSW search without a user filter (qdrant's default when
    /// `None`: the index's `ef_construct`, 100).
    pub hnsw_ef: Option<usize>,
    /// `ef` of HNSW search with a user filter. Filtered graph walks lose recall (on 100k
    /// clustered windows, format-filter recall@10 was 0.73 at ef 100, 0.93 at 400).
    pub filtered_hnsw_ef: usize,
    /// HNSW `m` (links per node) of the indexes `optimize` builds.
    pub hnsw_m: usize,
    /// HNSW `ef_construct` (beam width while building).
    pub hnsw_ef_construct: usize,
    /// Whether `optimize` also builds qdrant's payload-aware HNSW links for the filterable
    /// fields (format, duration, creation time). Off by default: they tripled the HNSW build
    /// time in the benchmark; selective filters are served by exact search over the
    /// payload index (few matches) or ACORN (see the crate docs) instead.
    pub filter_links: bool,
    /// Size in KiB above which `optimize()` builds an HNSW index for a segment (qdrant's
    /// default, 10 000 KiB, i.e. ~5 000 512-d vectors, when `None`). Below it, search is exact.
    pub indexing_threshold_kb: Option<usize>,
    /// Size of one write-ahead-log file of a new store (qdrant's default is 32 MiB).
    /// qdrant-edge 0.7.2 never truncates its WAL, and maps every file of it into memory;
    /// [`crate::EdgeIndex::compact_wal`] (run by `optimize`) and opening a store drop all
    /// closed files but the newest, so the WAL stays within about three of these per shard.
    pub wal_segment_bytes: usize,
}

impl IndexConfig {
    pub fn new(path: impl Into<PathBuf>, dim: usize) -> Self {
        Self {
            path: path.into(),
            dim,
            flush_on_write: true,
            oversample: 4,
            max_candidates: 4096,
            max_rounds: 8,
            hnsw_ef: None,
            filtered_hnsw_ef: 400,
            hnsw_m: 16,
            hnsw_ef_construct: 100,
            filter_links: false,
            indexing_threshold_kb: None,
            wal_segment_bytes: 8 * 1024 * 1024,
        }
    }
}
