//! The client's own view of the server's types.
//!
//! graphql_client generates one set of types per operation; pages work on
//! these instead, converted once in `api`.

use std::fmt;

/// A file's processing state (`FileStatus` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Decoding,
    Embedding,
    Indexed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Decoding,
        Status::Embedding,
        Status::Indexed,
        Status::Failed,
    ];

    /// As the schema spells it (also the Library filter's URL value).
    pub fn as_api(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Decoding => "DECODING",
            Status::Embedding => "EMBEDDING",
            Status::Indexed => "INDEXED",
            Status::Failed => "FAILED",
        }
    }

    pub fn from_api(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|v| v.as_api().eq_ignore_ascii_case(s))
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Decoding => "Decoding",
            Status::Embedding => "Embedding",
            Status::Indexed => "Ready",
            Status::Failed => "Failed",
        }
    }

    /// Still moving: a worker has it or will take it.
    pub fn in_progress(self) -> bool {
        matches!(self, Status::Queued | Status::Decoding | Status::Embedding)
    }

    /// CSS class suffix.
    pub fn css(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Decoding => "decoding",
            Status::Embedding => "embedding",
            Status::Indexed => "indexed",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One file of the library.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub id: String,
    pub name: String,
    pub size_bytes: f64,
    pub container: String,
    pub codec: Option<String>,
    pub duration_s: Option<f64>,
    pub sample_rate: Option<i64>,
    pub channels: Option<i64>,
    pub status: Status,
    pub windows_done: i64,
    pub windows_total: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Where the original streams from (`/files/{id}`, Range requests).
    pub url: String,
}

/// What happened to a file (`FileEventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Snapshot,
    Added,
    Status,
    Progress,
    Deleted,
    /// The subscription is live (about the stream, not a file).
    Subscribed,
    /// Events were dropped for this client: what it shows must be refetched.
    Lagged,
    /// A folder scan's progress (about a source, not a file).
    Scan,
    /// A reindex with another model advanced or switched (about the library, not a file).
    Reindex,
}

/// One processing event from the subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEvent {
    pub file_id: String,
    pub kind: EventKind,
    pub status: Status,
    pub windows_done: i64,
    pub windows_total: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// On SCAN events: the scan's progress.
    pub scan: Option<SourceScan>,
}

/// Where a source's scanning stands (`SourceState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    Idle,
    Scanning,
    Unavailable,
    Detached,
}

impl SourceState {
    pub fn label(self) -> &'static str {
        match self {
            SourceState::Idle => "Up to date",
            SourceState::Scanning => "Scanning",
            SourceState::Unavailable => "Unavailable",
            SourceState::Detached => "Detached",
        }
    }

    pub fn css(self) -> &'static str {
        match self {
            SourceState::Idle => "indexed",
            SourceState::Scanning => "embedding",
            SourceState::Unavailable => "failed",
            SourceState::Detached => "queued",
        }
    }
}

/// A scan's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCounts {
    pub found: i64,
    pub new: i64,
    pub changed: i64,
    pub moved: i64,
    pub gone: i64,
    pub failed: i64,
}

impl ScanCounts {
    /// "found 12 · new 3 · moved 1": the counters that are not zero (found always).
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("found {}", self.found)];
        for (label, n) in [
            ("new", self.new),
            ("changed", self.changed),
            ("moved", self.moved),
            ("gone", self.gone),
            ("unreadable", self.failed),
        ] {
            if n > 0 {
                parts.push(format!("{label} {n}"));
            }
        }
        parts.join(" · ")
    }
}

/// A SCAN event's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceScan {
    pub source_id: String,
    pub state: SourceState,
    pub counts: ScanCounts,
    pub error: Option<String>,
}

/// A place the library's files come from: a folder read in place, or the uploads.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub id: String,
    pub is_folder: bool,
    pub path: String,
    pub state: SourceState,
    pub file_count: i64,
    pub scanned_at: Option<String>,
    pub counts: ScanCounts,
    pub error: Option<String>,
}

impl SourceInfo {
    /// The row with a live scan's progress laid over it.
    pub fn with_scan(mut self, scan: Option<&SourceScan>) -> Self {
        if let Some(scan) = scan.filter(|s| s.source_id == self.id) {
            self.state = scan.state;
            self.counts = scan.counts;
            self.error = scan.error.clone();
        }
        self
    }
}

/// Which files the library list shows, besides their state: those with a location in
/// one source, and (optionally) under one folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Place {
    pub source_id: Option<String>,
    /// An absolute folder path; files at or below it.
    pub folder: Option<String>,
}

impl Place {
    pub fn is_all(&self) -> bool {
        self.source_id.is_none() && self.folder.is_none()
    }
}

/// One ranked file of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub file: FileInfo,
    /// Cosine similarity of the best window.
    pub score: f64,
    /// Where in the file the match is: start and end seconds.
    pub window: Option<(f64, f64)>,
}

/// A search's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    pub latency_ms: f64,
}

/// What the user asked for, besides the query itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub limit: i64,
    /// Results below this cosine are dropped; `None`: keep all.
    pub threshold: Option<f64>,
    pub min_duration_s: Option<f64>,
    pub max_duration_s: Option<f64>,
    /// Containers to keep; all when empty.
    pub formats: Vec<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            limit: 10,
            threshold: None,
            min_duration_s: None,
            max_duration_s: None,
            formats: Vec::new(),
        }
    }
}

impl SearchOptions {
    /// The filter has something in it.
    pub fn has_filter(&self) -> bool {
        self.min_duration_s.is_some() || self.max_duration_s.is_some() || !self.formats.is_empty()
    }
}

/// The containers the server accepts, for the format filter.
pub const FORMATS: [&str; 7] = ["wav", "aiff", "flac", "mp3", "ogg", "mp4", "aac"];

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str) -> SourceInfo {
        SourceInfo {
            id: id.into(),
            is_folder: true,
            path: "/srv/samples".into(),
            state: SourceState::Idle,
            file_count: 3,
            scanned_at: None,
            counts: ScanCounts {
                found: 3,
                ..ScanCounts::default()
            },
            error: None,
        }
    }

    #[test]
    fn scan_counters_read_as_a_line() {
        assert_eq!(ScanCounts::default().summary(), "found 0");
        let counts = ScanCounts {
            found: 12,
            new: 3,
            moved: 1,
            failed: 2,
            ..ScanCounts::default()
        };
        assert_eq!(
            counts.summary(),
            "found 12 · new 3 · moved 1 · unreadable 2"
        );
    }

    #[test]
    fn a_live_scan_overlays_its_own_source_only() {
        let scan = SourceScan {
            source_id: "a".into(),
            state: SourceState::Scanning,
            counts: ScanCounts {
                found: 40,
                new: 37,
                ..ScanCounts::default()
            },
            error: Some("loop at /srv/samples/link".into()),
        };
        let a = source("a").with_scan(Some(&scan));
        assert_eq!(a.state, SourceState::Scanning);
        assert_eq!(a.counts.found, 40);
        assert_eq!(a.error.as_deref(), Some("loop at /srv/samples/link"));
        assert_eq!(source("b").with_scan(Some(&scan)), source("b"));
        assert_eq!(source("a").with_scan(None), source("a"));
    }
}
