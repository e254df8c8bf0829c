//! The library: database rows, stored files and vectors, kept consistent.
//!
//! Everything that changes the library goes through [`Library`]: uploads
//! ([`Library::add_file`]), deletion, reprocessing, and the pipeline workers
//! (`pipeline::worker`). GraphQL and `traum ingest` are thin layers over it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap_model::ClapEmbedder;
use entity::audio_file::{FileStatus, Model as FileRow};
use entity::search_log::SearchKind;
use entity::store::{self, NewAudioFile, NewSearch};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use traum_index::{FileHit, QdrantConfig, SearchParams, VectorIndex};
use uuid::Uuid;

use crate::cluster::{self, ActiveFiles, Hearers, Outgoing, Relay};
use crate::error::ApiError;
use crate::events::{EventBus, FileEvent, FileEventKind};
use crate::metrics::Metrics;
use crate::models::{self, ModelVersion, Models, SwitchMode};
use crate::pipeline::batcher::{BatcherConfig, EmbedError, Embedder};
use crate::pipeline::maintenance::{self, IndexMaintenance};
use crate::storage::{DataDirLock, DataPaths, StagedFile};

/// How a library is opened and processed.
#[derive(Debug, Clone)]
pub struct LibraryConfig {
    pub data_dir: PathBuf,
    /// Where originals are kept, when not in `data_dir` (a directory replicas share).
    pub storage_dir: Option<PathBuf>,
    /// `None`: SQLite at `<data_dir>/traum.db`.
    pub database_url: Option<String>,
    /// Files processed at once (each streams its windows into the batcher).
    pub workers: usize,
    pub batcher: BatcherConfig,
    /// Seconds between window starts (≤ the 10 s window).
    pub hop_s: f64,
    /// Claims of a file before it fails with TOO_MANY_ATTEMPTS.
    pub max_attempts: i32,
    /// How long a worker's claim on a file lasts without renewal.
    pub lease: Duration,
    /// Largest accepted file, bytes.
    pub max_file_bytes: u64,
    /// Longest search clip (`searchByAudio`), seconds.
    pub max_clip_s: f64,
    /// Most bytes of originals the library may store; none: no quota.
    pub storage_quota_bytes: Option<u64>,
    /// Searches served at once; more are refused with TOO_BUSY rather than queued.
    pub max_concurrent_searches: usize,
    /// When the vector index is optimised; none: never (benchmarks that measure it).
    pub index_maintenance: Option<IndexMaintenance>,
    /// Where the vectors live.
    pub vector_store: VectorStore,
    /// Search and quantization settings of the in-process store (`VectorStore::Edge`).
    pub edge_index: EdgeIndexSettings,
    /// How the library's active model is loaded when the server runs another (a reindex):
    /// the device, precision and batch size (`model` is set from the library's record).
    pub model_options: clap_model::EmbedderOptions,
    /// When a complete reindex becomes the active index.
    pub switch: SwitchMode,
}

/// Settings of the in-process store the command line can change (see `traum-index`'s
/// `IndexConfig` and its README for what each costs and buys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeIndexSettings {
    /// Int8 scalar quantization with rescoring, for a new store.
    pub int8: bool,
    /// HNSW `ef` of unfiltered searches; none: the index's default.
    pub hnsw_ef: Option<usize>,
    /// Files found by their file vector whose windows are scored exactly (0: off).
    pub file_candidates: usize,
}

/// Where the library's vectors live.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorStore {
    /// In-process (qdrant-edge), in `<data_dir>/index`.
    Edge,
    /// A Qdrant server or cluster. `model` and `dim` are set from the loaded model when
    /// the library opens.
    Qdrant(Box<QdrantConfig>),
}

impl LibraryConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            storage_dir: None,
            database_url: None,
            workers: 2,
            batcher: BatcherConfig::default(),
            hop_s: 10.0,
            max_attempts: 3,
            lease: Duration::from_secs(60),
            max_file_bytes: 100_000_000,
            max_clip_s: 60.0,
            storage_quota_bytes: None,
            max_concurrent_searches: 32,
            index_maintenance: Some(IndexMaintenance::default()),
            vector_store: VectorStore::Edge,
            edge_index: EdgeIndexSettings::default(),
            model_options: clap_model::EmbedderOptions::default(),
            switch: SwitchMode::Auto,
        }
    }
}

