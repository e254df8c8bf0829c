//! Processing: queued → decoding → embedding → indexed (or failed).
//!
//! The database is the queue, shared by every process on it (see `entity::store::work`).
//! Each worker claims the oldest claimable file (a lease with its own token, renewed while
//! it works, so a dead worker's file is claimed again by anyone), decodes it on a blocking
//! thread that streams 10 s windows through a small bounded channel, sends every window to
//! the shared [`batcher`], and finally writes the file's vectors and marks it indexed. Every
//! write names the lease, so a worker that lost its file changes nothing; the final commit
//! runs under the library's commit lock, so a delete or reprocess in this process wins, and a
//! file deleted by another process meanwhile has its vectors removed again.
//!
//! How an attempt ends decides what happens next: a file that cannot be indexed fails with
//! its code; a passing failure (a connection, a full disk, the model or device failing)
//! queues the file again after a back-off, and the worker waits until the database and the
//! vector store answer before it claims more; a stopped worker gives its file (and the
//! attempt) back.

pub mod batcher;
pub mod maintenance;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::audio_file::{error_code, Model as FileRow};
use entity::store::{self, work, Claimed, Lease, MediaInfo};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use traum_audio::{window_starts, AudioError, Window};
use traum_index::{FileVectors, IndexError, WindowVector};
use uuid::Uuid;

use crate::error::{audio_error_code, code, ApiError};
use crate::events::{FileEvent, FileEventKind};
use crate::library::{embed_error, Library};
use batcher::{EmbedError, Embedder};

/// Starts `config.workers` workers. They stop when the library shuts down.
pub fn start_workers(library: &Arc<Library>) -> Vec<JoinHandle<()>> {
    (0..library.config.workers.max(1))
        .map(|n| tokio::spawn(worker_loop(library.clone(), n)))
        .collect()
}

async fn worker_loop(lib: Arc<Library>, n: usize) {
    tracing::debug!(worker = n, "worker started");
    let max_attempts = lib.config.max_attempts.max(1);
    loop {
        // Register for wake-ups before looking, so a file queued between the
        // look and the wait is not missed.
        let notified = lib.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if lib.shutdown.is_cancelled() {
            break;
        }
        // Files that used all their attempts end failed, not waiting forever.
        match work::fail_exhausted(&lib.db, max_attempts).await {
            Ok(rows) => {
                for row in rows {
                    lib.metrics
                        .files_processed
                        .with_label_values(&["failed"])
                        .inc();
                    lib.events
                        .send(FileEvent::from_row(FileEventKind::Status, &row));
                }
            }
            Err(e) => tracing::warn!(error = %e, "failing exhausted files failed"),
        }
        // Under the intake lock: a file is claimable only once its QUEUED event is out.
        let claimed = {
            let _intake = lib.intake_lock.lock().await;
            work::claim_next(&lib.db, &lib.owner, lib.config.lease, max_attempts).await
        };
        match claimed {
            Ok(Some(claimed)) => {
                if process(&lib, claimed).await == Ended::Passing {
                    wait_until_ready(&lib).await;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = lib.shutdown.cancelled() => break,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming work failed");
                wait_until_ready(&lib).await;
            }
        }
    }
    tracing::debug!(worker = n, "worker stopped");
}

/// After a passing failure: claim nothing more until the database and the vector store
/// answer (checked at growing intervals), so an outage does not use up every queued file's
/// attempts.
async fn wait_until_ready(lib: &Library) {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = lib.shutdown.cancelled() => return,
        }
        match lib.readiness().await {
            Ok(()) => return,
            Err(why) => tracing::info!(%why, "waiting before claiming more work"),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The back-off before a file that failed for a passing reason is claimed again, after its
/// `attempts`-th attempt: 5 s, 20 s, 80 s, …, at most 10 minutes.
pub fn retry_backoff(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 8) as u32 - 1;
    Duration::from_secs(5u64.saturating_mul(4u64.pow(exp))).min(Duration::from_secs(600))
}

/// How a file's processing ended.
#[derive(Clone)]
enum Outcome {
    Indexed(Box<FileRow>),
    /// The file's fault: it fails with this code.
    Failed {
        code: &'static str,
        message: String,
    },
    /// Not the file's fault (a connection, the disk, the model): try again later.
    Passing {
        code: &'static str,
        message: String,
    },
    /// Deleted, reprocessed, lease lost, or shutting down: leave the row to
    /// whoever changed it (shutdown releases it back to the queue).
    Abandoned(&'static str),
}

/// What the worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    /// A passing failure: wait until the stores answer.
    Passing,
}

/// Why processing stopped, by what went wrong.
fn classify(e: &ApiError) -> Outcome {
    use entity::store::StoreError;
    let message = e.to_string();
    match e {
        ApiError::ShuttingDown => Outcome::Abandoned("shutting down"),
        // A database that does not answer, an index that cannot be reached or written, a
        // full disk: the next attempt may well work.
        ApiError::Store(StoreError::Db(_)) | ApiError::StorageFull(_) => Outcome::Passing {
            code: e.code(),
            message,
        },
        ApiError::Index(
            IndexError::Unreachable { .. }
            | IndexError::Backend { .. }
            | IndexError::Task { .. }
            | IndexError::Closed { .. }
            | IndexError::Io { .. },
        ) => Outcome::Passing {
            code: code::INDEX_FAILED,
            message,
        },
        // The original could not be read (a storage mount away, a permission): passing.
        ApiError::Audio(a) if !is_file_fault(a) => Outcome::Passing {
            code: code::INTERNAL,
            message,
        },
        // A missing row is a database problem here, not the user's.
        ApiError::Store(_) => Outcome::Failed {
            code: error_code::INTERNAL,
            message,
        },
        other => Outcome::Failed {
            code: other.code(),
            message,
        },
    }
}

/// Removes a file from the active set however processing ends.
struct Active<'a>(&'a Library, Uuid);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.lock().unwrap().remove(&self.1);
    }
}

