//! Watching folder sources while the server runs (the `notify` crate: inotify on Linux).
//!
//! Events only name paths; what changed is found the way a scan finds it
//! ([`super::scan::sync_paths`]). A path is taken once it has been quiet for the settle time
//! and, for a file, its size and modification time held still across two looks (a file
//! being copied keeps growing). Paths that are gone wait until nothing else in their source
//! is settling, so that both ends of a move are seen together and the move is recognised.
//! When the kernel drops events (its queue overflowed), the source is rescanned whole.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::library_source::{SourceKind, SourceState};
use entity::store::sources as store_sources;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::library::Library;

/// How the watcher waits for files to settle.
#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// Quiet time after a path's last event before it is looked at.
    pub settle: Duration,
    /// How often pending paths are looked at.
    pub tick: Duration,
    /// How often folders that could not be watched (missing, unplugged) are tried again.
    pub retry: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            settle: Duration::from_millis(1000),
            tick: Duration::from_millis(250),
            retry: Duration::from_secs(30),
        }
    }
}

struct Pending {
    source: Uuid,
    last_event: Instant,
    /// (size, mtime) at the last look, for files.
    looked: Option<(u64, std::time::SystemTime)>,
}

/// Scans every folder source (resuming interrupted scans, finding what changed while the
/// server was down), then follows their changes until shutdown.
pub fn start(lib: &Arc<Library>, config: WatchConfig) -> JoinHandle<()> {
    let lib = lib.clone();
    tokio::spawn(async move {
        if let Err(e) = run(&lib, config).await {
            tracing::error!(error = %e, "the folder watcher stopped; folders are scanned only on request now");
        }
    })
}

async fn run(lib: &Arc<Library>, config: WatchConfig) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot start watching folders: {e}"))?;
    // Folder path -> source id, for the folders watched now.
    let mut watched: HashMap<PathBuf, Uuid> = HashMap::new();
    let mut first = true;
    let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(config.retry);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lib.shutdown.cancelled() => return Ok(()),
            _ = lib.folders.changed.notified() => {
                resync(lib, &mut watcher, &mut watched, false).await;
            }
            _ = retry.tick() => {
                // The first tick is at once: the start-up scans.
                resync(lib, &mut watcher, &mut watched, first).await;
                first = false;
            }
            event = rx.recv() => {
                let Some(event) = event else { return Err("the watcher's channel closed".into()) };
                let mut events = vec![event];
                while let Ok(more) = rx.try_recv() {
                    events.push(more);
                }
                for event in events {
                    take_event(lib, event, &watched, &mut pending);
                }
            }
            _ = tick.tick() => {
                if !pending.is_empty() {
                    process_ready(lib, &mut pending, config.settle).await;
                }
            }
        }
    }
}

fn source_of(watched: &HashMap<PathBuf, Uuid>, path: &Path) -> Option<Uuid> {
    watched
        .iter()
        .filter(|(root, _)| path.starts_with(root))
        .max_by_key(|(root, _)| root.as_os_str().len())
        .map(|(_, id)| *id)
}

fn take_event(
    lib: &Arc<Library>,
    event: notify::Result<notify::Event>,
    watched: &HashMap<PathBuf, Uuid>,
    pending: &mut HashMap<PathBuf, Pending>,
) {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            // Overflow and the like: rescan whatever the error names, or everything.
            tracing::warn!(error = %e, "folder watcher error; rescanning");
            rescan(lib, watched, &e.paths);
            return;
        }
    };
    if event.need_rescan() {
        rescan(lib, watched, &event.paths);
        return;
    }
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return;
    }
    for path in event.paths {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'));
        if hidden {
            continue;
        }
        let Some(source) = source_of(watched, &path) else {
            continue;
        };
        let entry = pending.entry(path).or_insert(Pending {
            source,
            last_event: Instant::now(),
            looked: None,
        });
        entry.last_event = Instant::now();
        entry.looked = None;
    }
}

