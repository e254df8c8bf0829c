//! Typed GraphQL: every operation in `operations.graphql`, checked against
//! the server's `schema.graphql` when the client compiles, and the calls that
//! send them.

use graphql_client::{GraphQLQuery, QueryBody};
use serde::de::DeserializeOwned;

use crate::model::{
    EventKind, FileEvent, FileInfo, Hit, Place, ScanCounts, SearchOptions, SearchResults,
    SourceInfo, SourceScan, SourceState, Status,
};
use crate::platform::{self, PickedFile, Progress};

/// Scalars of the schema, as the client holds them.
pub type DateTime = String;
/// Sent as `null`; the file itself travels in the multipart body.
pub type Upload = serde_json::Value;

macro_rules! operation {
    ($name:ident) => {
        #[derive(GraphQLQuery)]
        #[graphql(
            schema_path = "../schema.graphql",
            query_path = "src/api/operations.graphql",
            response_derives = "Debug, Clone, PartialEq",
            variables_derives = "Debug, Clone"
        )]
        pub struct $name;
    };
}

operation!(Access);
operation!(Health);
operation!(Files);
operation!(FileById);
operation!(TextSearch);
operation!(Similar);
operation!(Analytics);
operation!(UploadFiles);
operation!(AudioSearch);
operation!(DeleteFile);
operation!(ReprocessFile);
operation!(LibraryEvents);
operation!(Sources);
operation!(AddFolder);
operation!(RescanFolder);
operation!(RemoveFolder);

/// Why a call failed, for people; `code` is the server's
/// `extensions.code` (or `OFFLINE` / `HTTP` / `BAD_RESPONSE` from here).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ApiError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads a GraphQL response body: the data, or the first error with its code.
pub fn decode<T: DeserializeOwned>(status: u16, body: &str) -> Result<T, ApiError> {
    let response: graphql_client::Response<T> = serde_json::from_str(body).map_err(|e| {
        if (200..300).contains(&status) {
            ApiError::new(
                "BAD_RESPONSE",
                format!("unreadable answer from the server: {e}"),
            )
        } else {
            let snippet: String = body.chars().take(200).collect();
            ApiError::new("HTTP", format!("the server answered {status}: {snippet}"))
        }
    })?;
    if let Some(error) = response.errors.as_ref().and_then(|e| e.first()) {
        let code = error
            .extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .and_then(|c| c.as_str())
            .unwrap_or("ERROR");
        return Err(ApiError::new(code, error.message.clone()));
    }
    response
        .data
        .ok_or_else(|| ApiError::new("BAD_RESPONSE", "the server sent no data"))
}