/// A test hook (debug builds only): `TRAUM_TEST_ABORT_ON=<text>` makes the process abort as
/// soon as it has claimed a file whose name contains the text, as a file that crashes the
/// process would. The tests of `--max-attempts` use it.
fn abort_if_asked(row: &FileRow) {
    if !cfg!(debug_assertions) {
        return;
    }
    if let Ok(pattern) = std::env::var("TRAUM_TEST_ABORT_ON") {
        if !pattern.is_empty() && row.original_name.contains(&pattern) {
            tracing::error!(id = %row.id, name = %row.original_name, "TRAUM_TEST_ABORT_ON: aborting");
            std::process::abort();
        }
    }
}

async fn process(lib: &Arc<Library>, claimed: Claimed) -> Ended {
    let Claimed { row, lease } = claimed;
    let id = row.id;
    let token = lib.shutdown.child_token();
    lib.active.lock().unwrap().insert(id, token.clone());
    let _active = Active(lib, id);
    let started = Instant::now();
    let waited = (chrono::Utc::now() - row.updated_at)
        .num_milliseconds()
        .max(0) as f64
        / 1e3;
    lib.metrics
        .stage_seconds
        .with_label_values(&["queued"])
        .observe(waited);
    tracing::info!(%id, name = %row.original_name, attempt = row.attempts, owner = %lib.owner, "processing");
    lib.events
        .send(FileEvent::from_row(FileEventKind::Status, &row));
    abort_if_asked(&row);

    let outcome = match run(lib, &row, &lease, &token).await {
        Ok(outcome) => outcome,
        Err(e) => classify(&e),
    };
    let total = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Indexed(row) => {
            lib.metrics
                .stage_seconds
                .with_label_values(&["total"])
                .observe(total);
            lib.metrics
                .files_processed
                .with_label_values(&["indexed"])
                .inc();
            tracing::info!(%id, windows = row.windows_total, secs = total, "indexed");
            lib.events
                .send(FileEvent::from_row(FileEventKind::Status, &row));
            Ended::Done
        }
        Outcome::Failed { code, message } => {
            tracing::warn!(%id, code, %message, "processing failed");
            let _commit = lib.commit_lock.lock().await;
            if token.is_cancelled() {
                release(lib, &lease).await;
                return Ended::Done;
            }
            match work::fail_attempt(&lib.db, &lease, code, &message).await {
                Ok(Some(row)) => {
                    lib.metrics
                        .files_processed
                        .with_label_values(&["failed"])
                        .inc();
                    lib.events
                        .send(FileEvent::from_row(FileEventKind::Status, &row));
                }
                Ok(None) => lost(lib, id),
                Err(e) => tracing::warn!(%id, error = %e, "could not record the failure"),
            }
            Ended::Done
        }
        Outcome::Passing { code, message } => {
            let backoff = retry_backoff(row.attempts);
            tracing::warn!(%id, code, %message, attempt = row.attempts, ?backoff, "processing failed for a passing reason; retrying later");
            lib.metrics
                .attempts_unfinished
                .with_label_values(&["retry"])
                .inc();
            match work::retry_later(&lib.db, &lease, code, &message, backoff).await {
                Ok(Some(row)) => lib
                    .events
                    .send(FileEvent::from_row(FileEventKind::Status, &row)),
                Ok(None) => lost(lib, id),
                // The database is what failed, probably: the lease runs out, and the
                // attempt stays counted.
                Err(e) => tracing::warn!(%id, error = %e, "could not queue the file again"),
            }
            Ended::Passing
        }
        Outcome::Abandoned(why) => {
            tracing::info!(%id, why, "processing stopped");
            release(lib, &lease).await;
            Ended::Done
        }
    }
}

