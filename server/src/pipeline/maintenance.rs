//! Index maintenance: the step after "indexed".
//!
//! qdrant-edge does no background work. Until `optimize` runs, new vectors sit in an
//! appendable segment that every search scans exactly, and deleted vectors stay in their
//! segment as tombstones: a library that keeps adding and deleting files grows on disk and
//! in memory for ever, and searches slow down with it. So the library optimises the index
//! itself once writes have paused for [`IndexMaintenance::idle`], and at least every
//! [`IndexMaintenance::max_delay`] while they go on. `optimize` builds HNSW graphs for
//! segments past the indexing threshold, merges small segments, vacuums those with many
//! deleted points and drops write-ahead-log files already flushed (by reopening the store:
//! searches wait for that moment); it blocks index writers (a worker finishing a file
//! waits). A Qdrant server does all this by itself; there `optimize` does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::library::Library;

/// When the library optimises its vector index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexMaintenance {
    /// Optimise once no vectors were written or deleted for this long.
    pub idle: Duration,
    /// ... or when the oldest change not yet optimised is this old, writes or not.
    pub max_delay: Duration,
}

impl Default for IndexMaintenance {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// Starts the maintenance task; it ends when the library shuts down.
pub fn start(lib: &Arc<Library>, config: IndexMaintenance) -> JoinHandle<()> {
    tokio::spawn(maintenance_loop(lib.clone(), config))
}

async fn maintenance_loop(lib: Arc<Library>, config: IndexMaintenance) {
    loop {
        // A change made while the last optimisation ran left a permit: this returns at once.
        tokio::select! {
            _ = lib.index_changes.notified() => {}
            _ = lib.shutdown.cancelled() => return,
        }
        let first_change = Instant::now();
        loop {
            let left = config.max_delay.saturating_sub(first_change.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = lib.index_changes.notified() => {}
                _ = tokio::time::sleep(config.idle.min(left)) => break,
                _ = lib.shutdown.cancelled() => return,
            }
        }
        if let Err(e) = lib.optimize_index().await {
            // The index stays usable, only slower or larger; the next change retries.
            tracing::warn!(error = %e, "index maintenance failed");
        }
    }
}
