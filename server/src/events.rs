//! Processing events: every state change and progress step of a file goes to
//! one broadcast channel, which GraphQL subscriptions (and `traum ingest`'s
//! progress bar) read.
//!
//! With PostgreSQL the channel spans the replicas: [`EventBus::send`] hands the event to
//! [`crate::cluster`], which publishes it as a notification, and every replica's listener
//! (this one's too) puts what it hears on its own channel. So all subscribers, wherever they
//! are connected, see one order of events.

use async_graphql::{Enum, SimpleObject, ID};
use chrono::{DateTime, Utc};
use entity::audio_file::{FileStatus, Model};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::cluster::Outgoing;

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
pub enum FileEventKind {
    /// Current state, sent first by a subscription to given files.
    Snapshot,
    /// Uploaded (or reprocessing asked for): queued.
    Added,
    /// Moved to another stage.
    Status,
    /// More windows embedded.
    Progress,
    /// Deleted: gone from the library.
    Deleted,
    /// The first event of every subscription: from here on nothing is missed (an upload
    /// sent after this event has arrived has all its events delivered). `fileId` is the nil
    /// UUID.
    Subscribed,
    /// This subscriber may have missed events: it fell behind (`missed` says how many were
    /// dropped), or its replica lost its event connection to the database for a while
    /// (`missed` is null: unknown). `fileEvents` follows with a fresh SNAPSHOT of each of its
    /// files; `libraryEvents` subscribers should refetch what they show. `fileId` is the nil
    /// UUID.
    Lagged,
    /// A folder scan advanced, or ended: `scan` says where it stands. `fileId` is the nil
    /// UUID.
    Scan,
    /// A reindex with another model advanced, completed or switched: `reindex` says where
    /// it stands. `fileId` is the nil UUID.
    Reindex,
}

/// Where a model index stands, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[graphql(name = "ModelIndexState")]
pub enum ApiModelState {
    /// Serving search; new files are embedded with this model.
    Active,
    /// Being filled by a background reindex (or paused while the server runs another model).
    Building,
    /// Complete; `switchModel` makes it active.
    Ready,
    /// Formerly active, kept until `dropModel`.
    Retired,
}

impl From<entity::model_index::ModelState> for ApiModelState {
    fn from(s: entity::model_index::ModelState) -> Self {
        use entity::model_index::ModelState as S;
        match s {
            S::Active => ApiModelState::Active,
            S::Building => ApiModelState::Building,
            S::Ready => ApiModelState::Ready,
            S::Retired => ApiModelState::Retired,
        }
    }
}

/// Where a reindex with another model stands (the `reindex` of a REINDEX event).
#[derive(Debug, Clone, PartialEq, SimpleObject, Serialize, Deserialize)]
pub struct ModelReindex {
    /// The new model's index key (`<model>@<weights digest>`).
    pub key: String,
    /// What the new model was loaded from.
    pub model_id: String,
    /// BUILDING while files are embedded, READY when complete (waiting for `switchModel`),
    /// ACTIVE once switched.
    pub state: ApiModelState,
    /// Files embedded with the new model so far.
    pub files_done: i64,
    /// Files the new model could not embed.
    pub files_failed: i64,
    /// Indexed files of the library.
    pub files_total: i64,
    pub error: Option<String>,
}

impl From<crate::models::ReindexProgress> for ModelReindex {
    fn from(p: crate::models::ReindexProgress) -> Self {
        Self {
            key: p.key,
            model_id: p.model_id,
            state: p.state.into(),
            files_done: p.done,
            files_failed: p.failed,
            files_total: p.total,
            error: p.error,
        }
    }
}

/// Where a folder source's scanning stands (the `scan` of a SCAN event).
#[derive(Debug, Clone, PartialEq, SimpleObject, Serialize, Deserialize)]
pub struct SourceScan {
    pub source_id: ID,
    pub state: ApiSourceState,
    /// Audio files found so far.
    pub found: i64,
    /// Files that were not in the library at their path.
    pub new: i64,
    /// Paths whose content changed.
    pub changed: i64,
    /// Files moved or renamed (recognised by content; not embedded again).
    pub moved: i64,
    /// Paths that no longer exist.
    pub gone: i64,
    /// Files or folders that could not be read (symbolic link loops, permissions).
    pub failed: i64,
    /// Why the folder is unavailable, or what could not be read.
    pub error: Option<String>,
}

impl SourceScan {
    pub fn from_row(row: &entity::library_source::Model) -> Self {
        Self {
            source_id: ID(row.id.to_string()),
            state: row.state.into(),
            found: row.found,
            new: row.new,
            changed: row.changed,
            moved: row.moved,
            gone: row.gone,
            failed: row.failed,
            error: row.last_error.clone(),
        }
    }
}

/// Where a source stands, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[graphql(name = "SourceState")]
pub enum ApiSourceState {
    /// Not scanning; the library matched the folder when it was last scanned.
    Idle,
    /// Being scanned.
    Scanning,
    /// Missing, unreadable or empty (an unplugged disk): its files are kept untouched.
    Unavailable,
    /// Removed with its files kept.
    Detached,
}

impl From<entity::library_source::SourceState> for ApiSourceState {
    fn from(s: entity::library_source::SourceState) -> Self {
        use entity::library_source::SourceState as S;
        match s {
            S::Idle => ApiSourceState::Idle,
            S::Scanning => ApiSourceState::Scanning,
            S::Unavailable => ApiSourceState::Unavailable,
            S::Detached => ApiSourceState::Detached,
        }
    }
}

/// Processing state of a file, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[graphql(name = "FileStatus")]
pub enum ApiFileStatus {
    Queued,
    Decoding,
    Embedding,
    Indexed,
    Failed,
}