fn lost(lib: &Library, id: Uuid) {
    tracing::info!(%id, "the file was deleted, reprocessed or taken over meanwhile");
    lib.metrics
        .attempts_unfinished
        .with_label_values(&["lost"])
        .inc();
}

/// Gives the file back to the queue if this worker still holds it (shutdown);
/// a deleted or reprocessed file is not held any more, so nothing happens.
async fn release(lib: &Library, lease: &Lease) {
    match work::release(&lib.db, lease).await {
        Ok(Some(row)) => {
            lib.metrics
                .attempts_unfinished
                .with_label_values(&["released"])
                .inc();
            lib.events
                .send(FileEvent::from_row(FileEventKind::Status, &row));
        }
        Ok(None) => lost(lib, lease.file_id),
        Err(e) => tracing::warn!(id = %lease.file_id, error = %e, "could not release the file"),
    }
}

/// Windows of a 48 kHz stream of `n` samples (for the progress total).
fn expected_windows(info: &traum_audio::AudioInfo, window: usize, hop: usize) -> Option<i32> {
    let frames = info.n_frames?;
    let n = (frames as u128 * traum_audio::MODEL_SAMPLE_RATE as u128)
        .div_ceil(info.sample_rate.max(1) as u128) as u64;
    Some(window_starts(n, window as u64, hop as u64).len() as i32)
}

fn hop_samples(lib: &Library, info: &clap_model::EmbedderInfo) -> (usize, usize) {
    let window = info.window_samples;
    let hop = ((lib.config.hop_s * f64::from(info.sample_rate)).round() as usize).clamp(1, window);
    (window, hop)
}

