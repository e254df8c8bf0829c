//! Model versions: which model's vectors search uses, and swapping models without a pause.
//!
//! Every vector belongs to a model, named by its id and a digest of its weights
//! ([`weights_digest`]), and each model's vectors live in a collection of their own (a
//! directory of the in-process store, or a pair of Qdrant collections), recorded in the
//! `model_index` table. The library's *active* model embeds new files and search queries,
//! and search reads its collection: a text query is always embedded by the model of the
//! index it searches.
//!
//! Starting with another `--model` makes that model the *target*: the active one keeps
//! serving while a background task ([`reindex`]) embeds every indexed file again with the
//! target into the target's collection. The task is resumable: a file whose vectors are in
//! the target's collection is done (its file point is written last), so a restart goes on
//! where the last run stopped. When every indexed file is in the target's collection, the
//! library switches (`--switch auto`), or waits for `switchModel` (`--switch manual`),
//! keeping the target current meanwhile. The switch happens under the commit lock, after a
//! last check that nothing is missing; files a worker embedded with the old model but
//! commits after the switch go back to the queue. The former active collection is kept
//! (`retired`) until `dropModel`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use entity::model_index::{self, ModelState};
use entity::store::{self, models as rows};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use traum_index::{safe_name, EdgeIndex, FileVectors, IndexConfig, QdrantIndex, VectorIndex};
use uuid::Uuid;

use crate::error::ApiError;
use crate::events::FileEvent;
use crate::library::{Library, LibraryConfig, OpenError, VectorStore};
use crate::pipeline::batcher::Embedder;
use crate::storage::DataPaths;

/// When a complete reindex becomes the active index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SwitchMode {
    /// As soon as every file is embedded with the new model.
    #[default]
    Auto,
    /// When the `switchModel` mutation asks (the new index is kept current until then).
    Manual,
}

/// A loaded model and the index of its vectors.
pub struct ModelVersion {
    /// `<model name>@<first 12 hex digits of the weights digest>`.
    pub key: String,
    pub model_id: String,
    pub weights_digest: String,
    pub dim: usize,
    pub embedder: Embedder,
    pub index: Arc<dyn VectorIndex>,
    /// This model's embeddings of recent text queries.
    pub(crate) texts: TextCache,
    /// The batcher; it ends when the last [`Embedder`] handle is dropped.
    batcher: Mutex<Option<JoinHandle<()>>>,
}

impl ModelVersion {
    pub(crate) fn new(
        row: &model_index::Model,
        embedder: Embedder,
        batcher: JoinHandle<()>,
        index: Arc<dyn VectorIndex>,
    ) -> Self {
        Self {
            key: row.key.clone(),
            model_id: row.model_id.clone(),
            weights_digest: row.weights_digest.clone(),
            dim: row.dim as usize,
            embedder,
            index,
            texts: TextCache::new(TEXT_CACHE_ENTRIES),
            batcher: Mutex::new(Some(batcher)),
        }
    }

    /// Stops the batcher at once (shutdown).
    pub(crate) fn abort(&self) {
        if let Some(task) = self.batcher.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Text queries whose embeddings are kept per model.
const TEXT_CACHE_ENTRIES: usize = 1024;

/// The embeddings of recent text queries, least recently used out first: search as you type
/// sends the same prefixes again and again (and back-spacing sends earlier ones), and a
/// text costs a forward pass of the text tower. Per model, so a vector never crosses models.
pub(crate) struct TextCache {
    capacity: usize,
    inner: Mutex<TextCacheInner>,
}

#[derive(Default)]
struct TextCacheInner {
    /// Bumped on every use; an entry's stamp says when it was last used.
    clock: u64,
    entries: HashMap<String, (Arc<[f32]>, u64)>,
}

impl TextCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(TextCacheInner::default()),
        }
    }

    pub(crate) fn get(&self, text: &str) -> Option<Arc<[f32]>> {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let now = inner.clock;
        let (vector, used) = inner.entries.get_mut(text)?;
        *used = now;
        Some(vector.clone())
    }

    pub(crate) fn put(&self, text: &str, vector: Arc<[f32]>) {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let now = inner.clock;
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(text) {
            // A scan of at most `capacity` stamps, only when a new text finds it full.
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.entries.remove(&oldest);
            }
        }
        inner.entries.insert(text.to_owned(), (vector, now));
    }
}

