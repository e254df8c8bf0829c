//! [`VectorIndex`] on in-process Qdrant shards (`qdrant-edge`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    AcornSearchParams, Condition, CountRequest, CreateIndex, Distance, EdgeConfig,
    EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations,
    Filter, FloatIndexParams, HnswIndexConfig, IntegerIndexParams, JsonPath, KeywordIndexParams,
    Match, NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaParams, PointId,
    PointInsertOperations, PointOperations, PointStructPersisted, QuantizationSearchParams,
    QueryEnum, QueryRequest, Range, ScalarQuantizationConfig, ScalarType, ScoredPoint,
    ScoringQuery, UpdateOperation, ValueVariants, VectorInternal, VectorStructInternal,
    VectorStructPersisted, WalOptions, WithPayloadInterface, WithVector, DEFAULT_VECTOR_NAME,
};
use uuid::Uuid;

use crate::error::{IndexError, Result};
use crate::schema::{self, FieldIndex, Kind};
use crate::types::point_id;
use crate::{
    CollectionStatus, FileHit, FileVectors, IndexConfig, IndexCounts, IndexStatus, SearchFilter,
    SearchParams, VectorIndex,
};

/// Subdirectories of the index: one qdrant-edge shard for window points, one for file points.
fn shard_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Window => "windows",
        Kind::File => "files",
    }
}

/// qdrant-edge's file naming its config; its presence marks an existing shard.
const EDGE_CONFIG_FILE: &str = "edge_config.json";

/// qdrant-edge's form of a payload index. `enable_hnsw` matters only with
/// [`IndexConfig::filter_links`]: on for the fields a user filter may make selective.
fn payload_schema(index: FieldIndex) -> PayloadSchemaParams {
    match index {
        FieldIndex::Keyword { filterable } => PayloadSchemaParams::Keyword(KeywordIndexParams {
            enable_hnsw: Some(filterable),
            ..KeywordIndexParams::default()
        }),
        FieldIndex::Float => PayloadSchemaParams::Float(FloatIndexParams::default()),
        FieldIndex::Integer {
            lookup,
            range,
            filterable,
        } => PayloadSchemaParams::Integer(IntegerIndexParams {
            lookup: Some(lookup),
            range: Some(range),
            enable_hnsw: Some(filterable),
            ..IntegerIndexParams::default()
        }),
    }
}

/// Statistics of the shards of an [`EdgeIndex`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub windows: ShardStats,
    pub files: ShardStats,
}

/// Statistics of one qdrant-edge shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub segments: usize,
    /// Points (approximate while deletes are not yet vacuumed).
    pub points: usize,
    /// Vectors in HNSW graphs; the rest are searched exactly until `optimize` runs.
    pub indexed_vectors: usize,
    /// Disk space of the segments (allocated blocks): deleted points count until `optimize`
    /// vacuums them.
    pub segment_bytes: u64,
    /// Disk space of the write-ahead log.
    pub wal_bytes: u64,
}

/// The index in a directory, on qdrant-edge. Cheap to clone (shares one store).
///
/// The directory holds two qdrant-edge shards: `windows/` (one point per window) and
/// `files/` (one point per file). Keeping file vectors out of the window shard matters for
/// HNSW: a file vector is the mean of its windows and so their nearest neighbour, and
/// with both kinds in one graph the file points became its hubs; filtering them out of a
/// window search (or giving them a second named vector, which qdrant stores densely for
/// every point) cost recall (recall@1 ≈ 0.75 in the benchmark) or twice the memory.
///
/// qdrant-edge is synchronous; every operation runs on `tokio::task::spawn_blocking`.
/// Searches, counts and reads run concurrently. Writes (upserts, deletes), flushes and
/// `optimize` are serialised by one mutex: qdrant-edge 0.7.2's `flush` panics if it finds
/// the WAL or segment lock taken by a concurrent update or optimisation.
#[derive(Clone)]
pub struct EdgeIndex {
    inner: Arc<Handle>,
}

struct Handle {
    config: IndexConfig,
    /// The open shards. Every operation holds a read lock while it runs; `compact_wal`
    /// takes the write lock to close and reopen them.
    state: RwLock<State>,
    /// Whether a background [`EdgeIndex::preload`] is running.
    preloading: Arc<AtomicBool>,
}

enum State {
    Open(Box<Inner>),
    /// Reopening failed (the reason); the process has to restart.
    Failed(String),
}

struct Inner {
    windows: EdgeShard,
    files: EdgeShard,
    config: IndexConfig,
    writes: Mutex<()>,
}

impl std::fmt::Debug for EdgeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeIndex")
            .field("path", &self.inner.config.path)
            .field("dim", &self.inner.config.dim)
            .finish_non_exhaustive()
    }
}

