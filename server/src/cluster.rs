//! Replicas on one PostgreSQL: what one process must tell the others travels as PostgreSQL
//! notifications (`NOTIFY`), heard by a listener in every process, the sender included.
//!
//! - `traum_events`: every file event ([`crate::events`]). Subscribers on any replica see
//!   every file's events, in the order the database delivered them. Progress is thinned to
//!   what a person can see (one event per file per [`PROGRESS_INTERVAL`], and the last).
//! - `traum_work`: a file was queued; idle workers everywhere look for it (they also look
//!   every few seconds, so a lost wake-up only delays).
//! - `traum_cancel`: a file was deleted or reprocessed; whichever process works on it stops.
//!
//! When the listener's connection is lost (a restart, a failover, `pg_terminate_backend`),
//! notifications sent meanwhile are gone. The listener reconnects and then puts a LAGGED
//! event (missed: unknown) on the local channel, so every subscriber refetches or gets fresh
//! snapshots: never a silent gap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entity::store;
use sea_orm::sqlx::postgres::{PgListener, PgPool};
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{EventBus, FileEvent, FileEventKind};
use crate::metrics::Metrics;

pub const EVENTS_CHANNEL: &str = "traum_events";
pub const WORK_CHANNEL: &str = "traum_work";
pub const CANCEL_CHANNEL: &str = "traum_cancel";

/// Least time between two progress events of one file that are published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// PostgreSQL refuses notification payloads of 8000 bytes or more; error messages are cut
/// well below that.
const MAX_MESSAGE_CHARS: usize = 2000;

/// Files being processed in this process, by id: cancelling the token stops the worker.
pub type ActiveFiles = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

/// What this process publishes, in order.
#[derive(Debug)]
pub enum Outgoing {
    Event(Box<FileEvent>),
    Work,
    Cancel(Uuid),
    /// Answered once everything before it is published.
    Flush(oneshot::Sender<()>),
}

/// What the listener acts on.
#[derive(Clone)]
pub struct Hearers {
    pub events: EventBus,
    pub work: Arc<Notify>,
    pub active: ActiveFiles,
    pub metrics: Metrics,
}

/// The publisher and listener tasks of one process.
pub struct Relay {
    pub tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts publishing what `outbox` receives and listening for every replica's
    /// notifications. Returns once the listener listens, so nothing published afterwards
    /// (by anyone) is missed.
    pub async fn start(
        db: &DatabaseConnection,
        outbox: mpsc::UnboundedReceiver<Outgoing>,
        hearers: Hearers,
        shutdown: CancellationToken,
    ) -> Result<Relay, sea_orm::sqlx::Error> {
        let pool = db.get_postgres_connection_pool().clone();
        let listener = listen(&pool).await?;
        let publisher = tokio::spawn(publish(db.clone(), outbox, hearers.metrics.clone()));
        let listener = tokio::spawn(hear(pool, listener, hearers, shutdown));
        Ok(Relay {
            tasks: vec![publisher, listener],
        })
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([EVENTS_CHANNEL, WORK_CHANNEL, CANCEL_CHANNEL])
        .await?;
    Ok(listener)
}

/// An event as a notification payload (JSON, message cut to fit).
pub fn event_payload(event: &FileEvent) -> String {
    let mut event = event.clone();
    if let Some(m) = &mut event.error_message {
        if m.chars().count() > MAX_MESSAGE_CHARS {
            *m = m.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
        }
    }
    serde_json::to_string(&event).expect("events serialise")
}

/// Publishes in arrival order, one notification at a time, thinning progress. Ends when
/// every sender is gone (the library closed).
async fn publish(
    db: DatabaseConnection,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    metrics: Metrics,
) {
    // Per file: when its last progress went out, and the newest one held back since.
    let mut last_progress: HashMap<String, Instant> = HashMap::new();
    while let Some(item) = outbox.recv().await {
        let (channel, payload) = match item {
            Outgoing::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Outgoing::Work => (WORK_CHANNEL, String::new()),
            Outgoing::Cancel(id) => (CANCEL_CHANNEL, id.to_string()),
            Outgoing::Event(event) => {
                let id = event.file_id.as_str().to_owned();
                if event.kind == FileEventKind::Progress {
                    let last = event.windows_done >= event.windows_total;
                    let recent = last_progress
                        .get(&id)
                        .is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL);
                    if recent && !last {
                        metrics.relay_events.with_label_values(&["thinned"]).inc();
                        continue;
                    }
                    last_progress.insert(id, Instant::now());
                } else if event.is_terminal() {
                    last_progress.remove(&id);
                }
                (EVENTS_CHANNEL, event_payload(&event))
            }
        };
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match store::notify(&db, channel, &payload).await {
                Ok(()) => {
                    metrics.relay_events.with_label_values(&["published"]).inc();
                    break;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(channel, error = %e, "publishing a notification failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    metrics.relay_events.with_label_values(&["lost"]).inc();
                    tracing::error!(channel, error = %e, "a notification was lost (the database did not take it)");
                }
            }
        }
    }
}