impl From<FileStatus> for ApiFileStatus {
    fn from(s: FileStatus) -> Self {
        match s {
            FileStatus::Queued => ApiFileStatus::Queued,
            FileStatus::Decoding => ApiFileStatus::Decoding,
            FileStatus::Embedding => ApiFileStatus::Embedding,
            FileStatus::Indexed => ApiFileStatus::Indexed,
            FileStatus::Failed => ApiFileStatus::Failed,
        }
    }
}

impl From<ApiFileStatus> for FileStatus {
    fn from(s: ApiFileStatus) -> Self {
        match s {
            ApiFileStatus::Queued => FileStatus::Queued,
            ApiFileStatus::Decoding => FileStatus::Decoding,
            ApiFileStatus::Embedding => FileStatus::Embedding,
            ApiFileStatus::Indexed => FileStatus::Indexed,
            ApiFileStatus::Failed => FileStatus::Failed,
        }
    }
}

/// One step in a file's processing.
#[derive(Debug, Clone, PartialEq, SimpleObject, Serialize, Deserialize)]
pub struct FileEvent {
    pub file_id: ID,
    pub kind: FileEventKind,
    pub status: ApiFileStatus,
    /// Windows embedded so far.
    pub windows_done: i32,
    /// Windows the file has (an estimate until decoding ends, when the
    /// container does not state its length).
    pub windows_total: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Events dropped before a LAGGED event (null when unknown); null on other events.
    pub missed: Option<i32>,
    /// On SCAN events: the folder scan's progress; null on others.
    pub scan: Option<SourceScan>,
    /// On REINDEX events: the reindex's progress; null on others.
    pub reindex: Option<ModelReindex>,
    pub at: DateTime<Utc>,
}

impl FileEvent {
    pub fn from_row(kind: FileEventKind, row: &Model) -> Self {
        Self {
            file_id: ID(row.id.to_string()),
            kind,
            status: row.status.into(),
            windows_done: row.windows_done,
            windows_total: row.windows_total,
            error_code: row.error_code.clone(),
            error_message: row.error_message.clone(),
            missed: None,
            scan: None,
            reindex: None,
            at: Utc::now(),
        }
    }

    pub fn progress(id: Uuid, done: i32, total: i32) -> Self {
        Self {
            file_id: ID(id.to_string()),
            kind: FileEventKind::Progress,
            status: ApiFileStatus::Embedding,
            windows_done: done,
            windows_total: total,
            error_code: None,
            error_message: None,
            missed: None,
            scan: None,
            reindex: None,
            at: Utc::now(),
        }
    }

    /// A SUBSCRIBED or LAGGED marker (about the stream, not a file).
    pub fn marker(kind: FileEventKind, missed: Option<u64>) -> Self {
        Self {
            file_id: ID(Uuid::nil().to_string()),
            kind,
            status: ApiFileStatus::Queued,
            windows_done: 0,
            windows_total: 0,
            error_code: None,
            error_message: None,
            missed: missed.map(|n| n.min(i32::MAX as u64) as i32),
            scan: None,
            reindex: None,
            at: Utc::now(),
        }
    }

    /// A SCAN event.
    pub fn scan_progress(scan: SourceScan) -> Self {
        Self {
            scan: Some(scan),
            ..Self::marker(FileEventKind::Scan, None)
        }
    }

    /// A REINDEX event.
    pub fn reindex_progress(reindex: ModelReindex) -> Self {
        Self {
            reindex: Some(reindex),
            ..Self::marker(FileEventKind::Reindex, None)
        }
    }

    pub fn deleted(row: &Model) -> Self {
        Self::from_row(FileEventKind::Deleted, row)
    }

    /// The last event a file gets unless it is reprocessed.
    pub fn is_terminal(&self) -> bool {
        self.kind == FileEventKind::Deleted
            || matches!(self.status, ApiFileStatus::Indexed | ApiFileStatus::Failed)
    }
}

/// The library's event channel. Slow subscribers lose the oldest events
/// (they get a LAGGED event saying how many) rather than holding memory.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<FileEvent>,
    /// Set with PostgreSQL: events go out to every replica (this one included) from here.
    outbox: Option<mpsc::UnboundedSender<Outgoing>>,
}

impl EventBus {
    /// A channel for this process alone.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            outbox: None,
        }
    }

    /// A channel whose events travel through `outbox` (see [`crate::cluster`]), which
    /// delivers them back with [`EventBus::deliver`].
    pub fn relayed(capacity: usize, outbox: mpsc::UnboundedSender<Outgoing>) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            outbox: Some(outbox),
        }
    }

    pub fn send(&self, event: FileEvent) {
        match &self.outbox {
            Some(outbox) => {
                // Closed only once the library shut down: nobody listens any more.
                let _ = outbox.send(Outgoing::Event(Box::new(event)));
            }
            None => self.deliver(event),
        }
    }

    /// Puts an event on this process's channel (what the relay heard).
    pub fn deliver(&self, event: FileEvent) {
        // No subscribers is fine.
        let _ = self.tx.send(event);
    }

    /// Waits until every event sent so far is published (a no-op without a relay), so that
    /// an event published another way afterwards (in a transaction) comes after them.
    pub async fn flush(&self) {
        if let Some(outbox) = &self.outbox {
            let (done, published) = tokio::sync::oneshot::channel();
            if outbox.send(Outgoing::Flush(done)).is_ok() {
                let _ = published.await;
            }
        }
    }

    /// Whether events cross processes.
    pub fn is_relayed(&self) -> bool {
        self.outbox.is_some()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FileEvent> {
        self.tx.subscribe()
    }
}