/// One search hit with its database row.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub file: FileRow,
    pub hit: FileHit,
}

/// A search and what it took.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    pub latency_ms: f64,
    /// The model index that answered (its key).
    pub model: String,
}

/// The open library. Shared as `Arc<Library>`.
pub struct Library {
    pub db: DatabaseConnection,
    /// The active model and its index, and the target of a reindex.
    pub models: Models,
    /// `qdrant-edge` (in-process) or `qdrant` (server).
    pub index_kind: &'static str,
    pub events: EventBus,
    pub metrics: Metrics,
    pub paths: DataPaths,
    pub config: LibraryConfig,
    /// Who this process is when it claims files.
    pub owner: String,
    pub started: Instant,
    /// Wakes idle workers when a file is queued (here, or on another replica).
    pub(crate) work: Arc<Notify>,
    /// Files being processed: cancelling stops their worker.
    pub(crate) active: ActiveFiles,
    /// With PostgreSQL: what this process tells the other replicas.
    outbox: Option<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
    relay: Mutex<Option<Relay>>,
    /// Held while the library is open: one process per data directory.
    _lock: DataDirLock,
    /// Serialises "write vectors + mark indexed" against delete/reprocess, so
    /// a file deleted mid-processing never gets its vectors back.
    pub(crate) commit_lock: tokio::sync::Mutex<()>,
    /// Files waiting for the next group commit (see `pipeline::commit`).
    pub(crate) commit_queue: std::sync::Mutex<Vec<crate::pipeline::QueuedCommit>>,
    /// Files embedded and on their way to the commit queue: a group waits for them (see
    /// `pipeline::commit`).
    pub(crate) approaching_commit: std::sync::atomic::AtomicUsize,
    /// Serialises "insert a file + announce it (QUEUED)" against a worker's claim, so that no
    /// subscriber sees a file's DECODING before its QUEUED (a worker finishing another file
    /// could otherwise claim the new row before its uploader has sent the event).
    pub(crate) intake_lock: tokio::sync::Mutex<()>,
    /// Signalled after every write to the index (see `pipeline::maintenance`).
    pub(crate) index_changes: Notify,
    pub shutdown: CancellationToken,
    /// Searches in flight (bounded: overload is an error, not a queue).
    searches: Arc<tokio::sync::Semaphore>,
    maintenance_task: Mutex<Option<JoinHandle<()>>>,
    /// Folder sources: per-source locks, and the watcher's wake-up.
    pub(crate) folders: crate::sources::Folders,
}

