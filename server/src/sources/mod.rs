//! Folders as library sources: read in place, scanned, watched.
//!
//! A scan walks a folder and makes the library equal to it: a file whose size and
//! modification time match its location is skipped without being read; others are sniffed
//! (by content, not extension) and hashed; a known content at a new path whose old path is
//! gone is a move (the location follows, nothing is embedded again); new content is queued
//! for the pipeline like an upload; locations whose path is gone are removed, and a file
//! with no location left leaves the library (its vectors with it; a folder's own files are
//! never deleted). Everything a scan does is idempotent, so a scan interrupted by a crash
//! simply runs again at the next start (a folder source still `scanning` is rescanned) and
//! ends in the same state. While the server runs, [`watch`] turns file-system events into
//! the same work.

pub mod scan;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use entity::library_source::{Model as SourceRow, SourceKind, SourceState};
use entity::store::sources::{self as store_sources, ScanCounts};
use entity::store::{self, NewAudioFile};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::ApiError;
use crate::events::{FileEvent, SourceScan};
use crate::library::Library;

pub use scan::scan_source;

/// The library's folder bookkeeping: one lock per source (a scan and the watcher's work on
/// the same folder never interleave), and a signal that the set of folders changed.
#[derive(Default)]
pub struct Folders {
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the watcher to watch added folders and drop removed ones.
    pub(crate) changed: Notify,
}

impl Folders {
    /// The lock of one source.
    pub fn lock_of(&self, source: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(source)
            .or_default()
            .clone()
    }
}

/// What placing one file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The location already held this content (only its size or time changed).
    Unchanged,
    /// A location for content the library did not have at this path.
    New,
    /// The path held other content before.
    Changed,
    /// The content was known at a path that is gone: the location moved.
    Moved,
}

/// What removing a location did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// There was no such location (it moved, or was removed already).
    NoSuchLocation,
    /// The file stays: it has other locations.
    FileKept,
    /// It was the file's last location: the file left the library.
    FileLeft,
}