async fn run(
    lib: &Arc<Library>,
    row: &FileRow,
    lease: &Lease,
    token: &CancellationToken,
) -> Result<Outcome, ApiError> {
    let id = row.id;
    // The model that embeds the file is the one whose index gets it (see the commit).
    let model = lib.models.active();
    // A folder's file may have moved since it was queued: read it where it is now.
    let path = lib.readable_path(row).await?;
    let progress = |done: i32, total: i32| {
        lib.events.send(FileEvent::progress(id, done, total));
    };
    let mut on_open = |info: &traum_audio::AudioInfo, total: Option<i32>| {
        let lib = lib.clone();
        let lease = *lease;
        let media = MediaInfo {
            codec: Some(info.codec.clone()),
            duration_s: info.duration_s,
            sample_rate: Some(info.sample_rate as i32),
            channels: Some(i32::from(info.channels)),
        };
        async move {
            let Some(row) =
                work::start_embedding(&lib.db, &lease, &media, total.unwrap_or(0)).await?
            else {
                return Ok(false);
            };
            lib.events
                .send(FileEvent::from_row(FileEventKind::Status, &row));
            Ok::<_, ApiError>(true)
        }
    };
    let limits = StreamLimits {
        claim: Some(*lease),
        max_seconds: None,
    };
    let decoded = match stream_windows(
        lib,
        &model.embedder,
        &path,
        token,
        limits,
        &mut on_open,
        &progress,
    )
    .await
    {
        Ok(Some(w)) => w,
        Ok(None) => return Ok(Outcome::Abandoned("cancelled")),
        Err(StreamError::Audio(e)) if is_file_fault(&e) => {
            return Ok(Outcome::Failed {
                code: audio_error_code(&e),
                message: audio_message(&e, &row.original_name),
            })
        }
        Err(StreamError::Audio(e)) => return Err(ApiError::Audio(e)),
        Err(StreamError::Embed(EmbedError::Input(m))) => {
            return Ok(Outcome::Failed {
                code: code::EMBED_FAILED,
                message: format!("{}: the model refused this audio: {m}", row.original_name),
            })
        }
        Err(StreamError::Embed(EmbedError::Model(m))) => {
            return Ok(Outcome::Passing {
                code: code::EMBED_FAILED,
                message: format!("the model failed: {m}"),
            })
        }
        Err(StreamError::Embed(EmbedError::Stopped)) => {
            return Ok(Outcome::Abandoned("shutting down"))
        }
        Err(StreamError::Api(e)) => return Err(e),
        Err(StreamError::LeaseLost) => return Ok(Outcome::Abandoned("lease lost")),
        Err(StreamError::TooLong { .. }) => unreachable!("library files have no length limit"),
    };
    // From here this file heads for the commit queue: a group forming there waits for it.
    let approaching = Approaching::new(lib);
    let Decoded {
        windows,
        duration_s,
        container,
    } = decoded;
    if windows.is_empty() {
        return Ok(Outcome::Failed {
            code: code::EMPTY,
            message: format!("{}: the file holds no audio", row.original_name),
        });
    }
    let embedded = Instant::now();
    let vectors: Vec<&[f32]> = windows.iter().map(|w| w.vector.as_slice()).collect();
    let file_vector = clap_model::mean_embedding(&vectors)
        .ok_or_else(|| ApiError::Internal("no windows to average".into()))?;
    // The decoded length, not the header's claim, is what the windows cover: the API, the
    // index and duration filters all use it.
    let container = container.map(|c| c.name()).filter(|c| *c != row.container);
    let Some(current) = work::save_decoded(&lib.db, lease, duration_s, container).await? else {
        return Ok(Outcome::Abandoned("lease lost"));
    };
    let n = windows.len() as i32;
    let vectors = FileVectors {
        file_id: id,
        duration_s,
        format: current.container.clone(),
        created_at: current.created_at.timestamp(),
        vector: file_vector,
        windows,
    };
    commit(
        lib,
        PendingCommit {
            lease: *lease,
            model,
            vectors,
            windows: n,
            token: token.clone(),
            embedded,
        },
        approaching,
    )
    .await
}

/// A file whose vectors are ready: they go to the index, then its row is marked indexed.
struct PendingCommit {
    lease: Lease,
    model: Arc<crate::models::ModelVersion>,
    vectors: FileVectors,
    windows: i32,
    token: CancellationToken,
    embedded: Instant,
}