/// A reindex as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ReindexProgress {
    pub key: String,
    pub model_id: String,
    /// `Building` while files are embedded; `Ready` when complete and waiting for a manual
    /// switch; `Active` once switched.
    pub state: ModelState,
    pub done: i64,
    pub failed: i64,
    pub total: i64,
    pub error: Option<String>,
}

impl ReindexProgress {
    pub(crate) fn from_row(row: &model_index::Model) -> Self {
        Self {
            key: row.key.clone(),
            model_id: row.model_id.clone(),
            state: row.state,
            done: row.files_done,
            failed: row.files_failed,
            total: row.files_total,
            error: row.last_error.clone(),
        }
    }
}

/// The library's models: the active one, and the target of a reindex.
pub struct Models {
    active: RwLock<Arc<ModelVersion>>,
    target: RwLock<Option<Arc<ModelVersion>>>,
    progress: Mutex<Option<ReindexProgress>>,
    pub switch: SwitchMode,
    /// Set by `switchModel`; the reindex task switches at its next check.
    switch_wanted: AtomicBool,
    /// The target was complete once (it then only catches up with files added since).
    complete: AtomicBool,
    /// Wakes the reindex task: a switch was asked for, or a file was indexed.
    wake: Notify,
    /// The active model's key, for those waiting for a switch.
    active_key: watch::Sender<String>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Models {
    pub(crate) fn new(
        active: ModelVersion,
        target: Option<ModelVersion>,
        progress: Option<ReindexProgress>,
        switch: SwitchMode,
    ) -> Self {
        let (active_key, _) = watch::channel(active.key.clone());
        Self {
            active: RwLock::new(Arc::new(active)),
            target: RwLock::new(target.map(Arc::new)),
            progress: Mutex::new(progress),
            switch,
            switch_wanted: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            wake: Notify::new(),
            active_key,
            task: Mutex::new(None),
        }
    }

    /// The model search and new files use now.
    pub fn active(&self) -> Arc<ModelVersion> {
        self.active.read().unwrap().clone()
    }

    /// The model being reindexed to, if any.
    pub fn target(&self) -> Option<Arc<ModelVersion>> {
        self.target.read().unwrap().clone()
    }

    /// Every index this process writes to: the active one and the target's.
    pub fn indexes(&self) -> Vec<Arc<dyn VectorIndex>> {
        let mut all = vec![self.active().index.clone()];
        all.extend(self.target().map(|t| t.index.clone()));
        all
    }

    /// Where the reindex stands (`None`: none runs in this process).
    pub fn progress(&self) -> Option<ReindexProgress> {
        self.progress.lock().unwrap().clone()
    }

    /// A file was indexed with the active model: the target must catch up.
    pub(crate) fn file_indexed(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn shutdown(&self) {
        self.active().abort();
        if let Some(target) = self.target() {
            target.abort();
        }
    }

    pub(crate) async fn stop_task(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// SHA-256 of a model's weights file (hex). A hub snapshot's weights are a link to a blob
/// named by that digest (for files in Git LFS), which is then taken as it is.
pub fn weights_digest(model_id: &str) -> Result<String, String> {
    let files = clap_model::ModelFiles::resolve(model_id).map_err(|e| e.to_string())?;
    let weights = std::fs::canonicalize(&files.weights).unwrap_or_else(|_| files.weights.clone());
    if let Some(name) = weights.file_name().and_then(|n| n.to_str()) {
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(name.to_ascii_lowercase());
        }
    }
    let mut file = std::fs::File::open(&weights)
        .map_err(|e| format!("cannot read {}: {e}", weights.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", weights.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The model's short name: a hub id as it is (`laion/larger_clap_music_and_speech`), a model
/// directory by its last component.
pub fn model_name(model_id: &str) -> String {
    let path = Path::new(model_id);
    let is_dir = model_id.starts_with(['/', '.', '~']) || path.is_dir();
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if is_dir => name.to_owned(),
        _ => model_id.to_owned(),
    }
}

/// The key of a model version.
pub fn model_key(model_id: &str, digest: &str) -> String {
    format!(
        "{}@{}",
        model_name(model_id),
        &digest[..digest.len().min(12)]
    )
}

/// Where the first model of a library keeps its vectors: where libraries kept them before
/// model versions existed (`index/`, or the collections named by the model alone).
fn first_location(store: &VectorStore, model_id: &str) -> String {
    match store {
        VectorStore::Edge => "index".into(),
        VectorStore::Qdrant(_) => model_name(model_id),
    }
}

/// Where a further model keeps its vectors.
fn new_location(store: &VectorStore, key: &str) -> String {
    match store {
        VectorStore::Edge => format!("indexes/{}", safe_name(key)),
        VectorStore::Qdrant(_) => safe_name(key),
    }
}

/// Opens a model's index at its location.
pub(crate) async fn open_index(
    config: &LibraryConfig,
    paths: &DataPaths,
    location: &str,
    dim: usize,
) -> Result<Arc<dyn VectorIndex>, OpenError> {
    match &config.vector_store {
        VectorStore::Edge => {
            let mut index_config = IndexConfig::new(edge_dir(paths, location), dim);
            let settings = config.edge_index;
            index_config.int8 = settings.int8;
            if settings.hnsw_ef.is_some() {
                index_config.hnsw_ef = settings.hnsw_ef;
            }
            index_config.file_candidates = settings.file_candidates;
            let index = tokio::task::spawn_blocking(move || EdgeIndex::open(index_config))
                .await
                .map_err(|e| OpenError::Other(e.to_string()))?
                .map_err(OpenError::Index)?;
            Ok(Arc::new(index))
        }
        VectorStore::Qdrant(qdrant) => {
            let mut qdrant = (**qdrant).clone();
            qdrant.model = location.to_owned();
            qdrant.dim = dim;
            let index = QdrantIndex::connect(qdrant)
                .await
                .map_err(OpenError::Qdrant)?;
            Ok(Arc::new(index))
        }
    }
}

fn edge_dir(paths: &DataPaths, location: &str) -> PathBuf {
    if location == "index" {
        paths.index()
    } else {
        paths.root.join(location)
    }
}

/// What [`resolve`] decided: the rows of the active model and of the target, if the loaded
/// model is not the active one.
pub(crate) struct Resolved {
    pub active: model_index::Model,
    pub target: Option<model_index::Model>,
}

/// Finds the loaded model's place: the active model (a library's first model becomes it),
/// or the target of a reindex (recorded as `building`).
pub(crate) async fn resolve(
    db: &sea_orm::DatabaseConnection,
    store_kind: &VectorStore,
    model_id: &str,
    digest: &str,
    dim: usize,
) -> Result<Resolved, OpenError> {
    let key = model_key(model_id, digest);
    let active = match rows::active_model(db).await? {
        Some(active) => active,
        None => {
            // A library from before model versions: its index is adopted as this model's,
            // so it must be this model's.
            let others: Vec<String> = rows::indexed_model_ids(db)
                .await?
                .into_iter()
                .filter(|m| model_name(m) != model_name(model_id))
                .collect();
            if !others.is_empty() {
                return Err(OpenError::Other(format!(
                    "this library's files were indexed with {} before it recorded model \
                     versions; start it once with --model {} (then another --model reindexes \
                     it in the background)",
                    others.join(", "),
                    others[0]
                )));
            }
            rows::insert_model(
                db,
                rows::NewModelIndex {
                    key: key.clone(),
                    model_id: model_id.to_owned(),
                    weights_digest: digest.to_owned(),
                    dim: dim as i32,
                    location: first_location(store_kind, model_id),
                    state: ModelState::Active,
                },
            )
            .await?
        }
    };
    if active.key == key {
        return Ok(Resolved {
            active,
            target: None,
        });
    }
    let target = rows::insert_model(
        db,
        rows::NewModelIndex {
            key: key.clone(),
            model_id: model_id.to_owned(),
            weights_digest: digest.to_owned(),
            dim: dim as i32,
            location: new_location(store_kind, &key),
            state: ModelState::Building,
        },
    )
    .await?;
    if target.dim as usize != dim {
        return Err(OpenError::Other(format!(
            "the library's index for {key} holds {}-dimensional vectors, but the model makes {dim}",
            target.dim
        )));
    }
    // A retired or ready index is brought up to date the same way: files it lacks are
    // embedded, the rest are kept.
    let target = if target.state == ModelState::Building {
        target
    } else {
        rows::set_model_state(db, &key, ModelState::Building, None).await?
    };
    Ok(Resolved {
        active,
        target: Some(target),
    })
}

/// Starts the reindex task when there is a target.
pub(crate) fn start(lib: &Arc<Library>) {
    let Some(target) = lib.models.target() else {
        return;
    };
    let task = tokio::spawn(reindex(lib.clone(), target));
    *lib.models.task.lock().unwrap() = Some(task);
}

/// Files this process could not embed with the target (kept across passes, so a file that
/// cannot be embedded does not hold the switch back for ever).
type Failures = HashMap<Uuid, String>;

/// Ids read from the database at once.
const PAGE: u64 = 256;

/// How often progress is saved and announced.
const REPORT_EVERY: Duration = Duration::from_millis(500);

async fn reindex(lib: Arc<Library>, target: Arc<ModelVersion>) {
    let active = lib.models.active();
    tracing::info!(
        from = %active.key,
        to = %target.key,
        switch = ?lib.models.switch,
        "reindexing the library with a new model while the current one serves"
    );
    let mut failures = Failures::new();
    let started = Instant::now();
    // After the first full pass, a pass only looks at files indexed since the last one began.
    let mut since = None;
    loop {
        if lib.shutdown.is_cancelled() {
            return;
        }
        // Files indexed from here on are the ones the pass may miss; `finish` looks at
        // them (with a margin for clocks of other replicas writing the same database).
        let pass_started = store::now() - chrono::Duration::seconds(60);
        match pass(&lib, &target, &mut failures, since).await {
            Ok(()) if lib.shutdown.is_cancelled() => return,
            Ok(()) => {}
            Err(e) => {
                if lib.shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!(to = %target.key, error = %e, "reindex pass failed; retrying in 5 s");
                report(&lib, &target, ModelState::Building, Some(e.to_string())).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = lib.shutdown.cancelled() => return,
                }
            }
        }
        let switch_now = lib.models.switch == SwitchMode::Auto
            || lib.models.switch_wanted.load(Ordering::SeqCst);
        match finish(&lib, &target, &failures, pass_started, switch_now).await {
            Ok(Finish::Switched) => {
                tracing::info!(
                    model = %target.key,
                    elapsed_s = started.elapsed().as_secs_f64(),
                    failed = failures.len(),
                    "switched to the new model"
                );
                return;
            }
            Ok(Finish::Incomplete) => since = Some(pass_started),
            Ok(Finish::Ready) => {
                since = Some(pass_started);
                // Complete: wait for `switchModel`, catching up with files indexed meanwhile.
                tokio::select! {
                    _ = lib.models.wake.notified() => {}
                    _ = lib.shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(to = %target.key, error = %e, "could not finish the reindex; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = lib.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One walk over the indexed files (with `since`: those indexed since then): each one the
/// target lacks is embedded into it.
async fn pass(
    lib: &Arc<Library>,
    target: &Arc<ModelVersion>,
    failures: &mut Failures,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), ApiError> {
    let total = rows::count_indexed(&lib.db).await? as i64;
    // A pass over the recent files goes on counting from the last one (a file seen by both
    // is not counted past the total).
    let mut done = match since {
        None => 0,
        Some(_) => lib.models.progress().map_or(0, |p| p.done),
    };
    let mut after = None;
    let mut last_report = Instant::now();
    let abort_after = test_hook("TRAUM_TEST_ABORT_REINDEX_AFTER");
    let hold_after = test_hook("TRAUM_TEST_HOLD_REINDEX_AFTER");
    let mut embedded = 0usize;
    // Once complete, a pass only catches up with new files: the index stays READY meanwhile.
    let state = if lib.models.complete.load(Ordering::SeqCst) {
        ModelState::Ready
    } else {
        ModelState::Building
    };
    // What the pass counted so far, for health and (with `announce`) for subscribers.
    let show = |done: i64, failed: usize, announce: bool| async move {
        set_progress(lib, target, state, done.min(total), failed as i64, total);
        if announce {
            report(lib, target, state, None).await;
        }
    };
    show(done, failures.len(), true).await;
    loop {
        let ids = rows::indexed_file_ids(&lib.db, since, after, PAGE).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        let concurrency = lib.config.workers.max(1);
        let ids: Vec<(Uuid, bool)> = ids
            .into_iter()
            .map(|id| (id, failures.contains_key(&id)))
            .collect();
        let mut results = futures_util::stream::iter(ids)
            .map(|(id, skip)| {
                let lib = lib.clone();
                let target = target.clone();
                async move {
                    if skip {
                        return (id, Step::Skipped);
                    }
                    (id, embed_into(&lib, &target, id).await)
                }
            })
            .buffer_unordered(concurrency);
        while let Some((id, step)) = results.next().await {
            match step {
                Step::Present => done += 1,
                Step::Embedded => {
                    done += 1;
                    embedded += 1;
                    if abort_after.is_some_and(|n| embedded >= n) {
                        // Test hook: die as a crash would (nothing flushed beyond what is).
                        tracing::warn!(embedded, "TRAUM_TEST_ABORT_REINDEX_AFTER: aborting");
                        std::process::abort();
                    }
                    if hold_after == Some(embedded) && !HELD.swap(true, Ordering::SeqCst) {
                        show(done, failures.len(), true).await;
                        hold(lib).await;
                    }
                }
                Step::Gone | Step::Skipped => {}
                Step::Failed(message) => {
                    tracing::warn!(%id, model = %target.key, %message, "could not embed a file with the new model");
                    failures.insert(id, message);
                }
                Step::Stopped => return Ok(()),
                Step::Error(e) => return Err(e),
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                show(done, failures.len(), true).await;
            }
        }
    }
    show(done, failures.len(), false).await;
    Ok(())
}

/// Test hooks (debug builds only), so that the tests need no timing luck:
/// `TRAUM_TEST_ABORT_REINDEX_AFTER=<n>` aborts the process (as kill -9 would end it) once a
/// reindex has embedded n files; `TRAUM_TEST_HOLD_REINDEX_AFTER=<n>` pauses it there until
/// the file `release-reindex` exists in the data directory.
fn test_hook(name: &str) -> Option<usize> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The hold happens once per process.
static HELD: AtomicBool = AtomicBool::new(false);

async fn hold(lib: &Library) {
    let release = lib.paths.root.join("release-reindex");
    tracing::warn!(path = %release.display(), "TRAUM_TEST_HOLD_REINDEX_AFTER: holding the reindex");
    while !release.exists() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = lib.shutdown.cancelled() => return,
        }
    }
}

enum Step {
    /// Already in the target's index.
    Present,
    Embedded,
    /// Deleted meanwhile.
    Gone,
    /// Failed earlier in this run.
    Skipped,
    Failed(String),
    /// Shutting down.
    Stopped,
    Error(ApiError),
}

/// Embeds one file with the target model into its index, unless it is there already.
async fn embed_into(lib: &Arc<Library>, target: &ModelVersion, id: Uuid) -> Step {
    match target.index.file_vector(id).await {
        Ok(Some(_)) => return Step::Present,
        Ok(None) => {}
        Err(e) => return Step::Error(e.into()),
    }
    let row = match store::get(&lib.db, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Error(e.into()),
    };
    let path = match lib.readable_path(&row).await {
        Ok(path) => path,
        Err(e) => return Step::Failed(e.to_string()),
    };
    let decoded =
        match crate::pipeline::embed_library_file(lib, &target.embedder, &path, &row).await {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return Step::Stopped,
            Err(crate::pipeline::ReembedError::File(message)) => return Step::Failed(message),
            Err(crate::pipeline::ReembedError::Stopped) => return Step::Stopped,
            Err(crate::pipeline::ReembedError::Other(e)) => return Step::Error(e),
        };
    let vectors: Vec<&[f32]> = decoded
        .windows
        .iter()
        .map(|w| w.vector.as_slice())
        .collect();
    let Some(file_vector) = clap_model::mean_embedding(&vectors) else {
        return Step::Failed(format!("{}: the file holds no audio", row.original_name));
    };
    let file = FileVectors {
        file_id: id,
        duration_s: row.duration_s.unwrap_or(decoded.duration_s),
        format: row.container.clone(),
        created_at: row.created_at.timestamp(),
        vector: file_vector,
        windows: decoded.windows,
    };
    // Under the commit lock: a file deleted meanwhile never gets vectors back.
    let _commit = lib.commit_lock.lock().await;
    match store::get(&lib.db, id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Error(e.into()),
    }
    match target.index.upsert_file(file).await {
        Ok(()) => Step::Embedded,
        Err(e) => Step::Error(e.into()),
    }
}

enum Finish {
    Switched,
    Ready,
    Incomplete,
}

/// Under the commit lock (no file is indexed meanwhile): is every indexed file in the
/// target's index (or failed with it)? Then switch, or wait for a manual switch. The pass
/// that ran before put every file it saw there, so only files indexed since it started
/// are looked up.
async fn finish(
    lib: &Arc<Library>,
    target: &Arc<ModelVersion>,
    failures: &Failures,
    pass_started: chrono::DateTime<chrono::Utc>,
    switch_now: bool,
) -> Result<Finish, ApiError> {
    let _commit = lib.commit_lock.lock().await;
    let since = Some(pass_started);
    let mut after = None;
    loop {
        let ids = rows::indexed_file_ids(&lib.db, since, after, PAGE).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        after = Some(last);
        for id in ids {
            if failures.contains_key(&id) {
                continue;
            }
            if target.index.file_vector(id).await?.is_none() {
                return Ok(Finish::Incomplete);
            }
        }
    }
    target.index.flush().await?;
    let failed = failures.len() as i64;
    let total = rows::count_indexed(&lib.db).await? as i64;
    let done = (total - failed).max(0);
    rows::save_model_progress(&lib.db, &target.key, done, failed, total).await?;
    if !switch_now {
        if !lib.models.complete.swap(true, Ordering::SeqCst) {
            rows::set_model_state(&lib.db, &target.key, ModelState::Ready, None).await?;
            tracing::info!(model = %target.key, done, failed, "the new index is complete; switchModel makes it active");
        }
        set_progress(lib, target, ModelState::Ready, done, failed, total);
        announce(lib);
        return Ok(Finish::Ready);
    }
    // Whoever sees the new model active sees the reindex done.
    set_progress(lib, target, ModelState::Active, done, failed, total);
    if let Err(e) = switch(lib, target, failures).await {
        set_progress(lib, target, ModelState::Building, done, failed, total);
        return Err(e);
    }
    announce(lib);
    Ok(Finish::Switched)
}

/// Makes the target active (the caller holds the commit lock, and checked it is complete).
async fn switch(
    lib: &Arc<Library>,
    target: &Arc<ModelVersion>,
    failures: &Failures,
) -> Result<(), ApiError> {
    rows::activate(&lib.db, &target.key).await?;
    // Files the new model could not embed have no vectors in its index: they fail, and say why.
    for (id, message) in failures {
        let message = format!("{} could not embed it: {message}", target.key);
        match store::fail(&lib.db, *id, crate::error::code::EMBED_FAILED, &message).await {
            Ok(row) => lib.events.send(FileEvent::from_row(
                crate::events::FileEventKind::Status,
                &row,
            )),
            Err(e) => tracing::warn!(%id, error = %e, "could not mark a file failed"),
        }
    }
    let old = {
        let mut active = lib.models.active.write().unwrap();
        std::mem::replace(&mut *active, target.clone())
    };
    *lib.models.target.write().unwrap() = None;
    lib.models.active_key.send_replace(target.key.clone());
    if let Err(e) = old.index.flush().await {
        tracing::warn!(model = %old.key, error = %e, "flushing the retired index failed");
    }
    lib.index_changed();
    Ok(())
}

fn set_progress(
    lib: &Library,
    target: &ModelVersion,
    state: ModelState,
    done: i64,
    failed: i64,
    total: i64,
) {
    let mut progress = lib.models.progress.lock().unwrap();
    let error = progress.as_ref().and_then(|p| p.error.clone());
    *progress = Some(ReindexProgress {
        key: target.key.clone(),
        model_id: target.model_id.clone(),
        state,
        done,
        failed,
        total,
        error: if state == ModelState::Building {
            error
        } else {
            None
        },
    });
}

/// Saves the progress and announces it (a REINDEX event on `libraryEvents`).
async fn report(lib: &Library, target: &ModelVersion, state: ModelState, error: Option<String>) {
    if let Some(error) = &error {
        if let Some(p) = lib.models.progress.lock().unwrap().as_mut() {
            p.error = Some(error.clone());
        }
    }
    if let Some(p) = lib.models.progress() {
        let saved =
            rows::save_model_progress(&lib.db, &target.key, p.done, p.failed, p.total).await;
        if let Err(e) = saved {
            tracing::debug!(error = %e, "reindex progress not saved");
        }
        if error.is_some() {
            let _ = rows::set_model_state(&lib.db, &target.key, state, error).await;
        }
    }
    announce(lib);
}

fn announce(lib: &Library) {
    if let Some(p) = lib.models.progress() {
        lib.events.send(FileEvent::reindex_progress(p.into()));
    }
}

/// Asks for the switch to the complete target `key` and waits for it (`--switch manual`).
pub async fn request_switch(lib: &Library, key: &str) -> Result<(), ApiError> {
    let active = lib.models.active();
    if active.key == key {
        return Ok(());
    }
    if lib.models.target().filter(|t| t.key == key).is_none() {
        return Err(ApiError::BadRequest(
            match rows::get_model(&lib.db, key).await? {
                None => format!("there is no model index {key}"),
                Some(known) => format!(
                    "{key} is not the model this server reindexes to; start the server with \
                 --model {} to bring it up to date and switch to it",
                    known.model_id
                ),
            },
        ));
    }
    if !lib.models.complete.load(Ordering::SeqCst) {
        let p = lib.models.progress();
        return Err(ApiError::BadRequest(format!(
            "{key} is not complete yet ({} of {} files embedded); try again when it is READY",
            p.as_ref().map_or(0, |p| p.done),
            p.as_ref().map_or(0, |p| p.total)
        )));
    }
    let mut switched = lib.models.active_key.subscribe();
    lib.models.switch_wanted.store(true, Ordering::SeqCst);
    lib.models.wake.notify_one();
    let wait = async { switched.wait_for(|active| active == key).await.map(|_| ()) };
    let outcome = tokio::time::timeout(Duration::from_secs(120), wait).await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ApiError::ShuttingDown),
        Err(_) => Err(ApiError::Internal(format!(
            "the switch to {key} did not happen within 120 s; it happens when the new index \
             has caught up with the files added meanwhile"
        ))),
    }
}

/// Removes a model index that is neither active nor being reindexed to, vectors included.
pub async fn drop_model(lib: &Library, key: &str) -> Result<bool, ApiError> {
    let Some(row) = rows::get_model(&lib.db, key).await? else {
        return Ok(false);
    };
    if row.state == ModelState::Active || lib.models.active().key == key {
        return Err(ApiError::BadRequest(format!(
            "{key} is the active model index; switch to another before dropping it"
        )));
    }
    if lib.models.target().is_some_and(|t| t.key == key) {
        return Err(ApiError::BadRequest(format!(
            "{key} is being reindexed to by this server; restart it with the active model \
             before dropping it"
        )));
    }
    match &lib.config.vector_store {
        VectorStore::Edge => {
            let dir = edge_dir(&lib.paths, &row.location);
            crate::storage::blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await?
            .map_err(|e| ApiError::Internal(format!("cannot remove the index of {key}: {e}")))?;
        }
        VectorStore::Qdrant(qdrant) => {
            let mut qdrant = (**qdrant).clone();
            qdrant.model = row.location.clone();
            qdrant.dim = row.dim as usize;
            QdrantIndex::drop_collections(qdrant).await?;
        }
    }
    rows::delete_model(&lib.db, key).await?;
    tracing::info!(model = %key, "model index dropped");
    Ok(true)
}

/// Loads the active model when the server was started with another (the target).
pub(crate) async fn load_active(
    config: &LibraryConfig,
    row: &model_index::Model,
) -> Result<clap_model::ClapEmbedder, OpenError> {
    let mut options = config.model_options.clone();
    options.model = row.model_id.clone();
    let id = row.model_id.clone();
    let expected = row.weights_digest.clone();
    let key = row.key.clone();
    tokio::task::spawn_blocking(move || {
        let cannot = |reason: String| {
            OpenError::Other(format!(
                "the library's active model {key} ({id}) is needed to serve search while the \
                 new model reindexes, and it cannot be loaded: {reason}; start with --model {id} \
                 to keep using it"
            ))
        };
        let digest = weights_digest(&id).map_err(&cannot)?;
        if digest != expected {
            return Err(cannot(format!(
                "its weights changed (digest {} instead of {})",
                &digest[..12.min(digest.len())],
                &expected[..12.min(expected.len())]
            )));
        }
        clap_model::ClapEmbedder::load(&options).map_err(|e| cannot(e.to_string()))
    })
    .await
    .map_err(|e| OpenError::Other(e.to_string()))?
}

/// The model rows, for the API.
pub async fn list(lib: &Library) -> Result<Vec<model_index::Model>, ApiError> {
    let mut rows = rows::list_models(&lib.db).await?;
    // This process's live counters are newer than the last saved ones.
    if let Some(p) = lib.models.progress() {
        if let Some(row) = rows.iter_mut().find(|r| r.key == p.key) {
            row.files_done = p.done;
            row.files_failed = p.failed;
            row.files_total = p.total;
            if p.state == ModelState::Building || p.state == ModelState::Ready {
                row.state = p.state;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!(
            "{}/../tests/fixtures/clap/models/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn a_digest_is_the_sha256_of_the_weights() {
        let dir = fixture("tiny-a");
        let bytes = std::fs::read(format!("{dir}/model.safetensors")).unwrap();
        let expected = hex::encode(Sha256::digest(&bytes));
        assert_eq!(weights_digest(&dir).unwrap(), expected);
        // tiny-b's weights are another file (pytorch_model.bin), so another digest.
        assert_ne!(weights_digest(&fixture("tiny-b")).unwrap(), expected);
        let err = weights_digest("/nonexistent/model").unwrap_err();
        assert!(err.contains("/nonexistent/model"), "{err}");
    }

    #[test]
    fn a_hub_blob_is_named_by_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blob = "ab".repeat(32);
        let blobs = dir.path().join("blobs");
        let snapshot = dir.path().join("snapshot");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(blobs.join(&blob), b"not really weights").unwrap();
        std::os::unix::fs::symlink(blobs.join(&blob), snapshot.join("model.safetensors")).unwrap();
        std::fs::write(snapshot.join("config.json"), b"{}").unwrap();
        assert_eq!(weights_digest(snapshot.to_str().unwrap()).unwrap(), blob);
    }

    #[test]
    fn the_text_cache_drops_the_least_recently_used() {
        let cache = TextCache::new(2);
        let v = |x: f32| -> Arc<[f32]> { Arc::from(vec![x]) };
        cache.put("kick", v(1.0));
        cache.put("snare", v(2.0));
        assert_eq!(cache.get("kick").as_deref(), Some(&[1.0][..]));
        // "snare" is now the least recently used: the third text takes its place.
        cache.put("hat", v(3.0));
        assert!(cache.get("snare").is_none());
        assert_eq!(cache.get("kick").as_deref(), Some(&[1.0][..]));
        assert_eq!(cache.get("hat").as_deref(), Some(&[3.0][..]));
        // Putting a text again replaces it without evicting another.
        cache.put("hat", v(4.0));
        assert_eq!(cache.get("hat").as_deref(), Some(&[4.0][..]));
        assert!(cache.get("kick").is_some());
    }

    #[test]
    fn keys_and_locations() {
        let digest = "0123456789abcdef".repeat(4);
        assert_eq!(
            model_key("laion/larger_clap_general", &digest),
            "laion/larger_clap_general@0123456789ab"
        );
        assert_eq!(
            model_key(&fixture("tiny-a"), &digest),
            "tiny-a@0123456789ab"
        );
        let key = model_key("laion/larger_clap_general", &digest);
        assert_eq!(
            new_location(&VectorStore::Edge, &key),
            "indexes/laion_larger_clap_general_0123456789ab"
        );
        assert_eq!(first_location(&VectorStore::Edge, "laion/x"), "index");
        let qdrant = VectorStore::Qdrant(Box::new(traum_index::QdrantConfig::new(
            vec![],
            String::new(),
            0,
        )));
        // The first model keeps the collection names libraries had before versions.
        assert_eq!(first_location(&qdrant, "laion/x"), "laion/x");
        assert_eq!(
            new_location(&qdrant, &key),
            "laion_larger_clap_general_0123456789ab"
        );
    }
}