/// A folder as a canonical absolute path, or why it cannot be a source.
pub fn canonical_folder(path: &Path) -> Result<PathBuf, ApiError> {
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        ApiError::BadRequest(format!(
            "{}: cannot add this folder ({e}); give a path that exists on the server",
            path.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(ApiError::BadRequest(format!(
            "{}: not a folder; give the folder that holds the audio",
            path.display()
        )));
    }
    Ok(canonical)
}

impl Library {
    /// Adds a folder as a source (or finds it), and scans it in the background when `scan`
    /// (the watcher scans every source when it starts: `--folder` leaves it to that).
    pub async fn add_folder(
        self: &Arc<Self>,
        path: &Path,
        scan: bool,
    ) -> Result<SourceRow, ApiError> {
        let canonical = canonical_folder(path)?;
        let storage =
            std::fs::canonicalize(&self.paths.storage).unwrap_or(self.paths.storage.clone());
        if canonical.starts_with(&storage) || storage.starts_with(&canonical) {
            return Err(ApiError::BadRequest(format!(
                "{}: overlaps the library's own data directory {}; add the folder your audio is in",
                canonical.display(),
                storage.display()
            )));
        }
        let text = canonical.to_string_lossy().into_owned();
        let (source, created) = store_sources::add_folder(&self.db, &text).await?;
        if created {
            tracing::info!(source = %source.id, path = %text, "folder added");
        }
        self.folders.changed.notify_one();
        if scan {
            self.spawn_scan(source.id);
        }
        Ok(source)
    }

    /// Scans a source in the background (after any scan or watcher work on it ends).
    pub fn spawn_scan(self: &Arc<Self>, source: Uuid) {
        let lib = self.clone();
        tokio::spawn(async move {
            if let Err(e) = scan_source(&lib, source).await {
                tracing::warn!(%source, error = %e, "folder scan failed");
            }
        });
    }

    /// Every source (detached ones left out), with the number of files each holds.
    pub async fn sources(&self) -> Result<Vec<(SourceRow, u64)>, ApiError> {
        let sources = store_sources::list_sources(&self.db, false).await?;
        let counts = store_sources::files_per_source(&self.db).await?;
        Ok(sources
            .into_iter()
            .map(|s| {
                let n = counts.get(&s.id).copied().unwrap_or(0);
                (s, n)
            })
            .collect())
    }

    pub async fn source(&self, id: Uuid) -> Result<SourceRow, ApiError> {
        store_sources::get_source(&self.db, id)
            .await?
            .filter(|s| s.state != SourceState::Detached)
            .ok_or_else(|| ApiError::NotFound(format!("no library source with id {id}")))
    }

    /// Rescans a folder now (in the background).
    pub async fn rescan_folder(self: &Arc<Self>, id: Uuid) -> Result<SourceRow, ApiError> {
        let source = self.source(id).await?;
        if source.kind != SourceKind::Folder {
            return Err(ApiError::BadRequest(
                "the uploads are not a folder; only folders are scanned".into(),
            ));
        }
        self.spawn_scan(id);
        Ok(source)
    }

    /// Stops reading a folder. With `keep_files` its files stay in the library (still
    /// played from where they are, no longer scanned or watched); without, the files found
    /// nowhere else leave the library (the folder itself is not touched).
    pub async fn remove_folder(
        self: &Arc<Self>,
        id: Uuid,
        keep_files: bool,
    ) -> Result<SourceRow, ApiError> {
        let source = self.source(id).await?;
        if source.kind != SourceKind::Folder {
            return Err(ApiError::BadRequest(
                "the uploads are not a folder; delete uploaded files one by one".into(),
            ));
        }
        let lock = self.folders.lock_of(id);
        let _held = lock.lock().await;
        if keep_files {
            let row = store_sources::set_state(&self.db, id, SourceState::Detached, None).await?;
            self.folders.changed.notify_one();
            tracing::info!(source = %id, path = %source.path, "folder detached, files kept");
            return Ok(row);
        }
        let locations = store_sources::locations_in_source(&self.db, id).await?;
        let mut removed = 0;
        for location in &locations {
            if self.remove_location(id, &location.path).await? == Removed::FileLeft {
                removed += 1;
            }
        }
        store_sources::delete_source(&self.db, id).await?;
        self.folders.changed.notify_one();
        tracing::info!(source = %id, path = %source.path, files_removed = removed, "folder removed");
        Ok(source)
    }

    /// Records that the content with `hash` is at `path` in a folder source, given what the
    /// location held before (if anything): adds the file (queued for processing) when its
    /// content is new, or moves the location of a known content whose old path is gone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn place_file(
        &self,
        source: Uuid,
        path: &str,
        hash: &str,
        size: u64,
        mtime_ns: i64,
        container: &str,
        previous: Option<&entity::file_location::Model>,
    ) -> Result<Placement, ApiError> {
        let id = store::id_for_hash(hash);
        let size_i = size as i64;
        if let Some(previous) = previous {
            if previous.file_id == id {
                store_sources::put_location(&self.db, source, path, id, size_i, mtime_ns).await?;
                return Ok(Placement::Unchanged);
            }
            // Other content than before: the old content loses this location first.
            self.remove_location(source, path).await?;
        }
        let changed = previous.is_some();
        if let Some(existing) = store::get_by_hash(&self.db, hash).await? {
            // Known content. At a path of this source that is gone: a move or a rename.
            let locations = store_sources::locations_of_file(&self.db, existing.id).await?;
            let gone = locations
                .iter()
                .find(|l| l.source_id == source && l.path != path && !Path::new(&l.path).exists());
            if let Some(gone) = gone {
                store_sources::move_location(&self.db, source, &gone.path, path, size_i, mtime_ns)
                    .await?;
                if existing.stored_path == gone.path {
                    store::files::set_stored_path(&self.db, existing.id, path).await?;
                }
                return Ok(Placement::Moved);
            }
            store_sources::put_location(&self.db, source, path, existing.id, size_i, mtime_ns)
                .await?;
            if !self.paths.resolve(&existing.stored_path).exists() {
                store::files::set_stored_path(&self.db, existing.id, path).await?;
            }
            return Ok(if changed {
                Placement::Changed
            } else {
                Placement::New
            });
        }
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_owned());
        let new = NewAudioFile {
            original_name: name,
            stored_path: path.to_owned(),
            content_hash: hash.to_owned(),
            size_bytes: size_i,
            container: container.to_owned(),
        };
        {
            let _intake = self.intake_lock.lock().await;
            let (row, created) = self.insert_announced(new).await?;
            store_sources::put_location(&self.db, source, path, row.id, size_i, mtime_ns).await?;
            if created {
                self.work_queued();
                tracing::debug!(id = %row.id, %path, "file found");
            }
        }
        Ok(if changed {
            Placement::Changed
        } else {
            Placement::New
        })
    }

    /// Removes one location. A file left with no location leaves the library (row and
    /// vectors; stored upload copies too, never a folder's files); one that still has
    /// locations is read from another. Returns whether the file left the library.
    pub(crate) async fn remove_location(
        &self,
        source: Uuid,
        path: &str,
    ) -> Result<Removed, ApiError> {
        let Some(location) = store_sources::delete_location(&self.db, source, path).await? else {
            return Ok(Removed::NoSuchLocation);
        };
        let rest = store_sources::locations_of_file(&self.db, location.file_id).await?;
        if rest.is_empty() {
            match self.delete_file(location.file_id).await {
                Ok(_) | Err(ApiError::NotFound(_)) => return Ok(Removed::FileLeft),
                Err(e) => return Err(e),
            }
        }
        if let Some(row) = store::get(&self.db, location.file_id).await? {
            if row.stored_path == path {
                store::files::set_stored_path(&self.db, row.id, &rest[0].path).await?;
            }
        }
        Ok(Removed::FileKept)
    }

    /// Where to read a file now: its stored path if that exists, else the first location
    /// that does (which becomes its stored path).
    pub async fn readable_path(
        &self,
        row: &entity::audio_file::Model,
    ) -> Result<PathBuf, ApiError> {
        let stored = self.paths.resolve(&row.stored_path);
        if tokio::fs::try_exists(&stored).await.unwrap_or(false) {
            return Ok(stored);
        }
        for location in store_sources::locations_of_file(&self.db, row.id).await? {
            let candidate = self.paths.resolve(&location.path);
            if tokio::fs::try_exists(&candidate).await.unwrap_or(false) {
                store::files::set_stored_path(&self.db, row.id, &location.path).await?;
                return Ok(candidate);
            }
        }
        Ok(stored)
    }

    /// Tells subscribers where a scan stands.
    pub(crate) fn announce_scan(&self, source: &SourceRow) {
        self.events
            .send(FileEvent::scan_progress(SourceScan::from_row(source)));
    }

    /// Counts of a scan in progress, saved and announced.
    pub(crate) async fn save_scan_progress(
        &self,
        source: Uuid,
        state: SourceState,
        counts: ScanCounts,
        error: Option<String>,
    ) -> Result<SourceRow, ApiError> {
        let row = store_sources::save_scan(&self.db, source, state, counts, error, false).await?;
        self.announce_scan(&row);
        Ok(row)
    }
}