impl Library {
    /// Opens (creating if needed) the data directory, database and index,
    /// starts the batcher, and puts interrupted files back in the queue.
    /// Workers start with [`crate::pipeline::start_workers`].
    pub async fn open(config: LibraryConfig, model: ClapEmbedder) -> Result<Arc<Self>, OpenError> {
        let owner = owner_id(&config.data_dir);
        let paths = match &config.storage_dir {
            Some(storage) => DataPaths::with_storage(
                &config.data_dir,
                storage,
                &crate::storage::hash_str(&owner)[..16],
            ),
            None => DataPaths::new(&config.data_dir),
        };
        paths.create().map_err(|source| OpenError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let lock = DataDirLock::acquire(&paths).map_err(OpenError::InUse)?;
        let url = match &config.database_url {
            Some(url) => url.clone(),
            None => store::sqlite_url(&paths.sqlite()),
        };
        let db = store::connect_and_migrate(&url)
            .await
            .map_err(|source| OpenError::Database {
                url: redact_url(&url),
                source,
            })?;
        let index_kind = match &config.vector_store {
            VectorStore::Edge => "qdrant-edge",
            VectorStore::Qdrant(_) => "qdrant",
        };
        // Which model this is (id and weights), and whether it is the library's active one
        // or the target of a reindex.
        let loaded_id = model.info().model_id.clone();
        let digest = {
            let id = loaded_id.clone();
            tokio::task::spawn_blocking(move || models::weights_digest(&id))
                .await
                .map_err(|e| OpenError::Other(e.to_string()))?
                .map_err(|e| OpenError::Other(format!("cannot read the model's weights: {e}")))?
        };
        let dim = model.info().embedding_dim;
        let resolved = models::resolve(&db, &config.vector_store, &loaded_id, &digest, dim).await?;
        let metrics = Metrics::new();
        let (active_model, target_model) = match resolved.target {
            None => (model, None),
            Some(target) => {
                tracing::info!(
                    active = %resolved.active.key,
                    new = %target.key,
                    "the library's index was made with another model: it keeps serving while \
                     the new model reindexes"
                );
                let active = models::load_active(&config, &resolved.active).await?;
                (active, Some((target, model)))
            }
        };
        let version = |row: &entity::model_index::Model,
                       embedder: ClapEmbedder,
                       index: Arc<dyn VectorIndex>| {
            let (embedder, batcher) =
                Embedder::start(Arc::new(embedder), config.batcher, metrics.clone());
            ModelVersion::new(row, embedder, batcher, index)
        };
        let active_index = models::open_index(
            &config,
            &paths,
            &resolved.active.location,
            resolved.active.dim as usize,
        )
        .await?;
        let active = version(&resolved.active, active_model, active_index);
        let (target, progress) = match target_model {
            None => (None, None),
            Some((row, embedder)) => {
                let index =
                    models::open_index(&config, &paths, &row.location, row.dim as usize).await?;
                let progress = models::ReindexProgress::from_row(&row);
                (Some(version(&row, embedder, index)), Some(progress))
            }
        };
        let models = Models::new(active, target, progress, config.switch);
        let removed = paths.clean_incoming().unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "removed unfinished uploads");
        }
        // Files this data dir's previous run held (it was killed) go back to the queue now,
        // their attempts counted; files other processes let lapse are claimed when their
        // lease runs out.
        let requeued = store::work::requeue_owner(&db, &owner).await?;
        if requeued > 0 {
            tracing::info!(requeued, "resuming what the previous run was processing");
        }
        // Libraries from before sources: every upload gets its location in the upload source.
        let storage = paths.storage.to_string_lossy().into_owned();
        let adopted = store::sources::adopt_unlocated_uploads(&db, &storage).await?;
        if adopted > 0 {
            tracing::info!(adopted, "recorded the locations of stored uploads");
        }
        let work = Arc::new(Notify::new());
        let active: ActiveFiles = Default::default();
        let shutdown = CancellationToken::new();
        let relayed = db.get_database_backend() == sea_orm::DbBackend::Postgres;
        let (events, outbox, relay) = if relayed {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let events = EventBus::relayed(4096, tx.clone());
            let hearers = Hearers {
                events: events.clone(),
                work: work.clone(),
                active: active.clone(),
                metrics: metrics.clone(),
            };
            let relay = Relay::start(&db, rx, hearers, shutdown.clone())
                .await
                .map_err(|e| {
                    OpenError::Other(format!("cannot listen for events on PostgreSQL: {e}"))
                })?;
            (events, Some(tx), Some(relay))
        } else {
            (EventBus::new(4096), None, None)
        };
        let library = Arc::new(Self {
            db,
            models,
            index_kind,
            events,
            metrics,
            paths,
            owner,
            started: Instant::now(),
            work,
            active,
            outbox,
            relay: Mutex::new(relay),
            _lock: lock,
            commit_lock: tokio::sync::Mutex::new(()),
            commit_queue: Default::default(),
            approaching_commit: Default::default(),
            intake_lock: tokio::sync::Mutex::new(()),
            index_changes: Notify::new(),
            shutdown,
            searches: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_searches.max(1),
            )),
            config,
            maintenance_task: Mutex::new(None),
            folders: Default::default(),
        });
        // A Qdrant server optimises its collections by itself; only the in-process store
        // needs us to.
        let maintenance = library
            .config
            .index_maintenance
            .filter(|_| matches!(library.config.vector_store, VectorStore::Edge));
        if let Some(config) = maintenance {
            *library.maintenance_task.lock().unwrap() = Some(maintenance::start(&library, config));
            // A library written by an older version, or whose last run stopped before its
            // optimisation, is brought up to date once the start is quiet.
            library.index_changed();
        }
        models::start(&library);
        Ok(library)
    }

    /// The vector store's status (nodes, collections), also recorded in the metrics. Bounded:
    /// a store that does not answer within 5 s is reported as an error.
    pub async fn index_status(&self) -> Result<traum_index::IndexStatus, String> {
        let index = self.models.active().index.clone();
        match tokio::time::timeout(Duration::from_secs(5), index.status()).await {
            Ok(Ok(status)) => {
                self.metrics.record_index_status(&status);
                Ok(status)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the vector store did not answer within 5 s".into()),
        }
    }

    /// Whether this process can serve requests now: not shutting down, the database
    /// answers, and the vector store answers (for Qdrant: at least one node). The reason
    /// when not.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        tokio::time::timeout(Duration::from_secs(5), self.db.ping())
            .await
            .map_err(|_| "the database did not answer within 5 s".to_string())?
            .map_err(|e| format!("the database does not answer: {e}"))?;
        let status = self.index_status().await?;
        if !status.nodes.is_empty() && !status.nodes.iter().any(|n| n.reachable) {
            return Err("no Qdrant node answers".into());
        }
        if let Some(c) = status.collections.iter().find(|c| c.status == "red") {
            return Err(format!("vector collection {} is failed (red)", c.name));
        }
        Ok(())
    }

    /// Keeps a received file: the existing row when the content is known
    /// (`created == false`), else a new `queued` row with the bytes moved into
    /// the store.
    pub async fn add_file(&self, staged: StagedFile) -> Result<(FileRow, bool), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        if let Some(existing) = store::get_by_hash(&self.db, &staged.sha256).await? {
            self.metrics.uploads.with_label_values(&["duplicate"]).inc();
            self.keep_upload_of_known(&existing, staged).await?;
            return Ok((existing, false));
        }
        if let Some(quota) = self.config.storage_quota_bytes {
            let used = self.stored_bytes().await?;
            if used + staged.size > quota {
                return Err(ApiError::QuotaExceeded(format!(
                    "{}: storing it would pass the library's quota ({} of {} used; \
                     --max-library-gb); delete files or raise the quota",
                    staged.original_name,
                    crate::error::human_bytes(used),
                    crate::error::human_bytes(quota)
                )));
            }
        }
        let relative = DataPaths::relative_file_path(&staged.sha256, staged.container);
        let dest = self.paths.storage.join(&relative);
        let staged = crate::storage::blocking(move || {
            let mut staged = staged;
            let kept = staged
                .keep_at(&dest)
                .map_err(|e| crate::storage::write_error(&dest, e));
            kept.map(|()| staged)
        })
        .await??;
        let relative = relative.to_string_lossy().into_owned();
        let new = NewAudioFile {
            original_name: staged.original_name.clone(),
            stored_path: relative.clone(),
            content_hash: staged.sha256.clone(),
            size_bytes: staged.size as i64,
            container: staged.container.name().to_string(),
        };
        let _intake = self.intake_lock.lock().await;
        let (row, created) = self.insert_announced(new).await?;
        self.record_upload_location(&row, &relative).await?;
        if created {
            self.metrics.uploads.with_label_values(&["created"]).inc();
            self.work_queued();
            tracing::info!(id = %row.id, name = %row.original_name, size = row.size_bytes, "file added");
        } else {
            // Lost a race with the same content: the winner's row (and its
            // bytes, at the same content-addressed path) stand.
            self.metrics.uploads.with_label_values(&["duplicate"]).inc();
        }
        Ok((row, created))
    }

    /// The upload source's location of a stored copy.
    async fn record_upload_location(&self, row: &FileRow, relative: &str) -> Result<(), ApiError> {
        let storage = self.paths.storage.to_string_lossy().into_owned();
        let upload = store::sources::upload_source(&self.db, &storage).await?;
        store::sources::put_location(&self.db, upload.id, relative, row.id, row.size_bytes, 0)
            .await?;
        Ok(())
    }

    /// An upload of content the library has from a folder only: its bytes are kept too, so
    /// that the file stays when the folder lets it go.
    async fn keep_upload_of_known(
        &self,
        existing: &FileRow,
        staged: StagedFile,
    ) -> Result<(), ApiError> {
        let storage = self.paths.storage.to_string_lossy().into_owned();
        let upload = store::sources::upload_source(&self.db, &storage).await?;
        let locations = store::sources::locations_of_file(&self.db, existing.id).await?;
        if locations.iter().any(|l| l.source_id == upload.id) {
            return Ok(());
        }
        let relative = DataPaths::relative_file_path(&staged.sha256, staged.container);
        let dest = self.paths.storage.join(&relative);
        crate::storage::blocking(move || {
            let mut staged = staged;
            staged
                .keep_at(&dest)
                .map_err(|e| crate::storage::write_error(&dest, e))
        })
        .await??;
        let relative = relative.to_string_lossy().into_owned();
        store::sources::put_location(
            &self.db,
            upload.id,
            &relative,
            existing.id,
            existing.size_bytes,
            0,
        )
        .await?;
        Ok(())
    }

    /// Inserts the file (or finds it by its hash) and announces a new one (ADDED) so that no
    /// worker anywhere can claim it before the announcement is out: with PostgreSQL the
    /// event is published in the insert's transaction, which other replicas' claims see only
    /// once it committed; here the caller holds the intake lock.
    pub(crate) async fn insert_announced(
        &self,
        new: NewAudioFile,
    ) -> Result<(FileRow, bool), ApiError> {
        if !self.events.is_relayed() {
            let (row, created) = store::insert_or_get_by_hash(&self.db, new).await?;
            if created {
                self.events
                    .send(FileEvent::from_row(FileEventKind::Added, &row));
            }
            return Ok((row, created));
        }
        self.events.flush().await;
        let txn = self.db.begin().await.map_err(store::StoreError::from)?;
        let (row, created) = store::insert_or_get_by_hash(&txn, new).await?;
        if created {
            announce_added(&txn, &row).await?;
        }
        txn.commit().await.map_err(store::StoreError::from)?;
        Ok((row, created))
    }

    /// Wakes idle workers, in every process.
    pub(crate) fn work_queued(&self) {
        self.work.notify_waiters();
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(Outgoing::Work);
        }
    }

    /// Bytes of originals the library holds.
    pub async fn stored_bytes(&self) -> Result<u64, ApiError> {
        let shares = store::composition_by_format(&self.db).await?;
        Ok(shares.iter().map(|s| s.bytes).sum::<f64>() as u64)
    }

    pub async fn get(&self, id: Uuid) -> Result<FileRow, ApiError> {
        store::get(&self.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found_file(id))
    }

    /// Stops the file's worker, in whichever process holds it.
    fn cancel_active(&self, id: Uuid) {
        if let Some(token) = self.active.lock().unwrap().get(&id) {
            token.cancel();
        }
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(Outgoing::Cancel(id));
        }
    }

    /// Removes the row, the stored bytes and every vector of a file. Safe while the file is
    /// processing, here or in another process: its worker is stopped, and one that writes
    /// vectors after this removes them again (its commit finds the row gone).
    pub async fn delete_file(&self, id: Uuid) -> Result<FileRow, ApiError> {
        self.cancel_active(id);
        let _commit = self.commit_lock.lock().await;
        // Stored copies (relative to the storage directory) go with the file; the files of
        // folders read in place are the user's, never touched.
        let mut copies: Vec<String> = store::sources::locations_of_file(&self.db, id)
            .await?
            .into_iter()
            .filter(|l| l.source_id == store::sources::UPLOAD_SOURCE_ID)
            .map(|l| l.path)
            .collect();
        let row = store::delete(&self.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found_file(id))?;
        // From every index this process writes: the target of a reindex must not keep it.
        for index in self.models.indexes() {
            index.delete_file(id).await?;
        }
        self.index_changed();
        if !Path::new(&row.stored_path).is_absolute() && !copies.contains(&row.stored_path) {
            copies.push(row.stored_path.clone());
        }
        for copy in copies.into_iter().filter(|c| !Path::new(c).is_absolute()) {
            let path = self.paths.resolve(&copy);
            // Another row never shares the path: it is named by the content hash.
            let removed = crate::storage::blocking({
                let path = path.clone();
                move || std::fs::remove_file(path)
            })
            .await?;
            if let Err(e) = removed {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove stored file");
                }
            }
        }
        self.events.send(FileEvent::deleted(&row));
        tracing::info!(%id, name = %row.original_name, "file deleted");
        Ok(row)
    }

    /// Queues a file again (after a failure, or with a new model). Its old
    /// vectors stay searchable until the new ones replace them.
    pub async fn reprocess(&self, id: Uuid) -> Result<FileRow, ApiError> {
        self.cancel_active(id);
        let _commit = self.commit_lock.lock().await;
        self.get(id).await?;
        let _intake = self.intake_lock.lock().await;
        let row = if self.events.is_relayed() {
            // As for a new file: announced in the transaction that makes it claimable.
            self.events.flush().await;
            let txn = self.db.begin().await.map_err(store::StoreError::from)?;
            let row = store::set_status(&txn, id, FileStatus::Queued).await?;
            announce_added(&txn, &row).await?;
            txn.commit().await.map_err(store::StoreError::from)?;
            row
        } else {
            let row = store::set_status(&self.db, id, FileStatus::Queued).await?;
            self.events
                .send(FileEvent::from_row(FileEventKind::Added, &row));
            row
        };
        self.work_queued();
        Ok(row)
    }

    /// A slot for one search, or TOO_BUSY.
    fn search_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.searches.clone().try_acquire_owned().map_err(|_| {
            ApiError::TooBusy(format!(
                "{} searches are running already; try again in a moment",
                self.config.max_concurrent_searches
            ))
        })
    }

    /// Files for these hits, in hit order (hits whose row is gone are dropped).
    async fn attach_rows(&self, hits: Vec<FileHit>) -> Result<Vec<SearchHit>, ApiError> {
        let ids: Vec<Uuid> = hits.iter().map(|h| h.file_id).collect();
        let mut rows = store::get_many(&self.db, &ids).await?;
        Ok(hits
            .into_iter()
            .filter_map(|hit| {
                let file = rows.remove(&hit.file_id)?;
                Some(SearchHit { file, hit })
            })
            .collect())
    }

    async fn search_vector(
        &self,
        model: &ModelVersion,
        kind: SearchKind,
        query_text: Option<String>,
        vector: &[f32],
        params: SearchParams,
        started: Instant,
    ) -> Result<SearchOutcome, ApiError> {
        let hits = model.index.search(vector, params).await?;
        let hits = self.attach_rows(hits).await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        self.metrics
            .search_seconds
            .with_label_values(&[kind.as_str()])
            .observe(latency_ms / 1e3);
        let logged = store::log_search(
            &self.db,
            NewSearch {
                kind,
                query_text,
                result_count: hits.len() as i32,
                latency_ms,
            },
        )
        .await;
        if let Err(e) = logged {
            tracing::warn!(error = %e, "could not log a search");
        }
        Ok(SearchOutcome {
            hits,
            latency_ms,
            model: model.key.clone(),
        })
    }

    /// Files that sound like the text.
    pub async fn search_text(
        &self,
        text: &str,
        params: SearchParams,
    ) -> Result<SearchOutcome, ApiError> {
        let started = Instant::now();
        let _slot = self.search_slot()?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ApiError::BadRequest("the search text is empty".into()));
        }
        // The query is embedded by the model of the index it searches, even across a switch.
        let model = self.models.active();
        let vector = match model.texts.get(text) {
            Some(vector) => {
                self.metrics.text_cache.with_label_values(&["hit"]).inc();
                vector
            }
            None => {
                self.metrics.text_cache.with_label_values(&["miss"]).inc();
                let vector: Arc<[f32]> = model
                    .embedder
                    .embed_text(text.to_string())
                    .await
                    .map_err(embed_error)?
                    .into();
                model.texts.put(text, vector.clone());
                vector
            }
        };
        self.search_vector(
            &model,
            SearchKind::Text,
            Some(text.to_string()),
            &vector,
            params,
            started,
        )
        .await
    }

    /// Files that sound like a clip (the clip is not kept).
    pub async fn search_audio(
        self: &Arc<Self>,
        clip: StagedFile,
        params: SearchParams,
    ) -> Result<SearchOutcome, ApiError> {
        let started = Instant::now();
        let _slot = self.search_slot()?;
        let name = clip.original_name.clone();
        let model = self.models.active();
        let windows =
            crate::pipeline::embed_file_windows(self, &model.embedder, &clip.tmp_path).await?;
        drop(clip);
        let vectors: Vec<&[f32]> = windows.iter().map(|w| w.vector.as_slice()).collect();
        let vector = clap_model::mean_embedding(&vectors)
            .ok_or_else(|| ApiError::BadRequest(format!("{name}: the clip holds no audio")))?;
        self.search_vector(
            &model,
            SearchKind::Audio,
            Some(name),
            &vector,
            params,
            started,
        )
        .await
    }

    /// Files that sound like a file of the library (never itself).
    pub async fn search_similar(
        &self,
        id: Uuid,
        mut params: SearchParams,
    ) -> Result<SearchOutcome, ApiError> {
        let started = Instant::now();
        let _slot = self.search_slot()?;
        let row = self.get(id).await?;
        let model = self.models.active();
        let vector = model.index.file_vector(id).await?.ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{} is not indexed yet (status {}); try again when it is",
                row.original_name, row.status
            ))
        })?;
        params.exclude_file = Some(id);
        self.search_vector(
            &model,
            SearchKind::Similar,
            Some(id.to_string()),
            &vector,
            params,
            started,
        )
        .await
    }

    /// Called after vectors were written or deleted. (A Qdrant server optimises by itself:
    /// nothing to schedule, nothing pending.)
    pub(crate) fn index_changed(&self) {
        if !matches!(self.config.vector_store, VectorStore::Edge) {
            return;
        }
        self.metrics.index_writes_pending.inc();
        // One permit at most: changes while the maintenance task is busy fold into one.
        self.index_changes.notify_one();
    }

    /// Builds search graphs and vacuums deleted vectors (qdrant-edge does neither by itself).
    pub async fn optimize_index(&self) -> Result<(), ApiError> {
        let started = Instant::now();
        let pending = self.metrics.index_writes_pending.get();
        for index in self.models.indexes() {
            index.optimize().await?;
        }
        self.metrics.index_writes_pending.sub(pending);
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.index_optimize_seconds.observe(elapsed);
        tracing::debug!(elapsed_s = elapsed, "index optimised");
        Ok(())
    }

    /// Stops the workers (they give their files back to the queue), waits for
    /// them up to `grace`, and flushes the index.
    pub async fn shutdown(&self, workers: Vec<JoinHandle<()>>, grace: Duration) {
        self.shutdown.cancel();
        for token in self.active.lock().unwrap().values() {
            token.cancel();
        }
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "workers did not stop in time; their files are requeued at the next start"
            );
        }
        let maintenance = self.maintenance_task.lock().unwrap().take();
        if let Some(task) = maintenance {
            // It returns at the shutdown signal (an optimisation already running finishes
            // first: the flush would wait for its write lock anyway).
            let _ = task.await;
        }
        self.models.stop_task().await;
        for index in self.models.indexes() {
            if let Err(e) = index.flush().await {
                tracing::error!(error = %e, "flushing the index at shutdown failed");
            }
        }
        self.models.shutdown();
        // The last events (files given back) go out before the listener stops.
        self.events.flush().await;
        if let Some(relay) = self.relay.lock().unwrap().take() {
            for task in relay.tasks {
                task.abort();
            }
        }
        tracing::info!("library closed");
    }
}