/// The multipart request spec's `map`: file part `i` fills `variables.<path>.i`
/// (or `variables.<path>` for a single upload).
pub fn multipart_map(variable: &str, count: usize, list: bool) -> String {
    let entries: Vec<String> = (0..count)
        .map(|i| {
            if list {
                format!("\"{i}\":[\"variables.{variable}.{i}\"]")
            } else {
                format!("\"{i}\":[\"variables.{variable}\"]")
            }
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// The `SearchFilterInput` of one operation's module, from the options.
macro_rules! filter {
    ($module:ident, $options:expr) => {{
        let o: &SearchOptions = $options;
        o.has_filter().then(|| $module::SearchFilterInput {
            min_duration_s: o.min_duration_s,
            max_duration_s: o.max_duration_s,
            formats: (!o.formats.is_empty()).then(|| o.formats.clone()),
            uploaded_after: None,
            uploaded_before: None,
        })
    }};
}

/// The server's API, at `base` (e.g. `http://127.0.0.1:8000`).
#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    base: String,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Api {
            base: base.into().trim_end_matches('/').to_string(),
        }
    }

    /// The server this page came from (web), or `TRAUM_SERVER_URL` (desktop).
    pub fn current() -> Self {
        Api::new(platform::server_base())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base)
    }

    /// A file's audio, absolute (desktop needs the host).
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            path.to_string()
        }
    }

    async fn run<Q: GraphQLQuery>(
        &self,
        variables: Q::Variables,
    ) -> Result<Q::ResponseData, ApiError>
    where
        Q::Variables: serde::Serialize,
    {
        let body = serde_json::to_string(&Q::build_query(variables))
            .map_err(|e| ApiError::new("INTERNAL", e.to_string()))?;
        let (status, text) = platform::post_json(&self.graphql_url(), body).await?;
        decode(status, &text)
    }

    async fn run_upload<Q: GraphQLQuery>(
        &self,
        variables: Q::Variables,
        variable: &str,
        list: bool,
        files: Vec<PickedFile>,
        on_progress: Option<Progress>,
    ) -> Result<Q::ResponseData, ApiError>
    where
        Q::Variables: serde::Serialize,
    {
        let query: QueryBody<Q::Variables> = Q::build_query(variables);
        let operations =
            serde_json::to_string(&query).map_err(|e| ApiError::new("INTERNAL", e.to_string()))?;
        let map = multipart_map(variable, files.len(), list);
        let (status, text) =
            platform::post_multipart(&self.graphql_url(), operations, map, files, on_progress)
                .await?;
        decode(status, &text)
    }

    /// What this client's key (or no key) may do here.
    pub async fn access(&self) -> Result<access::AccessAccess, ApiError> {
        Ok(self.run::<Access>(access::Variables).await?.access)
    }

    pub async fn health(&self) -> Result<health::HealthHealth, ApiError> {
        Ok(self.run::<Health>(health::Variables).await?.health)
    }

    /// A page of the library, newest first.
    pub async fn files(
        &self,
        first: i64,
        after: Option<String>,
        status: Option<Status>,
        place: &Place,
    ) -> Result<FilePage, ApiError> {
        let status = status.map(|s| match s {
            Status::Queued => files::FileStatus::QUEUED,
            Status::Decoding => files::FileStatus::DECODING,
            Status::Embedding => files::FileStatus::EMBEDDING,
            Status::Indexed => files::FileStatus::INDEXED,
            Status::Failed => files::FileStatus::FAILED,
        });
        let data = self
            .run::<Files>(files::Variables {
                first,
                after,
                status,
                source_id: place.source_id.clone(),
                folder: place.folder.clone(),
            })
            .await?;
        Ok(FilePage {
            total: data.files.total_count,
            has_next: data.files.page_info.has_next_page,
            end_cursor: data.files.page_info.end_cursor,
            files: data.files.nodes.into_iter().map(FileInfo::from).collect(),
        })
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileInfo>, ApiError> {
        let data = self
            .run::<FileById>(file_by_id::Variables { id: id.to_string() })
            .await?;
        Ok(data.file.map(FileInfo::from))
    }

    pub async fn search_text(
        &self,
        text: &str,
        options: &SearchOptions,
    ) -> Result<SearchResults, ApiError> {
        let v = text_search::Variables {
            text: text.to_string(),
            limit: Some(options.limit),
            threshold: options.threshold,
            filter: filter!(text_search, options),
        };
        Ok(self.run::<TextSearch>(v).await?.search.into())
    }

    pub async fn similar(
        &self,
        file_id: &str,
        options: &SearchOptions,
    ) -> Result<SearchResults, ApiError> {
        let v = similar::Variables {
            file_id: file_id.to_string(),
            limit: Some(options.limit),
            threshold: options.threshold,
            filter: filter!(similar, options),
        };
        Ok(self.run::<Similar>(v).await?.similar.into())
    }

    pub async fn search_audio(
        &self,
        clip: PickedFile,
        options: &SearchOptions,
    ) -> Result<SearchResults, ApiError> {
        let v = audio_search::Variables {
            file: serde_json::Value::Null,
            limit: Some(options.limit),
            threshold: options.threshold,
            filter: filter!(audio_search, options),
        };
        let data = self
            .run_upload::<AudioSearch>(v, "file", false, vec![clip], None)
            .await?;
        Ok(data.search_by_audio.into())
    }

    /// The library's sources: folders by path, then the uploads.
    pub async fn sources(&self) -> Result<Vec<SourceInfo>, ApiError> {
        use sources::{SourceKind as K, SourceState as S};
        let data = self.run::<Sources>(sources::Variables).await?;
        Ok(data
            .sources
            .into_iter()
            .map(|s| SourceInfo {
                id: s.id,
                is_folder: matches!(s.kind, K::FOLDER),
                path: s.path,
                state: match s.state {
                    S::IDLE => SourceState::Idle,
                    S::SCANNING => SourceState::Scanning,
                    S::UNAVAILABLE => SourceState::Unavailable,
                    S::DETACHED | S::Other(_) => SourceState::Detached,
                },
                file_count: s.file_count,
                scanned_at: s.scanned_at,
                counts: ScanCounts {
                    found: s.scan.found,
                    new: s.scan.new,
                    changed: s.scan.changed,
                    moved: s.scan.moved,
                    gone: s.scan.gone,
                    failed: s.scan.failed,
                },
                error: s.scan.error,
            })
            .collect())
    }

    /// Adds a folder the server reads in place, and scans it; its id.
    pub async fn add_folder(&self, path: &str) -> Result<String, ApiError> {
        let v = add_folder::Variables {
            path: path.to_string(),
        };
        Ok(self.run::<AddFolder>(v).await?.add_folder.id)
    }

    pub async fn rescan_folder(&self, id: &str) -> Result<(), ApiError> {
        let v = rescan_folder::Variables { id: id.to_string() };
        self.run::<RescanFolder>(v).await?;
        Ok(())
    }

    /// Stops reading a folder; with `keep_files` its files stay in the library.
    pub async fn remove_folder(&self, id: &str, keep_files: bool) -> Result<(), ApiError> {
        let v = remove_folder::Variables {
            id: id.to_string(),
            keep_files,
        };
        self.run::<RemoveFolder>(v).await?;
        Ok(())
    }

    /// Uploads files in one request; each comes back on its own.
    /// `on_progress` hears bytes sent of the whole request.
    pub async fn upload(
        &self,
        files: Vec<PickedFile>,
        on_progress: Option<Progress>,
    ) -> Result<Vec<UploadResult>, ApiError> {
        let v = upload_files::Variables {
            files: vec![serde_json::Value::Null; files.len()],
        };
        let data = self
            .run_upload::<UploadFiles>(v, "files", true, files, on_progress)
            .await?;
        Ok(data
            .upload_files
            .into_iter()
            .map(|o| UploadResult {
                filename: o.filename,
                created: o.created,
                file: o.file.map(FileInfo::from),
                error: o.error.map(|e| ApiError {
                    code: e.code,
                    message: e.message,
                }),
            })
            .collect())
    }

    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.run::<DeleteFile>(delete_file::Variables { id: id.to_string() })
            .await?;
        Ok(())
    }

    pub async fn reprocess(&self, id: &str) -> Result<FileInfo, ApiError> {
        let data = self
            .run::<ReprocessFile>(reprocess_file::Variables { id: id.to_string() })
            .await?;
        Ok(data.reprocess_file.into())
    }

    pub async fn analytics(&self, recent: i64) -> Result<analytics::ResponseData, ApiError> {
        self.run::<Analytics>(analytics::Variables { recent }).await
    }
}