/// Scans the sources of `paths` whole (every watched source when none is named): events
/// were lost there.
fn rescan(lib: &Arc<Library>, watched: &HashMap<PathBuf, Uuid>, paths: &[PathBuf]) {
    let sources: HashSet<Uuid> = if paths.is_empty() {
        watched.values().copied().collect()
    } else {
        paths.iter().filter_map(|p| source_of(watched, p)).collect()
    };
    for source in sources {
        lib.spawn_scan(source);
    }
}

/// Hands every settled path to its source's sync.
async fn process_ready(
    lib: &Arc<Library>,
    pending: &mut HashMap<PathBuf, Pending>,
    settle: Duration,
) {
    let now = Instant::now();
    let mut ready: HashMap<Uuid, Vec<PathBuf>> = HashMap::new();
    let mut settling: HashSet<Uuid> = HashSet::new();
    let mut gone: Vec<PathBuf> = Vec::new();
    for (path, p) in pending.iter_mut() {
        if now.duration_since(p.last_event) < settle {
            settling.insert(p.source);
            continue;
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {
                let look = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
                if p.looked == Some(look) {
                    ready.entry(p.source).or_default().push(path.clone());
                } else {
                    // Still growing, or the first look: once more.
                    p.looked = Some(look);
                    settling.insert(p.source);
                }
            }
            Ok(_) => ready.entry(p.source).or_default().push(path.clone()),
            Err(_) => gone.push(path.clone()),
        }
    }
    for path in gone {
        let source = pending[&path].source;
        if !settling.contains(&source) {
            ready.entry(source).or_default().push(path);
        }
    }
    for (source, paths) in ready {
        for path in &paths {
            pending.remove(path);
        }
        let paths = collapse(paths);
        if let Err(e) = super::scan::sync_paths(lib, source, paths).await {
            tracing::warn!(%source, error = %e, "applying folder changes failed; rescanning");
            lib.spawn_scan(source);
        }
    }
}

/// Drops paths below another path of the list (walking the folder covers them).
fn collapse(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    let mut out: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for path in paths {
        if out.last().is_some_and(|prev| path.starts_with(prev)) {
            continue;
        }
        out.push(path);
    }
    out
}

/// Watches the folder sources there are now (and stops watching removed ones); scans those
/// newly watched when `scan_all` or when they came back after being unavailable.
async fn resync(
    lib: &Arc<Library>,
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut HashMap<PathBuf, Uuid>,
    scan_all: bool,
) {
    let sources = match store_sources::list_sources(&lib.db, false).await {
        Ok(sources) => sources,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list folder sources");
            return;
        }
    };
    let wanted: HashMap<PathBuf, (Uuid, SourceState)> = sources
        .into_iter()
        .filter(|s| s.kind == SourceKind::Folder)
        .map(|s| (PathBuf::from(&s.path), (s.id, s.state)))
        .collect();
    watched.retain(|path, _| {
        let keep = wanted.contains_key(path);
        if !keep {
            let _ = watcher.unwatch(path);
        }
        keep
    });
    for (path, (id, state)) in wanted {
        if watched.contains_key(&path) && state == SourceState::Unavailable {
            // Its disk went away under the watch: watch it afresh once it is back.
            let _ = watcher.unwatch(&path);
            watched.remove(&path);
        }
        if watched.contains_key(&path) {
            if scan_all {
                lib.spawn_scan(id);
            }
            continue;
        }
        match watcher.watch(&path, RecursiveMode::Recursive) {
            Ok(()) => {
                watched.insert(path, id);
                if scan_all || state == SourceState::Unavailable {
                    lib.spawn_scan(id);
                }
            }
            Err(e) => {
                if scan_all {
                    // Marks it unavailable (or scans what it can).
                    lib.spawn_scan(id);
                }
                tracing::debug!(path = %path.display(), error = %e, "cannot watch the folder yet");
            }
        }
    }
}
