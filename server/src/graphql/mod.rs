//! The GraphQL API: schema built once, SDL exported from code
//! (`traum schema`, kept equal to `schema.graphql` by a test).

mod limits;
pub mod types;

pub use limits::{document_depth, DepthLimit};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_graphql::connection::{Connection, Edge};
use async_graphql::futures_util::Stream;
use async_graphql::{
    Context, ErrorExtensions, Object, Result, Schema, SimpleObject, Subscription, Upload, ID,
};
use chrono::{DateTime, Utc};
use entity::store::{self, Cursor, ListQuery, SortOrder};
use futures_util::StreamExt;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use traum_index::SearchParams;
use uuid::Uuid;

use crate::auth::{Auth, Caller, Need, Scope};
use crate::error::{ApiError, GqlResult};
use crate::events::{ApiFileStatus, FileEvent, FileEventKind};
use crate::library::Library;
use crate::storage::{Rejection, StagedFile};
use types::*;

pub type TraumSchema = Schema<Query, Mutation, Subscription>;

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct SchemaLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_complexity: 2000,
        }
    }
}

/// The schema, with the library and the authenticator in its data. Every request adds its
/// [`Caller`]; fields check its scope with [`Need`] guards.
pub fn build_schema(library: Arc<Library>, auth: Arc<Auth>, limits: SchemaLimits) -> TraumSchema {
    Schema::build(Query, Mutation, Subscription)
        .data(library)
        .data(auth)
        .extension(DepthLimit {
            max: limits.max_depth,
        })
        .limit_complexity(limits.max_complexity)
        .finish()
}

/// The schema with its limits but no library: requests parse, validate and meet the depth
/// and complexity limits exactly as in the server; resolvers fail (no data). For the
/// GraphQL fuzz target.
pub fn schema_without_data(limits: SchemaLimits) -> TraumSchema {
    Schema::build(Query, Mutation, Subscription)
        .extension(DepthLimit {
            max: limits.max_depth,
        })
        .limit_complexity(limits.max_complexity)
        .finish()
}

/// The SDL of the schema (what `schema.graphql` holds).
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

/// Most results one search returns.
pub const MAX_SEARCH_LIMIT: i32 = 200;

/// Files received by the streaming multipart handler, by upload index: the
/// staged file, or why it was refused. Resolvers take theirs; whatever is
/// left when the request ends is dropped, which deletes it.
#[derive(Default)]
pub struct UploadReceipts(pub Mutex<Vec<Option<Received>>>);

/// One received upload.
pub enum Received {
    Staged(StagedFile),
    Rejected {
        filename: String,
        rejection: Rejection,
    },
}

impl Received {
    /// The same upload again, for a second variable mapped to the same file part.
    pub async fn duplicate(&self) -> Result<Received, ApiError> {
        match self {
            Received::Staged(staged) => {
                staged.duplicate().await.map(Received::Staged).map_err(|e| {
                    ApiError::Internal(format!("cannot link {}: {e}", staged.tmp_path.display()))
                })
            }
            Received::Rejected {
                filename,
                rejection,
            } => Ok(Received::Rejected {
                filename: filename.clone(),
                rejection: rejection.clone(),
            }),
        }
    }
}

fn library<'a>(ctx: &Context<'a>) -> Result<&'a Arc<Library>> {
    ctx.data::<Arc<Library>>()
}

fn parse_id(id: &ID) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id.as_str())
        .map_err(|_| ApiError::BadRequest(format!("{:?} is not a file id", id.as_str())))
}

fn search_params(
    limit: i32,
    threshold: Option<f64>,
    filter: Option<SearchFilterInput>,
) -> Result<SearchParams, ApiError> {
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}"
        )));
    }
    if let Some(t) = threshold {
        if !(-1.0..=1.0).contains(&t) {
            return Err(ApiError::BadRequest(format!(
                "threshold is a cosine similarity between -1 and 1, got {t}"
            )));
        }
    }
    Ok(SearchParams {
        limit: limit as usize,
        score_threshold: threshold.map(|t| t as f32),
        filter: filter.unwrap_or_default().into(),
        exclude_file: None,
    })
}

