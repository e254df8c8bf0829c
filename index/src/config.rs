//! Configuration of the two backends.

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
    /// After the graph search, score every window of the files it found exactly (their
    /// window vectors read by point id and scored in process, up to `max_candidates`
    /// windows) and rank the files by their true best window: a file the graph reached
    /// through a lesser window is no longer ranked below where it belongs. Off by default
    /// (see the README for what it changes and costs).
    pub rescore_files: bool,
    /// A second view: the `file_candidates` files whose file vector (the mean of their
    /// windows) is nearest to the query, found in the file shard's own graph, join the
    /// window graph's files; those it did not rank get their windows scored exactly (0:
    /// off). It reaches files the window graph walked past, so a small window `ef`
    /// suffices (see the README).
    pub file_candidates: usize,
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
    /// Int8 scalar quantization of a new store (`quantile 0.99`, kept in RAM, built by
    /// `optimize`): graph walks compare 1-byte components, a quarter of the memory traffic,
    /// and the candidates are rescored with the original vectors. A store keeps the setting
    /// it was made with.
    pub int8: bool,
    /// With `int8`: how many times the asked-for hits the quantized search preselects
    /// before rescoring (1.5: at 1M windows, ef 200, the same recall as 2 and ~0.4 ms less).
    pub rescore_oversampling: f64,
    /// Whether `optimize` also builds qdrant's payload-aware HNSW links for the filterable
    /// fields (format, duration, creation time). Off by default: they tripled the HNSW build
    /// time in the benchmark; selective filters are served by exact search over the
    /// payload index (few matches) or ACORN (see the crate docs) instead.
    pub filter_links: bool,
    /// Size in KiB above which `optimize()` builds an HNSW index for a segment (qdrant's
    /// default, 10 000 KiB, i.e. ~5 000 512-d vectors, when `None`). Below it, search is exact.
    pub indexing_threshold_kb: Option<usize>,
    /// Read the store's segment files into the OS page cache on a background thread after
    /// opening (and reopening) it, so that the first searches do not wait for the disk (see
    /// [`crate::EdgeIndex::preload`]). On by default; off for stores larger than the RAM
    /// one wants to give them.
    pub preload: bool,
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
            rescore_files: false,
            file_candidates: 0,
            hnsw_ef: None,
            filtered_hnsw_ef: 400,
            hnsw_m: 16,
            hnsw_ef_construct: 100,
            int8: false,
            rescore_oversampling: 1.5,
            filter_links: false,
            indexing_threshold_kb: None,
            preload: true,
            wal_segment_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Configuration of [`crate::QdrantIndex`]: which Qdrant server or cluster, which
/// collections, and how they are made. Build with [`QdrantConfig::new`] and adjust fields.
#[derive(Clone, PartialEq)]
pub struct QdrantConfig {
    /// gRPC URLs of the nodes (`http://host:6334`, or `https://` for TLS). Every node of a
    /// cluster answers for the whole collection; when one refuses, the next is tried.
    pub urls: Vec<String>,
    /// API key (`api-key` header). Never logged: `Debug` prints whether one is set.
    pub api_key: Option<String>,
    /// Collections are named `<prefix><model>_windows` and `<prefix><model>_files`.
    pub collection_prefix: String,
    /// The model whose vectors the collections hold (its id, e.g.
    /// `laion/larger_clap_music_and_speech`; characters Qdrant does not allow in a
    /// collection name become `_`).
    pub model: String,
    /// Embedding size of the model.
    pub dim: usize,
    /// Shards of a new collection (spread over the cluster's nodes).
    pub shard_number: u32,
    /// Copies of each shard on different nodes (a new collection's replication factor).
    pub replication_factor: u32,
    /// How many replicas must acknowledge a write before it returns.
    pub write_consistency_factor: u32,
    /// Keep a new collection's original vectors on disk (memory-mapped) instead of in RAM.
    pub on_disk_vectors: bool,
    /// Int8 scalar quantization of a new collection (kept in RAM; searches rescore the
    /// best candidates with the original vectors).
    pub int8: bool,
    /// With `int8`: how many times `limit` candidates the quantized search fetches before
    /// rescoring.
    pub rescore_oversampling: f64,
    /// HNSW `m` and `ef_construct` of a new collection.
    pub hnsw_m: u64,
    pub hnsw_ef_construct: u64,
    /// `ef` of searches without a user filter (the collection's default when `None`).
    pub hnsw_ef: Option<u64>,
    /// `ef` of searches with a user filter.
    pub filtered_hnsw_ef: u64,
    /// Bound on one request (the server is asked to stop after it, too).
    pub timeout: std::time::Duration,
    /// Bound on connecting to a node.
    pub connect_timeout: std::time::Duration,
    /// Points per upsert request (a file's windows are split into requests of this size;
    /// keeps messages far below gRPC's limits).
    pub upsert_batch: usize,
}

impl QdrantConfig {
    pub fn new(urls: Vec<String>, model: impl Into<String>, dim: usize) -> Self {
        Self {
            urls,
            api_key: None,
            collection_prefix: "traum_".into(),
            model: model.into(),
            dim,
            shard_number: 1,
            replication_factor: 1,
            write_consistency_factor: 1,
            on_disk_vectors: false,
            int8: false,
            rescore_oversampling: 2.0,
            hnsw_m: 16,
            hnsw_ef_construct: 100,
            hnsw_ef: None,
            filtered_hnsw_ef: 400,
            timeout: std::time::Duration::from_secs(30),
            connect_timeout: std::time::Duration::from_secs(5),
            upsert_batch: 256,
        }
    }

    /// The collection holding points of `kind` (`windows` or `files`).
    pub fn collection(&self, kind: &str) -> String {
        format!(
            "{}{}_{kind}",
            self.collection_prefix,
            safe_name(&self.model)
        )
    }
}

/// `name` with every character a collection or directory name may not hold (anything but
/// ASCII letters, digits, `-`, `_` and `.`) replaced by `_`.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl std::fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantConfig")
            .field("urls", &self.urls)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("collection_prefix", &self.collection_prefix)
            .field("model", &self.model)
            .field("dim", &self.dim)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .field("on_disk_vectors", &self.on_disk_vectors)
            .field("int8", &self.int8)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