impl EdgeIndex {
    /// Open the index at `config.path`: load it if it exists (checking that it holds
    /// `config.dim`-d cosine vectors), create it otherwise. Blocking (file I/O); call it at
    /// start-up or from `spawn_blocking`. Loading drops the WAL files that only hold flushed
    /// operations (qdrant-edge never truncates its WAL itself; see
    /// [`IndexConfig::wal_segment_bytes`]).
    pub fn open(config: IndexConfig) -> Result<Self> {
        if config.dim == 0 {
            return Err(IndexError::InvalidArgument(
                "index dimension must be positive".into(),
            ));
        }
        if config.oversample == 0 || config.max_candidates == 0 || config.max_rounds == 0 {
            return Err(IndexError::InvalidArgument(
                "oversample, max_candidates and max_rounds must be positive".into(),
            ));
        }
        if config.rescore_oversampling.is_nan() || config.rescore_oversampling < 1.0 {
            return Err(IndexError::InvalidArgument(format!(
                "rescore_oversampling must be at least 1, got {}",
                config.rescore_oversampling
            )));
        }
        let inner = Inner::open(&config)?;
        let index = Self {
            inner: Arc::new(Handle {
                config,
                state: RwLock::new(State::Open(Box::new(inner))),
                preloading: Arc::new(AtomicBool::new(false)),
            }),
        };
        index.spawn_preload();
        Ok(index)
    }

    /// Reads every segment file of the store once, so that the OS page cache holds the
    /// vectors, graphs and payloads searches touch. qdrant-edge maps them lazily, and a
    /// freshly opened store is paged out (it advises the kernel so when segments are
    /// closed): the first searches of 100k windows took 3.7 ms instead of 0.8 ms until the
    /// pages they touch had been read from disk. Returns the bytes read. Blocking.
    pub fn preload(&self) -> u64 {
        preload(&self.inner.config.path)
    }

    /// [`Self::preload`] on a thread of its own, when [`IndexConfig::preload`] is on and no
    /// preload is running.
    fn spawn_preload(&self) {
        if !self.inner.config.preload || self.inner.preloading.swap(true, Ordering::AcqRel) {
            return;
        }
        // The thread holds the path, not the store: dropping the index closes it at once.
        let path = self.inner.config.path.clone();
        let preloading = Arc::clone(&self.inner.preloading);
        let spawned = std::thread::Builder::new()
            .name("index-preload".into())
            .spawn(move || {
                preload(&path);
                preloading.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.inner.preloading.store(false, Ordering::Release);
            tracing::warn!(error = %e, "could not start the index preload");
        }
    }

    /// Drops the write-ahead log files whose operations are all flushed, by closing and
    /// reopening the store (qdrant-edge truncates its WAL only when it is not open; see
    /// [`IndexConfig::wal_segment_bytes`]). Waits for operations in flight, then blocks
    /// new ones until it is done. Does nothing while the WAL has no closed file to drop.
    /// Returns whether it reopened. Blocking.
    pub fn compact_wal(&self) -> Result<bool> {
        let config = &self.inner.config;
        let wal_dirs = Kind::ALL.map(|kind| config.path.join(shard_dir(kind)).join("wal"));
        if !wal_dirs.iter().any(|dir| closed_wal_files(dir).len() > 1) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, State::Failed("being reopened".into())) {
            State::Open(inner) => {
                inner.flush();
                drop(inner);
            }
            State::Failed(reason) => {
                *state = State::Failed(reason.clone());
                return Err(IndexError::Closed {
                    path: config.path.clone(),
                    reason,
                });
            }
        }
        match Inner::open(config) {
            Ok(inner) => {
                *state = State::Open(Box::new(inner));
                drop(state);
                tracing::info!(
                    path = %config.path.display(),
                    elapsed_s = started.elapsed().as_secs_f64(),
                    "reopened the index to drop its write-ahead log"
                );
                self.spawn_preload();
                Ok(true)
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(path = %config.path.display(), error = %reason, "reopening the index failed");
                *state = State::Failed(reason.clone());
                Err(IndexError::Closed {
                    path: config.path.clone(),
                    reason,
                })
            }
        }
    }

    /// The configuration this index was opened with.
    pub fn config(&self) -> &IndexConfig {
        &self.inner.config
    }

    /// The index's directory.
    pub fn path(&self) -> &Path {
        &self.inner.config.path
    }

    /// Segment and HNSW statistics of the two shards (cheap; for status pages and tests).
    /// All zero while the store is closed after a failed reopen.
    pub fn stats(&self) -> IndexStats {
        let state = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        let State::Open(inner) = &*state else {
            return IndexStats::default();
        };
        let stats = |shard: &EdgeShard, kind: Kind| {
            let info = shard.info();
            let dir = self.inner.config.path.join(shard_dir(kind));
            ShardStats {
                segments: info.segments_count,
                points: info.points_count,
                indexed_vectors: info.indexed_vectors_count,
                segment_bytes: allocated_bytes(&dir.join("segments")),
                wal_bytes: allocated_bytes(&dir.join("wal")),
            }
        };
        IndexStats {
            windows: stats(&inner.windows, Kind::Window),
            files: stats(&inner.files, Kind::File),
        }
    }