/// A [`PendingCommit`] in the library's commit queue, with where its outcome goes.
pub(crate) struct QueuedCommit {
    file: PendingCommit,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// Group commit. The file joins the library's commit queue and its worker takes the commit
/// lock; whoever holds the lock next commits everything queued by then as one group: one
/// index write and one flush for all of them (qdrant-edge syncs every segment file on a
/// flush, ~100 `msync` calls however few vectors changed), then each row. The files of one
/// forward pass finish together and mostly commit together.
///
/// In this process nobody deletes or requeues a file while the lock is held; another process
/// may, which each row's conditional commit finds out.
async fn commit(
    lib: &Library,
    file: PendingCommit,
    approaching: Approaching<'_>,
) -> Result<Outcome, ApiError> {
    let (reply, outcome) = oneshot::channel();
    // Its model's batcher delivers the rest of its pass (an Arc: no Embedder clone).
    let model = file.model.clone();
    lock_queue(lib).push(QueuedCommit { file, reply });
    drop(approaching);
    {
        let _commit = lib.commit_lock.lock().await;
        // Ours may have gone with the group before: then there is nothing to wait for.
        if !lock_queue(lib).is_empty() {
            await_approaching(lib, &model.embedder).await;
        }
        let group = std::mem::take(&mut *lock_queue(lib));
        if !group.is_empty() {
            commit_group(lib, group).await;
        }
    }
    // Ours was in the group of whoever took the lock first (perhaps us).
    outcome.await.unwrap_or(Err(ApiError::ShuttingDown))
}

/// How long a commit group waits at most for files on their way to it.
const COMMIT_LINGER: Duration = Duration::from_millis(20);

/// Counts a file between its last embedding and its place in the commit queue (or its
/// turning back: a lost lease, an empty file), in [`Library::approaching_commit`].
struct Approaching<'a>(&'a Library);

impl<'a> Approaching<'a> {
    fn new(lib: &'a Library) -> Self {
        lib.approaching_commit.fetch_add(1, Ordering::AcqRel);
        Self(lib)
    }
}

