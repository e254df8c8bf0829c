//! The library list as the Library page shows it: a page (or more) of files,
//! newest first, kept current by subscription events.

use crate::api::FilePage;
use crate::model::{EventKind, FileEvent, FileInfo, Place, Status};

/// Files listed, in the server's order (newest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibraryView {
    pub files: Vec<FileInfo>,
    /// Files matching the filter on the server, on all pages.
    pub total: i64,
    pub has_next: bool,
    pub end_cursor: Option<String>,
    /// Only files in this state; all when `None`.
    pub filter: Option<Status>,
    /// Only files in this source or folder. Events do not say where a file is, so a
    /// placed view updates the files it lists and does not take in others.
    pub place: Place,
    /// A first page has arrived.
    pub loaded: bool,
}

/// What an event asks of the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    Nothing,
    /// Fetch this file and [`LibraryView::upsert`] it: one this view does
    /// not have yet may belong in it, or one just finished has new facts.
    Fetch(String),
}

impl LibraryView {
    /// Replaces everything with a first page.
    pub fn reset(&mut self, filter: Option<Status>, page: FilePage) {
        self.reset_at(filter, Place::default(), page);
    }

    /// Replaces everything with a first page of the files in `place`.
    pub fn reset_at(&mut self, filter: Option<Status>, place: Place, page: FilePage) {
        *self = LibraryView {
            files: Vec::new(),
            total: page.total,
            has_next: page.has_next,
            end_cursor: page.end_cursor.clone(),
            filter,
            place,
            loaded: true,
        };
        self.extend(page.files);
    }

    /// Adds the next page (cursor pagination).
    pub fn append(&mut self, page: FilePage) {
        self.total = page.total;
        self.has_next = page.has_next;
        self.end_cursor = page.end_cursor.clone();
        self.extend(page.files);
    }

    fn extend(&mut self, files: Vec<FileInfo>) {
        for f in files {
            if !self.files.iter().any(|g| g.id == f.id) {
                self.files.push(f);
            }
        }
    }

    fn matches(&self, status: Status) -> bool {
        self.filter.is_none_or(|f| f == status)
    }