    /// Run `f` on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let handle = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let state = handle.state.read().unwrap_or_else(|e| e.into_inner());
            match &*state {
                State::Open(inner) => f(inner),
                State::Failed(reason) => Err(IndexError::Closed {
                    path: handle.config.path.clone(),
                    reason: reason.clone(),
                }),
            }
        })
        .await
        .map_err(|e| IndexError::Task {
            op,
            message: e.to_string(),
        })?
    }
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    fn dim(&self) -> usize {
        self.inner.config.dim
    }

    async fn upsert_file(&self, file: FileVectors) -> Result<()> {
        self.blocking("upsert", move |inner| inner.upsert(vec![file]))
            .await
    }

    async fn upsert_files(&self, files: Vec<FileVectors>) -> Result<()> {
        self.blocking("upsert", move |inner| inner.upsert(files))
            .await
    }

    async fn delete_file(&self, file_id: Uuid) -> Result<()> {
        self.blocking("delete", move |inner| inner.delete(file_id))
            .await
    }

    async fn search(&self, query: &[f32], params: SearchParams) -> Result<Vec<FileHit>> {
        schema::check_vector(self.inner.config.dim, "query vector", query)?;
        let query = query.to_vec();
        self.blocking("search", move |inner| inner.search(query, &params))
            .await
    }

    async fn file_vector(&self, file_id: Uuid) -> Result<Option<Vec<f32>>> {
        self.blocking("retrieve", move |inner| inner.file_vector(file_id))
            .await
    }

    async fn count(&self) -> Result<IndexCounts> {
        self.blocking("count", |inner| inner.count()).await
    }

    async fn flush(&self) -> Result<()> {
        self.blocking("flush", |inner| {
            let _writes = inner.lock_writes();
            inner.flush();
            Ok(())
        })
        .await
    }

    async fn status(&self) -> Result<IndexStatus> {
        let index = self.clone();
        let (open, stats) = tokio::task::spawn_blocking(move || {
            let open = matches!(
                *index.inner.state.read().unwrap_or_else(|e| e.into_inner()),
                State::Open(_)
            );
            (open, index.stats())
        })
        .await
        .map_err(|e| IndexError::Task {
            op: "status",
            message: e.to_string(),
        })?;
        let collection = |kind: Kind, s: ShardStats| CollectionStatus {
            name: shard_dir(kind).into(),
            status: if open { "green" } else { "red" }.into(),
            points: s.points as u64,
            indexed_vectors: s.indexed_vectors as u64,
            segments: s.segments as u64,
        };
        Ok(IndexStatus {
            backend: "edge",
            nodes: Vec::new(),
            collections: vec![
                collection(Kind::Window, stats.windows),
                collection(Kind::File, stats.files),
            ],
        })
    }

    async fn optimize(&self) -> Result<()> {
        let changed = self.blocking("optimize", |inner| inner.optimize()).await?;
        let index = self.clone();
        tokio::task::spawn_blocking(move || index.compact_wal())
            .await
            .map_err(|e| IndexError::Task {
                op: "compact WAL",
                message: e.to_string(),
            })??;
        // The new segments, unless the reopen already started this.
        if changed {
            self.spawn_preload();
        }
        Ok(())
    }
}

