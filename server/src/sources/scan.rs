//! Walking a folder and making the library equal to it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use entity::file_location::Model as LocationRow;
use entity::library_source::{Model as SourceRow, SourceKind, SourceState};
use entity::store::sources::{self as store_sources, ScanCounts};
use traum_audio::{sniff_container, Sniffed, SNIFF_LEN};

use super::{Placement, Removed};
use crate::error::ApiError;
use crate::library::Library;
use crate::storage::has_audio_extension;

/// How often a running scan saves and announces its counters.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// One regular file a walk found.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// What a walk found: files, and what it could not read (path, why).
#[derive(Debug, Default)]
pub struct Walk {
    pub entries: Vec<Entry>,
    pub problems: Vec<(PathBuf, String)>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// Hidden entries (`.DS_Store`, macOS `._` resource forks beside every sample, `.git`,
/// `.Trash`) are not audio a person put there.
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Walks `root` recursively, following symbolic links (a link back into a folder already
/// walked, such as a loop, is reported and not followed). Unreadable folders are reported
/// and skipped; anything but regular files (pipes, sockets, devices) is ignored.
pub fn walk(root: &Path) -> Walk {
    let mut walk = Walk::default();
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {
            visited.insert((meta.dev(), meta.ino()));
        }
        Ok(meta) if meta.is_file() => {
            walk.entries.push(Entry {
                path: root.to_path_buf(),
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            });
            return walk;
        }
        Ok(_) => return walk,
        Err(e) => {
            walk.problems
                .push((root.to_path_buf(), format!("cannot read: {e}")));
            return walk;
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                walk.problems
                    .push((dir, format!("cannot read this folder: {e}")));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    walk.problems
                        .push((dir.clone(), format!("cannot list this folder: {e}")));
                    break;
                }
            };
            if is_hidden(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            let link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            // Follows links: a link is what it points to.
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    let why = if link {
                        format!("broken symbolic link ({e})")
                    } else {
                        format!("cannot read: {e}")
                    };
                    walk.problems.push((path, why));
                    continue;
                }
            };
            if meta.is_dir() {
                if visited.insert((meta.dev(), meta.ino())) {
                    stack.push(path);
                } else if link {
                    walk.problems.push((
                        path,
                        "symbolic link to a folder already scanned (a loop, or a second way in); not followed".into(),
                    ));
                }
            } else if meta.is_file() {
                walk.entries.push(Entry {
                    path,
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                });
            }
        }
    }
    walk
}

/// What a file's content is.
enum Inspected {
    Audio {
        container: &'static str,
        hash: String,
    },
    NotAudio(String),
}