/// A page of `files`.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePage {
    pub files: Vec<FileInfo>,
    pub total: i64,
    pub has_next: bool,
    pub end_cursor: Option<String>,
}

/// One file of an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadResult {
    pub filename: String,
    /// False when the content was already in the library.
    pub created: bool,
    pub file: Option<FileInfo>,
    pub error: Option<ApiError>,
}

/// The subscription's query text, for `live`.
pub fn library_events_query() -> QueryBody<library_events::Variables> {
    LibraryEvents::build_query(library_events::Variables)
}

/// Each operation has its own copy of the `FileFields` fragment, its
/// `FileStatus` and, for searches, `ResponseFields`: one conversion each.
macro_rules! conversions {
    (files: $($module:ident),*; responses: $($rmodule:ident),*) => {
        $(
            impl From<$module::FileStatus> for Status {
                fn from(s: $module::FileStatus) -> Status {
                    match s {
                        $module::FileStatus::QUEUED => Status::Queued,
                        $module::FileStatus::DECODING => Status::Decoding,
                        $module::FileStatus::EMBEDDING => Status::Embedding,
                        $module::FileStatus::INDEXED => Status::Indexed,
                        // A state this client does not know yet: treat as
                        // finished-with-problem rather than spin forever.
                        $module::FileStatus::FAILED | $module::FileStatus::Other(_) => Status::Failed,
                    }
                }
            }

            impl From<$module::FileFields> for FileInfo {
                fn from(f: $module::FileFields) -> FileInfo {
                    FileInfo {
                        id: f.id,
                        name: f.original_name,
                        size_bytes: f.size_bytes,
                        container: f.container,
                        codec: f.codec,
                        duration_s: f.duration_s,
                        sample_rate: f.sample_rate,
                        channels: f.channels,
                        status: f.status.into(),
                        windows_done: f.windows_done,
                        windows_total: f.windows_total,
                        error_code: f.error_code,
                        error_message: f.error_message,
                        created_at: f.created_at,
                        url: f.url,
                    }
                }
            }
        )*
        $(
            impl From<$rmodule::ResponseFields> for SearchResults {
                fn from(r: $rmodule::ResponseFields) -> SearchResults {
                    SearchResults {
                        latency_ms: r.latency_ms,
                        hits: r
                            .results
                            .into_iter()
                            .map(|h| Hit {
                                score: h.score,
                                window: h.best_window.map(|w| (w.start_s, w.end_s)),
                                file: h.file.into(),
                            })
                            .collect(),
                    }
                }
            }
        )*
    };
}