impl Inner {
    fn open(config: &IndexConfig) -> Result<Self> {
        let windows = open_shard(config, Kind::Window)?;
        let files = open_shard(config, Kind::File)?;
        Ok(Self {
            windows,
            files,
            config: config.clone(),
            writes: Mutex::new(()),
        })
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while it was held leaves nothing inconsistent.
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Persist both shards. Call with the write lock held.
    fn flush(&self) {
        self.windows.flush();
        self.files.flush();
    }

    fn upsert(&self, files: Vec<FileVectors>) -> Result<()> {
        let Some(plan) = schema::plan_upsert(self.config.dim, files)? else {
            return Ok(());
        };
        let window_points: Vec<_> = plan.windows.into_iter().map(point).collect();
        let file_points: Vec<_> = plan.files.into_iter().map(point).collect();
        let stale = Filter {
            should: Some(
                plan.stale
                    .iter()
                    .map(|c| Condition::Filter(filter(c)))
                    .collect(),
            ),
            ..Filter::new()
        };

        let _writes = self.lock_writes();
        // Windows first, the file point last: a file that `count` reports has its windows.
        if !window_points.is_empty() {
            upsert(&self.windows, window_points)?;
        }
        self.windows
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(stale),
            ))
            .map_err(|e| IndexError::backend("upsert (removing stale windows)", e))?;
        upsert(&self.files, file_points)?;
        if self.config.flush_on_write {
            self.flush();
        }
        Ok(())
    }

    fn delete(&self, file_id: Uuid) -> Result<()> {
        let filter = Filter::new_must(condition(&schema::of_file(file_id)));
        let _writes = self.lock_writes();
        for shard in [&self.files, &self.windows] {
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter.clone()),
                ))
                .map_err(|e| IndexError::backend("delete", e))?;
        }
        if self.config.flush_on_write {
            self.flush();
        }
        Ok(())
    }

    /// Returns whether any segment changed.
    fn optimize(&self) -> Result<bool> {
        let _writes = self.lock_writes();
        let mut any = false;
        for (kind, shard) in [(Kind::Window, &self.windows), (Kind::File, &self.files)] {
            let started = std::time::Instant::now();
            let changed = shard
                .optimize()
                .map_err(|e| IndexError::backend("optimize", e))?;
            if changed {
                shard.flush();
            }
            any |= changed;
            tracing::info!(
                shard = shard_dir(kind),
                changed,
                elapsed_s = started.elapsed().as_secs_f64(),
                "optimised vector index"
            );
        }
        Ok(any)
    }

    fn search(&self, query: Vec<f32>, params: &SearchParams) -> Result<Vec<FileHit>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        let base = filter(&schema::search_conditions(params));
        let user_filter = params.filter != SearchFilter::default();

        // Files ranked by their windows, in rounds (see the crate docs).
        let mut hits: Vec<FileHit> = Vec::with_capacity(params.limit);
        let mut seen: HashSet<Uuid> = HashSet::new();
        // Every file any round's hits reached, for `rescore_files`.
        let mut found: HashSet<Uuid> = HashSet::new();
        let mut oversample = self.config.oversample;
        for round in 0..self.config.max_rounds {
            let wanted = params.limit - hits.len();
            let candidates = wanted
                .saturating_mul(oversample)
                .clamp(wanted, self.config.max_candidates.max(wanted));
            let mut filter = base.clone();
            if !seen.is_empty() {
                filter
                    .must_not
                    .get_or_insert_with(Vec::new)
                    .push(condition(&schema::of_files(&seen)));
            }
            let points = self.query(
                Kind::Window,
                &query,
                filter,
                params.score_threshold,
                candidates,
                user_filter,
            )?;
            let exhausted = points.len() < candidates;
            for point in &points {
                let hit = parse_hit(Kind::Window, point)?;
                if self.config.rescore_files {
                    found.insert(hit.file_id);
                }
                if hits.len() < params.limit && seen.insert(hit.file_id) {
                    hits.push(hit);
                }
                // Only the rescoring needs the files beyond the limit.
                if hits.len() == params.limit && !self.config.rescore_files {
                    break;
                }
            }
            tracing::trace!(
                round,
                candidates,
                returned = points.len(),
                files = hits.len(),
                "search round"
            );
            if hits.len() == params.limit || exhausted {
                break;
            }
            oversample = oversample.saturating_mul(4);
        }
        // The second view: files whose file vector (the mean of their windows) is near the
        // query, found in the file shard's own graph. It reaches files the window graph
        // walked past; their windows are scored exactly.
        let mut file_view: Vec<(Uuid, Option<u32>)> = Vec::new();
        if self.config.file_candidates > 0 {
            let points = self.query(
                Kind::File,
                &query,
                base.clone(),
                None,
                self.config.file_candidates,
                user_filter,
            )?;
            for point in &points {
                let file_id = parse_hit(Kind::File, point)?.file_id;
                let count = point.payload.as_ref().and_then(|p| window_count(&p.0));
                // Files without windows are ranked by their file vector below.
                if count != Some(0) {
                    file_view.push((file_id, count));
                }
            }
        }
        let ranked: HashSet<Uuid> = hits.iter().map(|h| h.file_id).collect();
        if self.config.rescore_files {
            // Every file found, the graph's best first (a cap on windows cuts the others).
            let mut files: Vec<(Uuid, Option<u32>)> =
                hits.iter().map(|h| (h.file_id, None)).collect();
            files.extend(
                found
                    .iter()
                    .filter(|id| !ranked.contains(id))
                    .map(|&id| (id, None)),
            );
            let mut listed: HashSet<Uuid> = files.iter().map(|f| f.0).collect();
            files.extend(file_view.into_iter().filter(|f| listed.insert(f.0)));
            if files.len() > 1 {
                let (exact, scored) = self.exact_file_hits(&query, params, files)?;
                // Files not scored (over the cap, or deleted meanwhile) keep their graph hit.
                hits.retain(|h| !scored.contains(&h.file_id));
                hits.extend(exact);
            }
        } else {
            // Only the files the window graph did not rank: its scores of the others are
            // their best windows already (exact rescoring of them changed no recall figure).
            let files: Vec<_> = file_view
                .into_iter()
                .filter(|f| !ranked.contains(&f.0))
                .collect();
            if !files.is_empty() {
                hits.extend(self.exact_file_hits(&query, params, files)?.0);
            }
        }
        // Stable: on a tie the graph's order stays.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(params.limit);

        // Files without windows, ranked by their file vector. The filter matches (next to)
        // no points, so qdrant answers from the payload index without walking the graph.
        let mut filter = base;
        filter
            .must
            .get_or_insert_with(Vec::new)
            .push(condition(&schema::without_windows()));
        let bare = self.query(
            Kind::File,
            &query,
            filter,
            params.score_threshold,
            params.limit,
            false,
        )?;
        let bare = bare
            .iter()
            .map(|point| parse_hit(Kind::File, point))
            .collect::<Result<Vec<_>>>()?;
        schema::merge_bare_files(&mut hits, bare, params.limit);
        Ok(hits)
    }

    /// The best `limit` of `files` by their best window, scored exactly, and the files that
    /// were scored. A file's window count comes with it or from its file point; its window
    /// point ids follow from that. Files beyond `max_candidates` windows in all, and files
    /// deleted meanwhile, are not scored.
    fn exact_file_hits(
        &self,
        query: &[f32],
        params: &SearchParams,
        files: Vec<(Uuid, Option<u32>)>,
    ) -> Result<(Vec<FileHit>, HashSet<Uuid>)> {
        let unknown: Vec<PointId> = files
            .iter()
            .filter(|f| f.1.is_none())
            .map(|f| PointId::Uuid(point_id::file(f.0)))
            .collect();
        let mut window_counts: HashMap<Uuid, u32> = HashMap::with_capacity(unknown.len());
        if !unknown.is_empty() {
            let records = self
                .files
                .retrieve(
                    &unknown,
                    Some(WithPayloadInterface::Fields(vec![key(
                        schema::WINDOW_COUNT,
                    )])),
                    Some(WithVector::Bool(false)),
                )
                .map_err(|e| IndexError::backend("retrieve", e))?;
            for record in &records {
                if let (PointId::Uuid(id), Some(count)) = (
                    record.id,
                    record.payload.as_ref().and_then(|p| window_count(&p.0)),
                ) {
                    window_counts.insert(id, count);
                }
            }
        }
        // Window point id → its file, within the cap.
        let mut windows: HashMap<Uuid, Uuid> = HashMap::new();
        let mut rescored: HashSet<Uuid> = HashSet::new();
        for &(file, count) in &files {
            let Some(count) = count.or_else(|| window_counts.get(&point_id::file(file)).copied())
            else {
                continue;
            };
            if count == 0 || windows.len() + count as usize > self.config.max_candidates {
                continue;
            }
            rescored.insert(file);
            for index in 0..count {
                windows.insert(point_id::window(file, index), file);
            }
        }
        // qdrant scores exactly these points (few: no graph walk, original vectors), in
        // score order; the first hit of a file is its best window.
        let limit = windows.len();
        let has_id = Condition::HasId(windows.keys().map(|&id| PointId::Uuid(id)).collect());
        let points = self
            .windows
            .query(QueryRequest {
                prefetches: Vec::new(),
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(query.to_vec()),
                    using: None,
                }))),
                filter: Some(Filter {
                    should: None,
                    min_should: None,
                    must: Some(vec![has_id]),
                    must_not: None,
                }),
                score_threshold: params.score_threshold.map(OrderedFloat),
                limit,
                offset: 0,
                params: Some(qdrant_edge::SearchParams {
                    exact: true,
                    quantization: Some(QuantizationSearchParams {
                        ignore: true,
                        rescore: None,
                        oversampling: None,
                    }),
                    ..Default::default()
                }),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(false),
            })
            .map_err(|e| IndexError::backend("search", e))?;
        // (score, file, best window), best first.
        let mut ranked: Vec<(f32, Uuid, Uuid)> = Vec::with_capacity(params.limit);
        let mut ranked_files = HashSet::new();
        for point in &points {
            let PointId::Uuid(id) = point.id else {
                continue;
            };
            if let Some(&file) = windows.get(&id) {
                if ranked_files.insert(file) {
                    ranked.push((point.score, file, id));
                    if ranked.len() == params.limit {
                        break;
                    }
                }
            }
        }

        // The best windows' places (start, end) from their payload.
        let best_ids: Vec<PointId> = ranked.iter().map(|r| PointId::Uuid(r.2)).collect();
        let records = self
            .windows
            .retrieve(
                &best_ids,
                Some(WithPayloadInterface::Fields(
                    Kind::Window.hit_fields().iter().copied().map(key).collect(),
                )),
                Some(WithVector::Bool(false)),
            )
            .map_err(|e| IndexError::backend("retrieve", e))?;
        let mut payloads: HashMap<PointId, &Payload> = records
            .iter()
            .filter_map(|r| Some((r.id, r.payload.as_ref()?)))
            .collect();
        let mut hits = Vec::with_capacity(params.limit);
        for (score, _, window) in ranked {
            let id = PointId::Uuid(window);
            if let Some(payload) = payloads.remove(&id) {
                hits.push(schema::parse_hit(Kind::Window, &id, &payload.0, score)?);
            }
        }
        Ok((hits, rescored))
    }

    fn query(
        &self,
        kind: Kind,
        query: &[f32],
        filter: Filter,
        score_threshold: Option<f32>,
        limit: usize,
        user_filter: bool,
    ) -> Result<Vec<ScoredPoint>> {
        let shard = match kind {
            Kind::Window => &self.windows,
            Kind::File => &self.files,
        };
        let params = qdrant_edge::SearchParams {
            hnsw_ef: if user_filter {
                Some(self.config.filtered_hnsw_ef)
            } else {
                self.config.hnsw_ef
            },
            // With a user filter, let qdrant switch to ACORN (a two-hop graph walk) when the
            // filter is selective (estimated < 40 % of points match).
            acorn: user_filter.then_some(AcornSearchParams {
                enable: true,
                max_selectivity: None,
            }),
            // Without quantized vectors (an f32 store, or segments not yet optimised) qdrant
            // ignores this.
            quantization: self.config.int8.then_some(QuantizationSearchParams {
                ignore: false,
                rescore: Some(true),
                oversampling: Some(self.config.rescore_oversampling),
            }),
            ..Default::default()
        };
        shard
            .query(QueryRequest {
                prefetches: Vec::new(),
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(query.to_vec()),
                    using: None,
                }))),
                filter: (!filter_is_empty(&filter)).then_some(filter),
                score_threshold: score_threshold.map(OrderedFloat),
                limit,
                offset: 0,
                params: Some(params),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Fields(
                    kind.hit_fields().iter().copied().map(key).collect(),
                ),
            })
            .map_err(|e| IndexError::backend("search", e))
    }

    fn file_vector(&self, file_id: Uuid) -> Result<Option<Vec<f32>>> {
        let id = PointId::Uuid(point_id::file(file_id));
        let records = self
            .files
            .retrieve(
                &[id],
                Some(WithPayloadInterface::Bool(false)),
                Some(WithVector::Bool(true)),
            )
            .map_err(|e| IndexError::backend("retrieve", e))?;
        let Some(record) = records.into_iter().next() else {
            return Ok(None);
        };
        let vector = match record.vector {
            Some(VectorStructInternal::Single(v)) => Some(v),
            Some(VectorStructInternal::Named(mut named)) => {
                match named.remove(DEFAULT_VECTOR_NAME) {
                    Some(VectorInternal::Dense(v)) => Some(v),
                    _ => None,
                }
            }
            _ => None,
        };
        vector.map(Some).ok_or_else(|| IndexError::CorruptPayload {
            point: id.to_string(),
            reason: "file point has no dense vector".into(),
        })
    }

    fn count(&self) -> Result<IndexCounts> {
        let count = |shard: &EdgeShard| {
            shard
                .count(CountRequest {
                    filter: None,
                    exact: true,
                })
                .map(|n| n as u64)
                .map_err(|e| IndexError::backend("count", e))
        };
        Ok(IndexCounts {
            files: count(&self.files)?,
            windows: count(&self.windows)?,
        })
    }
}