/// Sniffs and hashes one file (blocking).
fn inspect(path: &Path) -> std::io::Result<Inspected> {
    let mut file = std::fs::File::open(path)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file).take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    match sniff_container(&head) {
        Sniffed::Audio(container) => {
            let (hash, _) = crate::storage::hash_file(path)?;
            Ok(Inspected::Audio {
                container: container.name(),
                hash,
            })
        }
        Sniffed::Empty => Ok(Inspected::NotAudio("the file is empty".into())),
        Sniffed::Unsupported(what) => Ok(Inspected::NotAudio(format!(
            "not a supported audio file (it looks like {what}; supported: {})",
            traum_audio::SUPPORTED_FORMATS
        ))),
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Makes the library equal to what `walk` found below `scope` in the source: `known` are the
/// source's locations at or below `scope` before. Locations not found again are gone, unless
/// `keep_missing` (the folder itself could not be read).
async fn reconcile(
    lib: &Arc<Library>,
    source: &SourceRow,
    walk: Walk,
    mut known: HashMap<String, LocationRow>,
    counts: &mut ScanCounts,
    progress: &mut Progress,
) -> Result<(), ApiError> {
    counts.failed += walk.problems.len() as i64;
    for (path, why) in &walk.problems {
        tracing::warn!(source = %source.id, path = %path.display(), "{why}");
    }
    for entry in walk.entries {
        if lib.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let path = path_text(&entry.path);
        let previous = known.remove(&path);
        if let Some(previous) = &previous {
            if previous.size_bytes == entry.size as i64 && previous.mtime_ns == entry.mtime_ns {
                counts.found += 1;
                progress.tick(lib, source.id, *counts).await;
                continue;
            }
        }
        let inspected = {
            let p = entry.path.clone();
            crate::storage::blocking(move || inspect(&p)).await?
        };
        match inspected {
            Err(e) => {
                counts.failed += 1;
                tracing::warn!(path = %path, error = %e, "cannot read");
                // A file we cannot read now keeps whatever it had.
            }
            Ok(Inspected::NotAudio(why)) => {
                if previous.is_some() {
                    lib.remove_location(source.id, &path).await?;
                    counts.changed += 1;
                } else if has_audio_extension(&entry.path) {
                    counts.failed += 1;
                    tracing::warn!(path = %path, "{why}");
                }
            }
            Ok(Inspected::Audio { container, hash }) => {
                counts.found += 1;
                abort_if_asked(counts.new + counts.changed + counts.moved);
                let placed = lib
                    .place_file(
                        source.id,
                        &path,
                        &hash,
                        entry.size,
                        entry.mtime_ns,
                        container,
                        previous.as_ref(),
                    )
                    .await?;
                match placed {
                    Placement::Unchanged => {}
                    Placement::New => counts.new += 1,
                    Placement::Changed => counts.changed += 1,
                    Placement::Moved => counts.moved += 1,
                }
            }
        }
        progress.tick(lib, source.id, *counts).await;
    }
    for (path, _) in known {
        // Still there but not walked (its folder could not be read just now): kept.
        if Path::new(&path).exists() {
            continue;
        }
        // A location moved to its new path during this scan is no longer here.
        if lib.remove_location(source.id, &path).await? != Removed::NoSuchLocation {
            counts.gone += 1;
        }
    }
    Ok(())
}

/// A test hook (debug builds only): `TRAUM_TEST_ABORT_SCAN_AFTER=<n>` aborts the process
/// (as kill -9 would end it) when a scan has placed n files, so that resuming an
/// interrupted scan can be tested without timing luck.
fn abort_if_asked(placed: i64) {
    if !cfg!(debug_assertions) {
        return;
    }
    let limit = std::env::var("TRAUM_TEST_ABORT_SCAN_AFTER")
        .ok()
        .and_then(|v| v.parse::<i64>().ok());
    if limit.is_some_and(|n| placed >= n) {
        tracing::error!(placed, "TRAUM_TEST_ABORT_SCAN_AFTER: aborting");
        std::process::abort();
    }
}

/// Saves and announces counters at most every [`PROGRESS_EVERY`].
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    async fn tick(&mut self, lib: &Library, source: uuid::Uuid, counts: ScanCounts) {
        if self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        if let Err(e) = lib
            .save_scan_progress(source, SourceState::Scanning, counts, None)
            .await
        {
            tracing::warn!(%source, error = %e, "could not save scan progress");
        }
    }
}

/// Why a folder cannot be scanned now (missing, unreadable, or empty while the library
/// holds files from it: an unplugged disk's mount point looks like that).
fn unavailable(root: &Path, walk: &Walk, known: usize) -> Option<String> {
    match std::fs::metadata(root) {
        Err(e) => Some(format!("{}: the folder cannot be read ({e}); its files stay in the library until it is back", root.display())),
        Ok(meta) if !meta.is_dir() => Some(format!("{}: no longer a folder", root.display())),
        Ok(_) if walk.entries.is_empty() && known > 0 && walk.problems.is_empty() => Some(format!(
            "{}: the folder is empty but held {known} files (an unplugged disk?); they stay in the library. \
             Remove the folder source to drop them",
            root.display()
        )),
        Ok(_) if std::fs::read_dir(root).is_err() => Some(format!("{}: the folder cannot be listed", root.display())),
        Ok(_) => None,
    }
}