impl Drop for Approaching<'_> {
    fn drop(&mut self) {
        self.0.approaching_commit.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits, up to [`COMMIT_LINGER`], while the results of a forward pass are still on their
/// way to the commit queue: delivered by the batcher and not yet taken, or taken and not yet
/// queued. A pass's files get their vectors together but reach the queue milliseconds apart
/// (each first saves its decoded length, one database write after another): without the
/// wait the first went alone and the rest made a second group, two index writes and flushes
/// per pass where one does (qdrant-edge syncs every segment file on a flush, ~100 `msync`s).
async fn await_approaching(lib: &Library, embedder: &Embedder) {
    let deadline = Instant::now() + COMMIT_LINGER;
    while (lib.approaching_commit.load(Ordering::Acquire) > 0 || embedder.delivering() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn lock_queue(lib: &Library) -> std::sync::MutexGuard<'_, Vec<QueuedCommit>> {
    // A panic while the queue was locked leaves a valid Vec.
    lib.commit_queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Commits a group of files. Call with the commit lock held.
async fn commit_group(lib: &Library, group: Vec<QueuedCommit>) {
    let active = lib.models.active();
    let mut admitted = Vec::with_capacity(group.len());
    for QueuedCommit { file, reply } in group {
        if reply.is_closed() {
            // Its worker is gone (shut down mid-commit): as before group commits, a file
            // whose worker stopped is not committed; its lease runs out.
            continue;
        }
        let refused = if file.token.is_cancelled() {
            Ok(Some("cancelled"))
        } else {
            match work::renew(&lib.db, &file.lease, lib.config.lease).await {
                Ok(false) => Ok(Some("lease lost")),
                Err(e) => Err(ApiError::from(e)),
                // Embedded with the model the library just switched from: queued again, for
                // the new.
                Ok(true) if !Arc::ptr_eq(&file.model, &active) => {
                    Ok(Some("the library switched models"))
                }
                Ok(true) => Ok(None),
            }
        };
        match refused {
            Ok(None) => admitted.push((file, reply)),
            Ok(Some(why)) => {
                let _ = reply.send(Ok(Outcome::Abandoned(why)));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if admitted.is_empty() {
        return;
    }
    let (vectors, files): (Vec<_>, Vec<_>) = admitted
        .into_iter()
        .map(|(file, reply)| {
            let PendingCommit {
                lease,
                vectors,
                windows,
                embedded,
                ..
            } = file;
            (vectors, (lease, windows, embedded, reply))
        })
        .unzip();
    if let Err(e) = active.index.upsert_files(vectors).await {
        // The group's write failed as a whole: each of its files ends alike.
        let outcome = classify(&ApiError::from(e));
        for (.., reply) in files {
            let _ = reply.send(Ok(outcome.clone()));
        }
        return;
    }
    for (lease, windows, embedded, reply) in files {
        lib.index_changed();
        lib.models.file_indexed();
        lib.metrics
            .stage_seconds
            .with_label_values(&["index"])
            .observe(embedded.elapsed().as_secs_f64());
        let outcome = match work::commit_indexed(&lib.db, &lease, &active.model_id, windows).await {
            Ok(Some(row)) => Ok(Outcome::Indexed(Box::new(row))),
            Ok(None) => lost_at_commit(lib, &active, lease.file_id).await,
            Err(e) => Err(ApiError::from(e)),
        };
        let _ = reply.send(outcome);
    }
}

/// Lost between the upsert and the commit: deleted (its vectors must not stay) or
/// reprocessed (the next attempt replaces them) by another process.
async fn lost_at_commit(
    lib: &Library,
    model: &crate::models::ModelVersion,
    id: Uuid,
) -> Result<Outcome, ApiError> {
    if store::get(&lib.db, id).await?.is_none() {
        tracing::info!(%id, "deleted while its vectors were written; removing them");
        model.index.delete_file(id).await?;
        lib.index_changed();
    }
    Ok(Outcome::Abandoned("lease lost at commit"))
}

/// Whether a decoding error is the file's (damaged, unsupported) rather than the storage's.
fn is_file_fault(e: &AudioError) -> bool {
    !matches!(
        e.kind(),
        traum_audio::ErrorKind::NotFound
            | traum_audio::ErrorKind::PermissionDenied
            | traum_audio::ErrorKind::Io
    )
}

fn audio_message(e: &AudioError, name: &str) -> String {
    let text = e.to_string();
    // The decoder names the stored path (a hash); people know the upload's name.
    format!("{name}: {text}")
}

enum StreamError {
    Audio(AudioError),
    Embed(EmbedError),
    Api(ApiError),
    LeaseLost,
    /// Longer than `StreamLimits::max_seconds`.
    TooLong {
        limit_s: f64,
    },
}

/// Who a stream of windows is for.
#[derive(Debug, Clone, Copy)]
struct StreamLimits {
    /// The library file this worker holds (its lease is renewed, its progress saved, its
    /// stage times recorded); `None` for a search clip.
    claim: Option<Lease>,
    /// Refuse audio longer than this (search clips); decoding stops as soon as it is passed.
    max_seconds: Option<f64>,
}

/// A file's windows and what decoding them found.
pub(crate) struct Decoded {
    pub(crate) windows: Vec<WindowVector>,
    /// Seconds of audio decoded: the file's real length.
    pub(crate) duration_s: f64,
    /// The container, as the decoder saw it.
    pub(crate) container: Option<traum_audio::Container>,
}

impl From<ApiError> for StreamError {
    fn from(e: ApiError) -> Self {
        StreamError::Api(e)
    }
}

impl From<entity::store::StoreError> for StreamError {
    fn from(e: entity::store::StoreError) -> Self {
        StreamError::Api(e.into())
    }
}

/// Decodes `path` on a blocking thread and embeds every window through the
/// batcher, keeping up to one batch of windows in flight. `Ok(None)`: cancelled.
///
/// `on_open` runs once the container is open (with the expected window
/// count) and says whether to go on (`false`: the lease was lost); `progress` after each
/// window.
#[allow(clippy::too_many_arguments)] // each says who the stream is for
async fn stream_windows<F, Fut>(
    lib: &Arc<Library>,
    embedder: &Embedder,
    path: &Path,
    token: &CancellationToken,
    limits: StreamLimits,
    on_open: &mut F,
    progress: &(dyn Fn(i32, i32) + Sync),
) -> Result<Option<Decoded>, StreamError>
where
    F: FnMut(&traum_audio::AudioInfo, Option<i32>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ApiError>>,
{
    let opened = Instant::now();
    let (window_len, hop_len) = hop_samples(lib, embedder.info());
    let rate = f64::from(embedder.info().sample_rate);
    let path = path.to_path_buf();
    let stream = tokio::task::spawn_blocking(move || {
        traum_audio::windows_from_file(&path, window_len, hop_len)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("decoder task failed: {e}")))?
    .map_err(StreamError::Audio)?;
    let info = stream.info().clone();
    let claim = limits.claim;
    if let (Some(limit_s), Some(declared)) = (limits.max_seconds, info.duration_s) {
        if declared > limit_s + 0.5 {
            return Err(StreamError::TooLong { limit_s });
        }
    }
    let max_samples = limits.max_seconds.map(|s| ((s + 0.5) * rate) as u64);
    if claim.is_some() {
        lib.metrics
            .stage_seconds
            .with_label_values(&["decode_open"])
            .observe(opened.elapsed().as_secs_f64());
    }
    let mut total = expected_windows(&info, window_len, hop_len);
    if !on_open(&info, total).await? {
        return Err(StreamError::LeaseLost);
    }

    // The decoder thread stays at most a couple of windows ahead. It computes each
    // window's features too: the front end then runs beside the forward pass.
    let (tx, mut rx) = mpsc::channel::<Result<PreparedWindow, AudioError>>(2);
    let container = traum_audio::Container::from_name(&info.container);
    let front_end = embedder.clone();
    let decoder = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        for item in stream.by_ref() {
            let item = item.map(|w: Window| PreparedWindow {
                start_sample: w.start_sample,
                len: w.samples.len(),
                features: front_end.window_features(&w.samples),
            });
            if tx.blocking_send(item).is_err() {
                break; // cancelled
            }
        }
        stream.decoded_seconds()
    });
    let in_flight_max = lib.config.batcher.max_batch.max(1);
    let mut in_flight = FuturesOrdered::new();
    let mut out: Vec<WindowVector> = Vec::new();
    let mut decoded_all = false;
    let mut renew = tokio::time::interval(lib.config.lease / 3);
    renew.tick().await;
    let mut last_saved = Instant::now();
    let embedding = Instant::now();
    let result = loop {
        if decoded_all && in_flight.is_empty() {
            break Ok(Some(()));
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => break Ok(None),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (start_sample, len, vector): (u64, usize, Result<Vec<f32>, _>) = done;
                let vector = match vector {
                    Ok(v) => v,
                    Err(e) => break Err(StreamError::Embed(e)),
                };
                let start_s = start_sample as f64 / rate;
                out.push(WindowVector {
                    start_s,
                    end_s: start_s + len as f64 / rate,
                    vector,
                });
                let done = out.len() as i32;
                let shown_total = total.map_or(done, |t| t.max(done));
                progress(done, shown_total);
                let Some(lease) = claim else { continue };
                // The last window's commit follows at once and writes the row anyway.
                let last = decoded_all && in_flight.is_empty();
                if !last && !token.is_cancelled() && last_saved.elapsed() > Duration::from_millis(500) {
                    last_saved = Instant::now();
                    match work::save_progress(&lib.db, &lease, done, shown_total).await {
                        Ok(true) => {}
                        Ok(false) => break Err(StreamError::LeaseLost),
                        Err(e) => tracing::debug!(id = %lease.file_id, error = %e, "progress not saved"),
                    }
                }
            }
            item = rx.recv(), if !decoded_all && in_flight.len() < in_flight_max => {
                match item {
                    Some(Ok(window)) => {
                        let end = window.start_sample + window.len as u64;
                        if let (Some(limit_s), Some(max)) = (limits.max_seconds, max_samples) {
                            if end > max {
                                break Err(StreamError::TooLong { limit_s });
                            }
                        }
                        let features = match window.features {
                            Ok(f) => f,
                            Err(e) => break Err(StreamError::Embed(e)),
                        };
                        let embedder = embedder.clone();
                        let (start_sample, len) = (window.start_sample, window.len);
                        in_flight.push_back(async move {
                            let v = embedder.embed_features(features).await;
                            (start_sample, len, v)
                        });
                    }
                    Some(Err(e)) => break Err(StreamError::Audio(e)),
                    None => {
                        decoded_all = true;
                        total = Some(out.len() as i32 + in_flight.len() as i32);
                    }
                }
            }
            _ = renew.tick(), if claim.is_some() => {
                let lease = claim.expect("guarded");
                match work::renew(&lib.db, &lease, lib.config.lease).await {
                    Ok(true) => {}
                    Ok(false) => break Err(StreamError::LeaseLost),
                    Err(e) => tracing::warn!(id = %lease.file_id, error = %e, "lease renewal failed"),
                }
            }
        }
    };
    drop(rx);
    let decoded_s = decoder.await.ok();
    if claim.is_some() {
        lib.metrics
            .stage_seconds
            .with_label_values(&["embed"])
            .observe(embedding.elapsed().as_secs_f64());
    }
    result.map(|finished| {
        finished.map(|()| Decoded {
            duration_s: decoded_s.unwrap_or_else(|| out.last().map(|w| w.end_s).unwrap_or(0.0)),
            windows: out,
            container,
        })
    })
}

/// A decoded window as the decoder thread hands it on: where it is, and its features
/// (or why they could not be made).
struct PreparedWindow {
    start_sample: u64,
    len: usize,
    features: Result<Vec<f32>, EmbedError>,
}

/// Every window of a file no worker holds (a search clip, or a reindex), embedded with
/// `embedder`; stops at the shutdown.
async fn unclaimed_windows(
    lib: &Arc<Library>,
    embedder: &Embedder,
    path: &Path,
    max_seconds: Option<f64>,
) -> Result<Option<Decoded>, StreamError> {
    let mut on_open = |_: &traum_audio::AudioInfo, _: Option<i32>| async { Ok(true) };
    let limits = StreamLimits {
        claim: None,
        max_seconds,
    };
    stream_windows(
        lib,
        embedder,
        path,
        &lib.shutdown,
        limits,
        &mut on_open,
        &|_, _| {},
    )
    .await
}

/// Embeds every window of a file that is not in the library (a search clip).
pub(crate) async fn embed_file_windows(
    lib: &Arc<Library>,
    embedder: &Embedder,
    path: &Path,
) -> Result<Vec<WindowVector>, ApiError> {
    match unclaimed_windows(lib, embedder, path, Some(lib.config.max_clip_s)).await {
        Ok(Some(d)) => Ok(d.windows),
        Ok(None) => Err(ApiError::ShuttingDown),
        Err(StreamError::Audio(e)) => Err(ApiError::Audio(e)),
        Err(StreamError::Embed(e)) => Err(embed_error(e)),
        Err(StreamError::Api(e)) => Err(e),
        Err(StreamError::LeaseLost) => Err(ApiError::Internal("lease lost".into())),
        Err(StreamError::TooLong { limit_s }) => Err(ApiError::ClipTooLong { limit_s }),
    }
}

/// Why a library file could not be embedded again (with another model).
pub(crate) enum ReembedError {
    /// The file's fault (damaged, gone, refused by the model): this file alone fails.
    File(String),
    /// Shutting down.
    Stopped,
    /// Something else (the database, the storage): worth retrying.
    Other(ApiError),
}

/// Embeds every window of a library file with `embedder` (a reindex): `Ok(None)` when
/// cancelled by the shutdown.
pub(crate) async fn embed_library_file(
    lib: &Arc<Library>,
    embedder: &Embedder,
    path: &Path,
    row: &FileRow,
) -> Result<Option<Decoded>, ReembedError> {
    match unclaimed_windows(lib, embedder, path, None).await {
        Ok(decoded) => Ok(decoded),
        Err(StreamError::Audio(e)) if is_file_fault(&e) => {
            Err(ReembedError::File(audio_message(&e, &row.original_name)))
        }
        Err(StreamError::Audio(e)) => Err(ReembedError::Other(ApiError::Audio(e))),
        Err(StreamError::Embed(EmbedError::Input(m))) => Err(ReembedError::File(format!(
            "{}: the model refused this audio: {m}",
            row.original_name
        ))),
        Err(StreamError::Embed(EmbedError::Stopped)) => Err(ReembedError::Stopped),
        Err(StreamError::Embed(e)) => Err(ReembedError::Other(embed_error(e))),
        Err(StreamError::Api(e)) => Err(ReembedError::Other(e)),
        Err(StreamError::LeaseLost) | Err(StreamError::TooLong { .. }) => {
            unreachable!("a reindex holds no lease and has no length limit")
        }
    }
}