/// The `window_count` of a file point's payload.
fn window_count(payload: &serde_json::Map<String, serde_json::Value>) -> Option<u32> {
    payload
        .get(schema::WINDOW_COUNT)
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
}

/// [`EdgeIndex::preload`] of the store at `path`.
fn preload(path: &Path) -> u64 {
    let started = std::time::Instant::now();
    let mut buffer = vec![0u8; 1 << 20];
    let bytes = Kind::ALL
        .iter()
        .map(|&kind| read_tree(&path.join(shard_dir(kind)).join("segments"), &mut buffer))
        .sum();
    tracing::info!(
        path = %path.display(),
        bytes,
        elapsed_s = started.elapsed().as_secs_f64(),
        "preloaded the index into the page cache"
    );
    bytes
}

/// Reads every file under `dir` (recursively) through `buffer`, returning the bytes read;
/// what cannot be read (a file an optimisation just removed) is skipped.
fn read_tree(dir: &Path, buffer: &mut [u8]) -> u64 {
    use std::io::Read;
    sum_over_files(dir, &mut |path, meta| {
        let mut total = 0;
        if meta.is_file() {
            if let Ok(mut file) = std::fs::File::open(path) {
                while let Ok(n @ 1..) = file.read(buffer) {
                    total += n as u64;
                }
            }
        }
        total
    })
}