/// The staged file of an upload, from the streaming multipart handler's
/// receipts (the only way files reach the schema).
fn take_upload(ctx: &Context<'_>, upload: &Upload) -> Result<Received, ApiError> {
    let receipts = ctx
        .data::<Arc<UploadReceipts>>()
        .map_err(|_| ApiError::Internal("upload outside a multipart request".into()))?;
    let taken = receipts
        .0
        .lock()
        .unwrap()
        .get_mut(upload.0)
        .and_then(Option::take);
    taken.ok_or_else(|| ApiError::BadRequest("the same upload is used twice in one request".into()))
}

fn staged_upload(ctx: &Context<'_>, upload: &Upload) -> Result<StagedFile, ApiError> {
    match take_upload(ctx, upload)? {
        Received::Staged(s) => Ok(s),
        Received::Rejected {
            filename,
            rejection,
        } => {
            if let Ok(lib) = library(ctx) {
                lib.metrics.uploads.with_label_values(&["rejected"]).inc();
            }
            Err(ApiError::Rejected {
                filename,
                rejection,
            })
        }
    }
}

pub struct Query;

#[derive(SimpleObject)]
pub struct FilesTotal {
    /// Files matching the filter, on all pages.
    pub total_count: i32,
}

#[Object]
impl Query {
    /// Is the server ready, and what is it running.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn health(&self, ctx: &Context<'_>) -> Result<Health> {
        let lib = library(ctx)?;
        let counts = store::count_by_status(&lib.db).await.gql()?;
        let model = lib.models.active();
        let points = model.index.count().await.gql()?;
        let status = lib.index_status().await;
        let info = model.embedder.info();
        Ok(Health {
            status: if lib.shutdown.is_cancelled() {
                "shutting_down".into()
            } else {
                "ok".into()
            },
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: lib.started.elapsed().as_secs_f64(),
            model: ModelInfo {
                id: info.model_id.clone(),
                key: model.key.clone(),
                weights_digest: model.weights_digest.clone(),
                device: info.device.clone(),
                dtype: info.dtype.clone(),
                loaded: true,
                embedding_dim: info.embedding_dim as i32,
                sample_rate: info.sample_rate as i32,
                window_s: info.window_samples as f64 / f64::from(info.sample_rate),
                max_batch: lib.config.batcher.max_batch as i32,
            },
            vector_store: VectorStoreInfo {
                kind: lib.index_kind.into(),
                files: points.files as f64,
                windows: points.windows as f64,
                points: (points.files + points.windows) as f64,
                nodes: status
                    .as_ref()
                    .map(|s| {
                        s.nodes
                            .iter()
                            .map(|n| VectorStoreNode {
                                url: n.url.clone(),
                                reachable: n.reachable,
                                version: n.version.clone(),
                                error: n.error.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                collections: status
                    .as_ref()
                    .map(|s| {
                        s.collections
                            .iter()
                            .map(|c| VectorCollection {
                                name: c.name.clone(),
                                status: c.status.clone(),
                                points: c.points as f64,
                                indexed_vectors: c.indexed_vectors as f64,
                                segments: c.segments as i32,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                status_error: status.err(),
            },
            queue: QueueInfo {
                queued: counts.queued as i32,
                processing: (counts.decoding + counts.embedding) as i32,
                indexed: counts.indexed as i32,
                failed: counts.failed as i32,
                embed_pending: model.embedder.queue_depth() as i32,
            },
            reindex: lib.models.progress().map(Into::into),
        })
    }

    /// The model indexes of the library: the active one, a reindex's target, and those
    /// kept from earlier models (until `dropModel`).
    #[graphql(guard = "Need(Scope::Read)")]
    async fn models(&self, ctx: &Context<'_>) -> Result<Vec<ModelIndexInfo>> {
        let lib = library(ctx)?;
        let rows = crate::models::list(lib).await.gql()?;
        Ok(rows
            .into_iter()
            .map(|row| ModelIndexInfo::new(lib, row))
            .collect())
    }

    /// One file, or null if there is none with this id.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn file(&self, ctx: &Context<'_>, id: ID) -> Result<Option<AudioFile>> {
        let lib = library(ctx)?;
        let id = parse_id(&id).gql()?;
        Ok(store::get(&lib.db, id).await.gql()?.map(AudioFile))
    }

    /// The library, a page at a time (Relay cursor connection).
    #[graphql(guard = "Need(Scope::Read)")]
    // One argument per GraphQL argument.
    #[allow(clippy::too_many_arguments)]
    async fn files(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20, validator(minimum = 0, maximum = 200))] first: i32,
        after: Option<String>,
        status: Option<ApiFileStatus>,
        #[graphql(default)] order: FileOrder,
        #[graphql(desc = "Only files with a location in this source.")] source_id: Option<ID>,
        #[graphql(
            desc = "Only files with a location in this folder (an absolute path) or below it."
        )]
        folder: Option<String>,
    ) -> Result<Connection<String, AudioFile, FilesTotal>> {
        let lib = library(ctx)?;
        let after = after.as_deref().map(Cursor::decode).transpose().gql()?;
        let source = source_id.as_ref().map(parse_id).transpose().gql()?;
        let query = ListQuery {
            status: status.map(Into::into),
            source,
            folder,
            order: match order {
                FileOrder::NewestFirst => SortOrder::Desc,
                FileOrder::OldestFirst => SortOrder::Asc,
            },
            after,
            limit: first as u64,
        };
        let page = store::list(&lib.db, &query).await.gql()?;
        let mut connection = Connection::with_additional_fields(
            after.is_some(),
            page.next.is_some(),
            FilesTotal {
                total_count: page.total as i32,
            },
        );
        connection.edges.extend(
            page.items
                .into_iter()
                .map(|row| Edge::new(Cursor::after(&row).encode(), AudioFile(row))),
        );
        Ok(connection)
    }

    /// Where the library's files come from: folders read in place, and the uploads.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn sources(&self, ctx: &Context<'_>) -> Result<Vec<LibrarySource>> {
        let lib = library(ctx)?;
        Ok(lib
            .sources()
            .await
            .gql()?
            .into_iter()
            .map(|(row, file_count)| LibrarySource { row, file_count })
            .collect())
    }

    /// Files that sound like the text, best first, one result per file.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn search(
        &self,
        ctx: &Context<'_>,
        text: String,
        #[graphql(default = 10)] limit: Option<i32>,
        threshold: Option<f64>,
        filter: Option<SearchFilterInput>,
    ) -> Result<SearchResponse> {
        let lib = library(ctx)?;
        let params = search_params(limit.unwrap_or(10), threshold, filter).gql()?;
        let outcome = lib.search_text(&text, params).await.gql()?;
        Ok(outcome.into())
    }