/// Listens until shutdown, reconnecting (and telling subscribers to resync) whenever the
/// connection is lost.
async fn hear(pool: PgPool, first: PgListener, hearers: Hearers, shutdown: CancellationToken) {
    let mut listener = first;
    let mut deleted = RecentlyDeleted::default();
    loop {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(n)) => dispatch(&hearers, &mut deleted, n.channel(), n.payload()),
                Ok(None) => {
                    tracing::warn!("the event listener's database connection was lost");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event listener failed");
                    break;
                }
            }
        }
        drop(listener);
        let mut delay = Duration::from_millis(200);
        listener = loop {
            match listen(&pool).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other replicas' events; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        // Listening again: whatever was published in between is lost to this process.
        tracing::info!("listening for events again; subscribers resync");
        hearers.metrics.relay_resyncs.inc();
        hearers
            .events
            .deliver(FileEvent::marker(FileEventKind::Lagged, None));
        // Work may have been queued meanwhile.
        hearers.work.notify_waiters();
    }
}

fn dispatch(hearers: &Hearers, deleted: &mut RecentlyDeleted, channel: &str, payload: &str) {
    match channel {
        EVENTS_CHANNEL => match serde_json::from_str::<FileEvent>(payload) {
            Ok(event) => {
                if deleted.admits(&event) {
                    hearers
                        .metrics
                        .relay_events
                        .with_label_values(&["heard"])
                        .inc();
                    hearers.events.deliver(event);
                }
            }
            Err(e) => tracing::warn!(error = %e, "an event notification could not be read"),
        },
        WORK_CHANNEL => hearers.work.notify_waiters(),
        CANCEL_CHANNEL => match Uuid::parse_str(payload) {
            Ok(id) => {
                if let Some(token) = hearers.active.lock().unwrap().get(&id) {
                    tracing::info!(%id, "another replica deleted or reprocessed the file; stopping");
                    token.cancel();
                }
            }
            Err(e) => tracing::warn!(error = %e, "a cancel notification could not be read"),
        },
        other => tracing::debug!(channel = other, "notification on an unknown channel"),
    }
}

/// Files deleted lately. A worker on another replica may publish a last progress event for a
/// file after its DELETED (it learns of the delete a moment later); those are dropped, so no
/// subscriber sees a deleted file come back. A new ADDED (the same content uploaded again)
/// lifts it.
#[derive(Default)]
struct RecentlyDeleted {
    ids: HashMap<String, Instant>,
}

impl RecentlyDeleted {
    const KEEP: Duration = Duration::from_secs(600);

    fn admits(&mut self, event: &FileEvent) -> bool {
        let id = event.file_id.as_str();
        match event.kind {
            FileEventKind::Deleted => {
                if self.ids.len() > 10_000 {
                    self.ids.retain(|_, t| t.elapsed() < Self::KEEP);
                }
                self.ids.insert(id.to_owned(), Instant::now());
                true
            }
            FileEventKind::Added => {
                self.ids.remove(id);
                true
            }
            _ => self.ids.get(id).is_none_or(|t| t.elapsed() >= Self::KEEP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ApiFileStatus;

    fn event(kind: FileEventKind, id: &str) -> FileEvent {
        let mut e = FileEvent::marker(kind, None);
        e.file_id = async_graphql::ID(id.into());
        e.status = ApiFileStatus::Embedding;
        e
    }

    #[test]
    fn events_round_trip_and_long_messages_are_cut() {
        let mut e = event(FileEventKind::Status, "a");
        e.error_message = Some("x".repeat(10_000));
        let payload = event_payload(&e);
        assert!(payload.len() < 8000, "{}", payload.len());
        let back: FileEvent = serde_json::from_str(&payload).unwrap();
        assert_eq!(back.kind, FileEventKind::Status);
        assert_eq!(
            back.error_message.unwrap().chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
        let e = event(FileEventKind::Progress, "b");
        let back: FileEvent = serde_json::from_str(&event_payload(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_deleted_file_stays_deleted_until_added_again() {
        let mut d = RecentlyDeleted::default();
        assert!(d.admits(&event(FileEventKind::Progress, "a")));
        assert!(d.admits(&event(FileEventKind::Deleted, "a")));
        assert!(!d.admits(&event(FileEventKind::Progress, "a")));
        assert!(!d.admits(&event(FileEventKind::Status, "a")));
        assert!(d.admits(&event(FileEventKind::Progress, "b")));
        assert!(d.admits(&event(FileEventKind::Added, "a")));
        assert!(d.admits(&event(FileEventKind::Status, "a")));
    }
}