/// Disk blocks allocated under `dir` (files are sparse, so their lengths would overstate it);
/// 0 where it cannot be read.
pub fn allocated_bytes(dir: &Path) -> u64 {
    #[cfg(unix)]
    fn allocated(m: &std::fs::Metadata) -> u64 {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    }
    #[cfg(not(unix))]
    fn allocated(m: &std::fs::Metadata) -> u64 {
        m.len()
    }
    sum_over_files(dir, &mut |_, meta| allocated(meta))
}

/// The sum of `f` over every entry under `dir` that is not a directory (recursively, links
/// not followed); entries that cannot be read count 0.
fn sum_over_files(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => sum_over_files(&entry.path(), f),
            Ok(m) => f(&entry.path(), &m),
            Err(_) => 0,
        })
        .sum()
}

fn upsert(shard: &EdgeShard, points: Vec<PointStructPersisted>) -> Result<()> {
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .map_err(|e| IndexError::backend("upsert", e))
}

/// Deletes the closed WAL files of a shard that is not open, except the newest.
///
/// qdrant-edge 0.7.2 writes every update to its WAL and never truncates it (nor replays it:
/// segments are flushed on every write, see [`IndexConfig::flush_on_write`]), so without
/// this the WAL holds every vector ever written, deleted ones included, on disk and mapped
/// into memory. Closed files are dropped from the oldest, as qdrant's own prefix truncation
/// does: the newest closed file and the open ones stay, so the log stays contiguous and
/// operation numbers (which order updates to a point) continue where they were.
fn prune_wal(dir: &Path) -> Result<()> {
    let mut closed = closed_wal_files(dir);
    closed.pop();
    let mut freed = 0;
    for path in &closed {
        freed += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(path).map_err(|source| IndexError::Io {
            path: path.clone(),
            source,
        })?;
    }
    if !closed.is_empty() {
        tracing::info!(
            wal = %dir.display(),
            files = closed.len(),
            freed_mib = freed as f64 / (1 << 20) as f64,
            "dropped flushed write-ahead log files"
        );
    }
    Ok(())
}