/// Publishes a file's ADDED inside `txn`: other replicas hear it when the row they could claim
/// is committed, not before.
async fn announce_added(
    txn: &impl sea_orm::ConnectionTrait,
    row: &FileRow,
) -> Result<(), ApiError> {
    let event = FileEvent::from_row(FileEventKind::Added, row);
    store::notify(
        txn,
        cluster::EVENTS_CHANNEL,
        &cluster::event_payload(&event),
    )
    .await?;
    Ok(())
}

pub(crate) fn embed_error(e: EmbedError) -> ApiError {
    match e {
        EmbedError::Stopped => ApiError::ShuttingDown,
        EmbedError::Model(m) | EmbedError::Input(m) => ApiError::Embed(m.to_string()),
    }
}

/// Why a library could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {url}: {source}")]
    Database {
        url: String,
        source: store::StoreError,
    },
    #[error("{0} (is another `traum serve` or `traum ingest` using this data directory?)")]
    Index(traum_index::IndexError),
    #[error("{0}")]
    InUse(String),
    #[error("cannot use the Qdrant vector store: {0}")]
    Qdrant(traum_index::IndexError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// A claim owner that is the same for every run on this data directory, so a
/// restarted server takes back what its killed predecessor held.
fn owner_id(data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let mut id = format!("traum@{host}:{}", dir.display());
    if id.len() > 255 {
        let digest = crate::storage::hash_str(&id);
        id = format!("traum@{host}:{digest}");
        id.truncate(255);
    }
    id
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://data/traum.db"),
            "sqlite://data/traum.db"
        );
    }
}