    /// Takes a file out (deleted here, or gone from the filter).
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.files.len();
        self.files.retain(|f| f.id != id);
        let removed = self.files.len() < before;
        if removed {
            self.total = (self.total - 1).max(0);
        }
        removed
    }

    pub fn get(&self, id: &str) -> Option<&FileInfo> {
        self.files.iter().find(|f| f.id == id)
    }

    /// Takes a file the server sent whole (upload answer, fetch after an
    /// event): updates it, places it by upload time, or drops it when it left
    /// the filter. A file older than the last one loaded waits for its page.
    pub fn upsert(&mut self, file: FileInfo) {
        if !self.matches(file.status) {
            self.remove(&file.id);
            return;
        }
        if let Some(existing) = self.files.iter_mut().find(|f| f.id == file.id) {
            *existing = file;
            return;
        }
        if !self.place.is_all() {
            // Whether it lies in the place is not known here; the next reload shows it.
            return;
        }
        // RFC 3339 in UTC from one server: text order is time order.
        let position = self
            .files
            .iter()
            .position(|f| f.created_at <= file.created_at);
        match position {
            Some(i) => self.files.insert(i, file),
            None if !self.has_next => self.files.push(file),
            None => return,
        }
        self.total += 1;
    }

    /// Applies a subscription event.
    pub fn apply(&mut self, event: &FileEvent) -> Follow {
        // Markers about the stream itself, not about a file (the app resyncs on Lagged).
        if matches!(
            event.kind,
            EventKind::Subscribed | EventKind::Lagged | EventKind::Scan | EventKind::Reindex
        ) {
            return Follow::Nothing;
        }
        if event.kind == EventKind::Deleted {
            self.remove(&event.file_id);
            return Follow::Nothing;
        }
        if !self.matches(event.status) {
            self.remove(&event.file_id);
            return Follow::Nothing;
        }
        match self.files.iter_mut().find(|f| f.id == event.file_id) {
            Some(file) => {
                // Finished: decoding filled in duration, codec, rate and
                // channels, which events do not carry.
                let finished = event.status != file.status
                    && matches!(event.status, Status::Indexed | Status::Failed);
                file.status = event.status;
                file.windows_done = event.windows_done;
                file.windows_total = event.windows_total;
                file.error_code = event.error_code.clone();
                file.error_message = event.error_message.clone();
                if finished {
                    Follow::Fetch(event.file_id.clone())
                } else {
                    Follow::Nothing
                }
            }
            None if self.loaded && self.place.is_all() => Follow::Fetch(event.file_id.clone()),
            None => Follow::Nothing,
        }
    }

    /// Files still being processed, for the header.
    pub fn in_progress(&self) -> usize {
        self.files.iter().filter(|f| f.status.in_progress()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn file(id: &str, created: &str, status: Status) -> FileInfo {
        FileInfo {
            id: id.into(),
            name: format!("{id}.wav"),
            size_bytes: 1000.0,
            container: "wav".into(),
            codec: None,
            duration_s: None,
            sample_rate: None,
            channels: None,
            status,
            windows_done: 0,
            windows_total: 0,
            error_code: None,
            error_message: None,
            created_at: format!("2026-11-30T10:00:{created}Z"),
            url: format!("/files/{id}"),
        }
    }

    fn event(id: &str, kind: EventKind, status: Status, done: i64, total: i64) -> FileEvent {
        FileEvent {
            file_id: id.into(),
            kind,
            status,
            windows_done: done,
            windows_total: total,
            error_code: None,
            error_message: None,
            scan: None,
        }
    }

    fn page(files: Vec<FileInfo>, total: i64, has_next: bool) -> FilePage {
        FilePage {
            end_cursor: files.last().map(|f| f.id.clone()),
            files,
            total,
            has_next,
        }
    }

    fn ids(v: &LibraryView) -> Vec<&str> {
        v.files.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn events_move_files_through_their_stages() {
        let mut v = LibraryView::default();
        v.reset(
            None,
            page(
                vec![
                    file("b", "02", Status::Queued),
                    file("a", "01", Status::Indexed),
                ],
                2,
                false,
            ),
        );
        assert_eq!(
            v.apply(&event("b", EventKind::Status, Status::Decoding, 0, 3)),
            Follow::Nothing
        );
        assert_eq!(
            v.apply(&event("b", EventKind::Progress, Status::Embedding, 2, 3)),
            Follow::Nothing
        );
        let b = v.get("b").unwrap();
        assert_eq!(
            (b.status, b.windows_done, b.windows_total),
            (Status::Embedding, 2, 3)
        );
        assert_eq!(v.in_progress(), 1);
        let mut failed = event("b", EventKind::Status, Status::Failed, 2, 3);
        failed.error_message = Some("corrupt".into());
        // Finished: fetched again for what decoding learnt; only once.
        assert_eq!(v.apply(&failed), Follow::Fetch("b".into()));
        assert_eq!(v.apply(&failed), Follow::Nothing);
        assert_eq!(
            v.get("b").unwrap().error_message.as_deref(),
            Some("corrupt")
        );
        assert_eq!(v.in_progress(), 0);
    }

    #[test]
    fn unknown_files_are_fetched_then_placed_by_time() {
        let mut v = LibraryView::default();
        // Before the first page nothing is fetched: the page will have it.
        assert_eq!(
            v.apply(&event("c", EventKind::Added, Status::Queued, 0, 0)),
            Follow::Nothing
        );
        v.reset(
            None,
            page(
                vec![
                    file("b", "02", Status::Indexed),
                    file("a", "01", Status::Indexed),
                ],
                2,
                false,
            ),
        );
        assert_eq!(
            v.apply(&event("c", EventKind::Added, Status::Queued, 0, 0)),
            Follow::Fetch("c".into())
        );
        v.upsert(file("c", "03", Status::Queued));
        v.upsert(file("c", "03", Status::Decoding)); // again: updated, not doubled
        assert_eq!(ids(&v), ["c", "b", "a"]);
        assert_eq!(v.total, 3);
        assert_eq!(v.get("c").unwrap().status, Status::Decoding);
    }

    #[test]
    fn older_files_wait_for_their_page() {
        let mut v = LibraryView::default();
        v.reset(
            None,
            page(
                vec![
                    file("c", "03", Status::Indexed),
                    file("b", "02", Status::Indexed),
                ],
                3,
                true,
            ),
        );
        v.upsert(file("a", "01", Status::Queued)); // reprocessed, on page 2
        assert_eq!(ids(&v), ["c", "b"]);
        assert_eq!(v.total, 3);
        v.append(page(
            vec![
                file("a", "01", Status::Queued),
                file("b", "02", Status::Indexed),
            ],
            3,
            false,
        ));
        assert_eq!(ids(&v), ["c", "b", "a"]);
    }

    #[test]
    fn deletes_and_filters() {
        let mut v = LibraryView::default();
        v.reset(
            Some(Status::Queued),
            page(
                vec![
                    file("b", "02", Status::Queued),
                    file("a", "01", Status::Queued),
                ],
                2,
                false,
            ),
        );
        // Leaves the filter: gone from this view.
        v.apply(&event("b", EventKind::Status, Status::Decoding, 0, 1));
        assert_eq!(ids(&v), ["a"]);
        assert_eq!(v.total, 1);
        // Another state's file is not fetched.
        assert_eq!(
            v.apply(&event("z", EventKind::Status, Status::Indexed, 1, 1)),
            Follow::Nothing
        );
        v.apply(&event("a", EventKind::Deleted, Status::Queued, 0, 0));
        assert!(v.files.is_empty());
        assert_eq!(v.total, 0);
        // Deleting what is not here changes nothing.
        v.apply(&event("q", EventKind::Deleted, Status::Queued, 0, 0));
        assert_eq!(v.total, 0);
    }

    #[test]
    fn a_placed_view_updates_its_files_and_takes_in_no_others() {
        let mut v = LibraryView::default();
        let place = Place {
            source_id: Some("s1".into()),
            folder: Some("/music/drums".into()),
        };
        v.reset_at(
            None,
            place,
            page(vec![file("a", "01", Status::Queued)], 1, false),
        );
        // An event about a file of the view updates it.
        let follow = v.apply(&event("a", EventKind::Progress, Status::Embedding, 1, 2));
        assert_eq!(follow, Follow::Nothing);
        assert_eq!(v.files[0].windows_done, 1);
        // A file the view does not list may lie elsewhere: not fetched, not inserted.
        let follow = v.apply(&event("b", EventKind::Added, Status::Queued, 0, 0));
        assert_eq!(follow, Follow::Nothing);
        v.upsert(file("c", "02", Status::Queued));
        assert_eq!(ids(&v), ["a"]);
        assert_eq!(v.total, 1);
        // The whole library takes them in.
        v.reset(None, page(vec![file("a", "01", Status::Queued)], 1, false));
        assert_eq!(
            v.apply(&event("b", EventKind::Added, Status::Queued, 0, 0)),
            Follow::Fetch("b".into())
        );
    }
}