/// The closed WAL files in `dir` (`closed-<first operation>`), oldest first; none if `dir`
/// cannot be read (the store's own open reports that).
fn closed_wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut closed: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let start = entry
                .file_name()
                .to_str()?
                .strip_prefix("closed-")?
                .parse()
                .ok()?;
            Some((start, entry.path()))
        })
        .collect();
    closed.sort();
    closed.into_iter().map(|(_, path)| path).collect()
}

/// The optimiser settings of `config` over `current` (each one `config` leaves unset stays).
fn optimizers_config(config: &IndexConfig, current: EdgeOptimizersConfig) -> EdgeOptimizersConfig {
    EdgeOptimizersConfig {
        indexing_threshold: config.indexing_threshold_kb.or(current.indexing_threshold),
        ..current
    }
}

/// Create or load the shard for `kind` under `config.path`.
fn open_shard(config: &IndexConfig, kind: Kind) -> Result<EdgeShard> {
    let path = config.path.join(shard_dir(kind));
    std::fs::create_dir_all(&path).map_err(|source| IndexError::Io {
        path: path.clone(),
        source,
    })?;
    let open_error = |e: qdrant_edge::OperationError| {
        // qdrant-edge locks the WAL directory; its error only says so in words.
        if e.to_string().contains("WouldBlock") {
            IndexError::Locked {
                path: config.path.clone(),
            }
        } else {
            IndexError::Open {
                path: path.clone(),
                source: e.into(),
            }
        }
    };

    let shard = if shard_exists(&path)? {
        prune_wal(&path.join("wal"))?;
        let shard = EdgeShard::load(&path, None).map_err(open_error)?;
        check_vector_params(&shard, &config.path, config.dim)?;
        let hnsw = hnsw_config(config, shard.config().hnsw_config);
        if shard.config().hnsw_config != hnsw {
            // The next `optimize` rebuilds the graphs with it.
            shard.set_hnsw_config(hnsw).map_err(open_error)?;
        }
        let current = shard.config().optimizers.clone();
        let optimizers = optimizers_config(config, current.clone());
        if optimizers != current {
            // Applies from the next `optimize`.
            shard
                .set_optimizers_config(optimizers)
                .map_err(open_error)?;
        }
        tracing::debug!(path = %path.display(), dim = config.dim, "loaded index shard");
        shard
    } else {
        let mut builder = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParams::builder(config.dim, Distance::Cosine).build(),
            )
            .hnsw_config(hnsw_config(config, HnswIndexConfig::default()));
        if config.int8 {
            builder = builder.quantization_config(
                ScalarQuantizationConfig {
                    r#type: ScalarType::Int8,
                    quantile: Some(0.99),
                    always_ram: Some(true),
                }
                .into(),
            );
        }
        let edge_config = builder
            .optimizers(optimizers_config(config, EdgeOptimizersConfig::default()))
            .wal_options(WalOptions {
                segment_capacity: config.wal_segment_bytes,
                ..WalOptions::default()
            })
            .build();
        let shard = EdgeShard::new(&path, edge_config).map_err(open_error)?;
        tracing::info!(path = %path.display(), dim = config.dim, "created index shard");
        shard
    };

    let existing = shard.info().payload_schema;
    for (field, index) in kind.payload_indexes() {
        let field_name = key(field);
        if existing.contains_key(&field_name) {
            continue;
        }
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name,
                    field_schema: Some(PayloadFieldSchema::FieldParams(payload_schema(index))),
                }),
            ))
            .map_err(open_error)?;
    }
    Ok(shard)
}