/// Scans a whole folder source, under its lock: state `scanning` (saved, so a crash
/// leaves it to be rescanned at the next start), counters announced as it goes, then
/// `idle` (or `unavailable`, touching nothing, when the folder is not there).
pub async fn scan_source(
    lib: &Arc<Library>,
    source_id: uuid::Uuid,
) -> Result<ScanCounts, ApiError> {
    let lock = lib.folders.lock_of(source_id);
    let _held = lock.lock().await;
    let source = lib.source(source_id).await?;
    if source.kind != SourceKind::Folder {
        return Ok(ScanCounts::default());
    }
    let started = Instant::now();
    let row = store_sources::start_scan(&lib.db, source_id).await?;
    lib.announce_scan(&row);
    let root = PathBuf::from(&source.path);
    let walked = {
        let root = root.clone();
        crate::storage::blocking(move || walk(&root)).await?
    };
    let known: HashMap<String, LocationRow> =
        store_sources::locations_in_source(&lib.db, source_id)
            .await?
            .into_iter()
            .map(|l| (l.path.clone(), l))
            .collect();
    let mut counts = ScanCounts::default();
    if let Some(why) = unavailable(&root, &walked, known.len()) {
        tracing::warn!(source = %source_id, "{why}");
        lib.save_scan_progress(source_id, SourceState::Unavailable, counts, Some(why))
            .await?;
        return Ok(counts);
    }
    let problems = summarize(&walked.problems);
    let mut progress = Progress::new();
    let result = reconcile(lib, &source, walked, known, &mut counts, &mut progress).await;
    if let Err(e) = result {
        // Left `scanning`: the next start (or rescan) runs it again.
        let _ = lib
            .save_scan_progress(
                source_id,
                SourceState::Scanning,
                counts,
                Some(e.to_string()),
            )
            .await;
        return Err(e);
    }
    lib.save_scan_progress(source_id, SourceState::Idle, counts, problems)
        .await?;
    tracing::info!(
        source = %source_id,
        path = %source.path,
        found = counts.found,
        new = counts.new,
        changed = counts.changed,
        moved = counts.moved,
        gone = counts.gone,
        failed = counts.failed,
        seconds = started.elapsed().as_secs_f64(),
        "folder scanned"
    );
    Ok(counts)
}

/// The first few problems of a walk, for `last_error`.
fn summarize(problems: &[(PathBuf, String)]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let mut text: Vec<String> = problems
        .iter()
        .take(5)
        .map(|(p, why)| format!("{}: {why}", p.display()))
        .collect();
    if problems.len() > 5 {
        text.push(format!("and {} more", problems.len() - 5));
    }
    Some(text.join("; "))
}

/// Brings the part of a source at `paths` up to date (the watcher's work): each path that
/// exists is walked (a file, or a folder and what it holds) before any that is gone is
/// removed, so that a move within the source is recognised as one.
pub async fn sync_paths(
    lib: &Arc<Library>,
    source_id: uuid::Uuid,
    paths: Vec<PathBuf>,
) -> Result<ScanCounts, ApiError> {
    let lock = lib.folders.lock_of(source_id);
    let _held = lock.lock().await;
    let source = lib.source(source_id).await?;
    if source.state == SourceState::Unavailable || !Path::new(&source.path).is_dir() {
        // Back, or gone as a whole (an unplugged disk): a whole scan, which tells these
        // apart, rather than a piece that would take every file for deleted.
        drop(_held);
        return scan_source(lib, source_id).await;
    }
    let mut counts = ScanCounts::default();
    let mut progress = Progress::new();
    let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) =
        paths.into_iter().partition(|p| p.exists());
    for path in present.into_iter().chain(missing) {
        let walked = {
            let p = path.clone();
            crate::storage::blocking(move || {
                if p.exists() {
                    walk(&p)
                } else {
                    Walk::default()
                }
            })
            .await?
        };
        let known: HashMap<String, LocationRow> =
            store_sources::locations_under(&lib.db, source_id, &path_text(&path))
                .await?
                .into_iter()
                .map(|l| (l.path.clone(), l))
                .collect();
        reconcile(lib, &source, walked, known, &mut counts, &mut progress).await?;
    }
    let changed = counts.new + counts.changed + counts.moved + counts.gone + counts.failed;
    if changed > 0 {
        tracing::info!(
            source = %source_id,
            new = counts.new,
            changed = counts.changed,
            moved = counts.moved,
            gone = counts.gone,
            failed = counts.failed,
            "folder changes applied"
        );
    }
    Ok(counts)
}