    /// Files that sound like this file ("more like this"), never itself.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn similar(
        &self,
        ctx: &Context<'_>,
        file_id: ID,
        #[graphql(default = 10)] limit: Option<i32>,
        threshold: Option<f64>,
        filter: Option<SearchFilterInput>,
    ) -> Result<SearchResponse> {
        let lib = library(ctx)?;
        let id = parse_id(&file_id).gql()?;
        let params = search_params(limit.unwrap_or(10), threshold, filter).gql()?;
        let outcome = lib.search_similar(id, params).await.gql()?;
        Ok(outcome.into())
    }

    /// Searches per kind and their latency (all time, or since a moment).
    #[graphql(guard = "Need(Scope::Read)")]
    async fn search_stats(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime<Utc>>,
    ) -> Result<SearchStats> {
        let lib = library(ctx)?;
        let s = store::search_stats(&lib.db, since).await.gql()?;
        Ok(SearchStats {
            total: s.total as i32,
            text: s.text as i32,
            audio: s.audio as i32,
            similar: s.similar as i32,
            mean_latency_ms: s.mean_latency_ms,
            p95_latency_ms: s.p95_latency_ms,
        })
    }

    /// The latest searches, newest first.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn recent_searches(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20, validator(minimum = 1, maximum = 1000))] limit: i32,
    ) -> Result<Vec<SearchLogEntry>> {
        let lib = library(ctx)?;
        let rows = store::recent_searches(&lib.db, limit as u64).await.gql()?;
        Ok(rows.into_iter().map(SearchLogEntry).collect())
    }

    /// What the caller may do, and whether this server wants a key (no scope needed: the
    /// web client asks for a key when `scope` is null).
    async fn access(&self, ctx: &Context<'_>) -> Result<Access> {
        let auth = ctx.data::<Arc<Auth>>()?;
        let caller = ctx.data_opt::<Caller>();
        Ok(Access {
            scope: caller.and_then(|c| c.scope).map(ApiScope::from),
            key_name: caller.and_then(|c| c.key.as_ref()).map(|k| k.name.clone()),
            key_prefix: caller
                .and_then(|c| c.key.as_ref())
                .map(|k| k.prefix.clone()),
            keys_required: auth.keys_required().await,
        })
    }

    /// Every API key (never their secrets), newest first.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn api_keys(&self, ctx: &Context<'_>) -> Result<Vec<ApiKeyInfo>> {
        let lib = library(ctx)?;
        let keys = store::list_keys(&lib.db).await.gql()?;
        Ok(keys.into_iter().map(ApiKeyInfo).collect())
    }

    /// What the library holds: files, bytes and seconds of audio, in all
    /// and per container.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn library_stats(&self, ctx: &Context<'_>) -> Result<LibraryStats> {
        let lib = library(ctx)?;
        let shares = store::composition_by_format(&lib.db).await.gql()?;
        Ok(LibraryStats::from_shares(shares))
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Adds a file (GraphQL multipart request). The same content uploaded
    /// again returns the file already in the library.
    #[graphql(guard = "Need(Scope::Write)")]
    async fn upload_file(&self, ctx: &Context<'_>, file: Upload) -> Result<AudioFile> {
        let lib = library(ctx)?;
        let staged = staged_upload(ctx, &file).gql()?;
        let (row, _) = lib.add_file(staged).await.gql()?;
        Ok(AudioFile(row))
    }

    /// Adds several files; each succeeds or fails on its own.
    #[graphql(guard = "Need(Scope::Write)")]
    async fn upload_files(
        &self,
        ctx: &Context<'_>,
        files: Vec<Upload>,
    ) -> Result<Vec<UploadOutcome>> {
        let lib = library(ctx)?;
        let mut out = Vec::with_capacity(files.len());
        for upload in &files {
            let outcome = match staged_upload(ctx, upload) {
                Ok(staged) => {
                    let filename = staged.original_name.clone();
                    match lib.add_file(staged).await {
                        Ok((row, created)) => UploadOutcome {
                            filename,
                            file: Some(AudioFile(row)),
                            created,
                            error: None,
                        },
                        Err(e) => UploadOutcome::failed(filename, &e),
                    }
                }
                Err(ApiError::Rejected {
                    filename,
                    rejection,
                }) => {
                    let e = ApiError::Rejected {
                        filename: filename.clone(),
                        rejection,
                    };
                    UploadOutcome::failed(filename, &e)
                }
                Err(e) => return Err(e.extend()),
            };
            out.push(outcome);
        }
        Ok(out)
    }

    /// Files that sound like an uploaded clip (the clip is not kept).
    #[graphql(guard = "Need(Scope::Write)")]
    async fn search_by_audio(
        &self,
        ctx: &Context<'_>,
        file: Upload,
        #[graphql(default = 10)] limit: Option<i32>,
        threshold: Option<f64>,
        filter: Option<SearchFilterInput>,
    ) -> Result<SearchResponse> {
        let lib = library(ctx)?;
        let params = search_params(limit.unwrap_or(10), threshold, filter).gql()?;
        let staged = staged_upload(ctx, &file).gql()?;
        let outcome = lib.search_audio(staged, params).await.gql()?;
        Ok(outcome.into())
    }

    /// Removes a file: its row, its stored bytes and all its vectors. Safe
    /// while it is processing. Returns the id.
    #[graphql(guard = "Need(Scope::Write)")]
    async fn delete_file(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let lib = library(ctx)?;
        let uuid = parse_id(&id).gql()?;
        lib.delete_file(uuid).await.gql()?;
        Ok(id)
    }

    /// Creates an API key. The secret is in this answer only: it is stored hashed.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        scope: ApiScope,
    ) -> Result<CreatedApiKey> {
        let lib = library(ctx)?;
        let (row, secret) = store::create_key(&lib.db, &name, scope.into())
            .await
            .gql()?;
        tracing::info!(name = %row.name, prefix = %row.prefix, scope = %row.scope, "API key created");
        Ok(CreatedApiKey {
            key: ApiKeyInfo(row),
            secret,
        })
    }

    /// Revokes an API key (by id, or by its prefix); it stops working at once.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: String) -> Result<ApiKeyInfo> {
        let lib = library(ctx)?;
        let row = store::revoke_key(&lib.db, &id).await.gql()?;
        tracing::info!(name = %row.name, prefix = %row.prefix, "API key revoked");
        Ok(ApiKeyInfo(row))
    }

    /// Reads a folder on the server in place (no copy): scans it now (progress as SCAN
    /// events on `libraryEvents`) and follows its changes while the server runs. Adding a
    /// folder that is a source already returns it (and scans it again).
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn add_folder(&self, ctx: &Context<'_>, path: String) -> Result<LibrarySource> {
        let lib = library(ctx)?;
        let row = lib
            .add_folder(std::path::Path::new(&path), true)
            .await
            .gql()?;
        Ok(LibrarySource { row, file_count: 0 })
    }

    /// Scans a folder source again now.
    #[graphql(guard = "Need(Scope::Write)")]
    async fn rescan_folder(&self, ctx: &Context<'_>, id: ID) -> Result<LibrarySource> {
        let lib = library(ctx)?;
        let uuid = parse_id(&id).gql()?;
        let row = lib.rescan_folder(uuid).await.gql()?;
        Ok(LibrarySource { row, file_count: 0 })
    }

    /// Stops reading a folder. With `keepFiles` its files stay in the library (played from
    /// where they are; no longer scanned or watched); without, files found nowhere else
    /// leave the library. The folder on disk is never touched. Returns the id.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn remove_folder(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = false)] keep_files: bool,
    ) -> Result<ID> {
        let lib = library(ctx)?;
        let uuid = parse_id(&id).gql()?;
        lib.remove_folder(uuid, keep_files).await.gql()?;
        Ok(id)
    }

    /// Processes a file again (e.g. after a failure).
    /// Makes a complete reindex (state READY, with `--switch manual`) the active index:
    /// search and new files use its model from then on. Returns once switched.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn switch_model(&self, ctx: &Context<'_>, key: String) -> Result<ModelIndexInfo> {
        let lib = library(ctx)?;
        crate::models::request_switch(lib, &key).await.gql()?;
        let row = entity::store::models::get_model(&lib.db, &key)
            .await
            .gql()?
            .ok_or_else(|| ApiError::NotFound(format!("no model index {key}")))
            .gql()?;
        Ok(ModelIndexInfo::new(lib, row))
    }

    /// Removes a model index that is neither active nor being reindexed to, with its
    /// vectors. False if there was none with this key.
    #[graphql(guard = "Need(Scope::Admin)")]
    async fn drop_model(&self, ctx: &Context<'_>, key: String) -> Result<bool> {
        let lib = library(ctx)?;
        crate::models::drop_model(lib, &key).await.gql()
    }

    #[graphql(guard = "Need(Scope::Write)")]
    async fn reprocess_file(&self, ctx: &Context<'_>, id: ID) -> Result<AudioFile> {
        let lib = library(ctx)?;
        let uuid = parse_id(&id).gql()?;
        Ok(AudioFile(lib.reprocess(uuid).await.gql()?))
    }
}

pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Processing events of the given files: first SUBSCRIBED, then each file's current
    /// state (kind SNAPSHOT; DELETED for an unknown id), then every change. A subscriber that
    /// falls behind gets LAGGED and fresh snapshots instead of a silent gap.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn file_events(
        &self,
        ctx: &Context<'_>,
        ids: Vec<ID>,
    ) -> Result<impl Stream<Item = FileEvent>> {
        let lib = library(ctx)?.clone();
        let wanted: HashSet<Uuid> = ids.iter().map(parse_id).collect::<Result<_, _>>().gql()?;
        if wanted.len() > MAX_SUBSCRIBED_FILES {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_SUBSCRIBED_FILES} files per fileEvents subscription, got {}",
                wanted.len()
            )))
            .gql();
        }
        let wanted = Arc::new(wanted);
        // Subscribe before reading the snapshots, so nothing falls between.
        let live = BroadcastStream::new(lib.events.subscribe());
        let snapshots = file_snapshots(&lib, &wanted).await.gql()?;
        let first = std::iter::once(FileEvent::marker(FileEventKind::Subscribed, None));
        let lib2 = lib.clone();
        let live = live
            .then(move |e| {
                let lib = lib2.clone();
                let wanted = wanted.clone();
                async move {
                    let missed = match e {
                        // The replica's listener reconnected: events may be missing.
                        Ok(e) if e.kind == FileEventKind::Lagged => None,
                        Ok(e) => {
                            let keep = Uuid::parse_str(e.file_id.as_str())
                                .is_ok_and(|id| wanted.contains(&id));
                            return if keep { vec![e] } else { vec![] };
                        }
                        Err(BroadcastStreamRecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "a fileEvents subscriber fell behind");
                            Some(n)
                        }
                    };
                    let mut out = vec![FileEvent::marker(FileEventKind::Lagged, missed)];
                    match file_snapshots(&lib, &wanted).await {
                        Ok(s) => out.extend(s),
                        Err(e) => tracing::warn!(error = %e, "no snapshot after a lag"),
                    }
                    out
                }
            })
            .flat_map(futures_util::stream::iter);
        Ok(futures_util::stream::iter(first.chain(snapshots))
            .chain(live)
            .take_until(lib.shutdown.clone().cancelled_owned()))
    }

    /// Every processing event in the library: first SUBSCRIBED (from then on nothing is
    /// missed), then each event as it happens. A subscriber that falls behind gets LAGGED
    /// (with the number of events it missed) and should refetch.
    #[graphql(guard = "Need(Scope::Read)")]
    async fn library_events(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = FileEvent>> {
        let lib = library(ctx)?.clone();
        let live = BroadcastStream::new(lib.events.subscribe()).map(|e| match e {
            Ok(e) => e,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "a libraryEvents subscriber fell behind");
                FileEvent::marker(FileEventKind::Lagged, Some(n))
            }
        });
        let first = futures_util::stream::once(async {
            FileEvent::marker(FileEventKind::Subscribed, None)
        });
        Ok(first
            .chain(live)
            .take_until(lib.shutdown.clone().cancelled_owned()))
    }
}

/// Most files one `fileEvents` subscription may follow.
pub const MAX_SUBSCRIBED_FILES: usize = 1000;

/// The current state of each wanted file (DELETED for an unknown id).
async fn file_snapshots(lib: &Library, wanted: &HashSet<Uuid>) -> Result<Vec<FileEvent>, ApiError> {
    let ids: Vec<Uuid> = wanted.iter().copied().collect();
    let mut rows = store::get_many(&lib.db, &ids).await?;
    Ok(wanted
        .iter()
        .map(|id| match rows.remove(id) {
            Some(row) => FileEvent::from_row(FileEventKind::Snapshot, &row),
            None => FileEvent {
                file_id: ID(id.to_string()),
                kind: FileEventKind::Deleted,
                status: ApiFileStatus::Failed,
                windows_done: 0,
                windows_total: 0,
                error_code: Some(crate::error::code::NOT_FOUND.into()),
                error_message: Some(format!("no audio file with id {id}")),
                missed: None,
                scan: None,
                reindex: None,
                at: Utc::now(),
            },
        })
        .collect())
}