/// `base` with the HNSW parameters of `config`.
fn hnsw_config(config: &IndexConfig, base: HnswIndexConfig) -> HnswIndexConfig {
    HnswIndexConfig {
        m: config.hnsw_m,
        ef_construct: config.hnsw_ef_construct,
        // `None`: payload links with `m` per node; `Some(0)`: none.
        payload_m: if config.filter_links { None } else { Some(0) },
        ..base
    }
}

/// Whether `path` already holds a qdrant-edge shard.
fn shard_exists(path: &Path) -> Result<bool> {
    if path.join(EDGE_CONFIG_FILE).exists() {
        return Ok(true);
    }
    let segments = path.join("segments");
    match std::fs::read_dir(&segments) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(IndexError::Io {
            path: segments,
            source,
        }),
    }
}

/// A loaded shard must hold one dense cosine vector of the configured size.
fn check_vector_params(shard: &EdgeShard, index_path: &Path, dim: usize) -> Result<()> {
    let config = shard.config();
    let incompatible = |reason: String| IndexError::Incompatible {
        path: PathBuf::from(shard.path()),
        reason,
    };
    let Some(params) = config.vectors.get(DEFAULT_VECTOR_NAME) else {
        let mut names: Vec<&String> = config.vectors.keys().collect();
        names.sort();
        return Err(incompatible(format!(
            "it has no unnamed dense vector (vectors: {names:?})"
        )));
    };
    if params.size != dim {
        return Err(IndexError::DimensionMismatch {
            path: index_path.to_owned(),
            stored: params.size,
            expected: dim,
        });
    }
    if params.distance != Distance::Cosine {
        return Err(incompatible(format!(
            "it uses {:?} distance, not cosine",
            params.distance
        )));
    }
    Ok(())
}

fn key(name: &str) -> JsonPath {
    JsonPath::try_from(name).expect("payload keys are plain identifiers")
}

/// qdrant-edge's form of a neutral condition.
fn condition(c: &schema::Condition) -> Condition {
    let field = match c {
        schema::Condition::Keyword { key: name, any } => {
            let m = match any.as_slice() {
                [one] => Match::from(ValueVariants::String(one.clone())),
                _ => Match::from(any.clone()),
            };
            FieldCondition::new_match(key(name), m)
        }
        schema::Condition::Integer { key: name, value } => {
            FieldCondition::new_match(key(name), Match::from(ValueVariants::Integer(*value)))
        }
        schema::Condition::Range { key: name, range } => FieldCondition::new_range(
            key(name),
            Range {
                gt: range.gt.map(OrderedFloat),
                gte: range.gte.map(OrderedFloat),
                lt: range.lt.map(OrderedFloat),
                lte: range.lte.map(OrderedFloat),
            },
        ),
    };
    Condition::Field(field)
}

/// qdrant-edge's form of a neutral conjunction.
fn filter(c: &schema::Conditions) -> Filter {
    let conditions = |cs: &[schema::Condition]| {
        (!cs.is_empty()).then(|| cs.iter().map(condition).collect::<Vec<_>>())
    };
    Filter {
        should: None,
        min_should: None,
        must: conditions(&c.must),
        must_not: conditions(&c.must_not),
    }
}

fn filter_is_empty(f: &Filter) -> bool {
    [&f.should, &f.must, &f.must_not]
        .iter()
        .all(|c| c.as_ref().is_none_or(Vec::is_empty))
        && f.min_should.is_none()
}

fn point(p: schema::Point) -> PointStructPersisted {
    PointStructPersisted {
        id: PointId::Uuid(p.id),
        vector: VectorStructPersisted::Single(p.vector),
        payload: Some(Payload(p.payload)),
    }
}

fn parse_hit(kind: Kind, point: &ScoredPoint) -> Result<FileHit> {
    let Some(payload) = point.payload.as_ref() else {
        return Err(IndexError::CorruptPayload {
            point: point.id.to_string(),
            reason: "no payload".into(),
        });
    };
    schema::parse_hit(kind, &point.id, &payload.0, point.score)
}