conversions!(
    files: files, file_by_id, text_search, similar, upload_files, audio_search, reprocess_file;
    responses: text_search, similar, audio_search
);

impl From<library_events::LibraryEventsLibraryEvents> for FileEvent {
    fn from(e: library_events::LibraryEventsLibraryEvents) -> FileEvent {
        use library_events::FileEventKind as K;
        FileEvent {
            file_id: e.file_id,
            kind: match e.kind {
                K::SNAPSHOT => EventKind::Snapshot,
                K::ADDED => EventKind::Added,
                K::STATUS | K::Other(_) => EventKind::Status,
                K::PROGRESS => EventKind::Progress,
                K::DELETED => EventKind::Deleted,
                K::SUBSCRIBED => EventKind::Subscribed,
                K::LAGGED => EventKind::Lagged,
                K::SCAN => EventKind::Scan,
                K::REINDEX => EventKind::Reindex,
            },
            status: e.status.into(),
            windows_done: e.windows_done,
            windows_total: e.windows_total,
            error_code: e.error_code,
            error_message: e.error_message,
            scan: e.scan.map(|s| {
                use library_events::SourceState as S;
                SourceScan {
                    source_id: s.source_id,
                    state: match s.state {
                        S::IDLE => SourceState::Idle,
                        S::SCANNING => SourceState::Scanning,
                        S::UNAVAILABLE => SourceState::Unavailable,
                        S::DETACHED | S::Other(_) => SourceState::Detached,
                    },
                    counts: ScanCounts {
                        found: s.found,
                        new: s.new,
                        changed: s.changed,
                        moved: s.moved,
                        gone: s.gone,
                        failed: s.failed,
                    },
                    error: s.error,
                }
            }),
        }
    }
}

impl From<library_events::FileStatus> for Status {
    fn from(s: library_events::FileStatus) -> Status {
        use library_events::FileStatus as S;
        match s {
            S::QUEUED => Status::Queued,
            S::DECODING => Status::Decoding,
            S::EMBEDDING => Status::Embedding,
            S::INDEXED => Status::Indexed,
            S::FAILED | S::Other(_) => Status::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_code() {
        let body = r#"{"data":null,"errors":[{"message":"file is 120 MB; the limit is 100 MB","extensions":{"code":"TOO_LARGE"}}]}"#;
        let err = decode::<health::ResponseData>(200, body).unwrap_err();
        assert_eq!(err.code, "TOO_LARGE");
        assert!(err.message.contains("limit"));
        let err = decode::<health::ResponseData>(502, "<html>Bad gateway</html>").unwrap_err();
        assert_eq!(err.code, "HTTP");
        assert!(err.message.contains("502"), "{}", err.message);
    }

    #[test]
    fn search_response_converts() {
        let body = r#"{"data":{"search":{"latencyMs":3.5,"results":[{"score":0.81,
            "bestWindow":{"startS":10.0,"endS":20.0,"score":0.81},
            "file":{"id":"a","originalName":"kick.wav","sizeBytes":1000.0,"container":"wav",
            "codec":"pcm_s16le","durationS":25.0,"sampleRate":48000,"channels":1,
            "status":"INDEXED","windowsDone":3,"windowsTotal":3,"errorCode":null,
            "errorMessage":null,"createdAt":"2026-11-30T10:00:00Z","url":"/files/a"}}]}}}"#;
        let data = decode::<text_search::ResponseData>(200, body).unwrap();
        let results: SearchResults = data.search.into();
        assert_eq!(results.latency_ms, 3.5);
        assert_eq!(results.hits.len(), 1);
        assert_eq!(results.hits[0].window, Some((10.0, 20.0)));
        assert_eq!(results.hits[0].file.status, Status::Indexed);
        assert_eq!(results.hits[0].file.name, "kick.wav");
    }

    #[test]
    fn multipart_maps() {
        assert_eq!(
            multipart_map("files", 2, true),
            r#"{"0":["variables.files.0"],"1":["variables.files.1"]}"#
        );
        assert_eq!(
            multipart_map("file", 1, false),
            r#"{"0":["variables.file"]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&multipart_map("files", 3, true)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn filters_only_when_set() {
        let mut o = SearchOptions::default();
        assert!(filter!(text_search, &o).is_none());
        o.formats = vec!["wav".into()];
        o.min_duration_s = Some(2.0);
        let f = filter!(text_search, &o).unwrap();
        assert_eq!(f.formats, Some(vec!["wav".to_string()]));
        assert_eq!(f.min_duration_s, Some(2.0));
        assert_eq!(f.max_duration_s, None);
    }
}
