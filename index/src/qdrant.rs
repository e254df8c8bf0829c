//! [`VectorIndex`] on a Qdrant server or cluster, through `qdrant-client` (gRPC).
//!
//! Two collections per model, `<prefix><model>_windows` and `<prefix><model>_files`, with
//! the same points and payload as the edge backend's two shards (see [`crate::schema`]).
//! Search groups windows into files on the server (`query_groups` by `file_id`, one hit
//! per group). Every write waits for the server's acknowledgement (`wait = true`) with
//! medium write ordering (through a dynamically elected leader per shard, so replicas apply
//! one file's operations in the same order and a leader that dies does not stop writes).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    point_id::PointIdOptions, quantization_config, vector_output, vectors_config,
    vectors_output::VectorsOptions, AcornSearchParamsBuilder, CollectionStatus as QdrantStatus,
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, FloatIndexParamsBuilder, GetPointsBuilder,
    HnswConfigDiffBuilder, IntegerIndexParamsBuilder, KeywordIndexParamsBuilder,
    PayloadIncludeSelector, PointId, PointStruct, QuantizationSearchParamsBuilder,
    QuantizationType, Query, QueryPointGroupsBuilder, QueryPointsBuilder, Range,
    ScalarQuantizationBuilder, ScoredPoint, SearchParams as QSearch, SearchParamsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use uuid::Uuid;

use crate::error::{IndexError, Result};
use crate::schema::{self, FieldIndex, Kind};
use crate::types::point_id;
use crate::{
    CollectionStatus, FileHit, FileVectors, IndexCounts, IndexStatus, NodeStatus, QdrantConfig,
    SearchFilter, SearchParams, VectorIndex,
};

/// The index on a Qdrant server or cluster. Cheap to clone (shares its connections).
#[derive(Clone)]
pub struct QdrantIndex {
    inner: Arc<Inner>,
}

struct Inner {
    config: QdrantConfig,
    nodes: Vec<Node>,
    /// The node requests go to first: the last one that answered.
    current: AtomicUsize,
    windows: String,
    files: String,
}

struct Node {
    url: String,
    client: Qdrant,
}

impl std::fmt::Debug for QdrantIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantIndex")
            .field("urls", &self.inner.config.urls)
            .field("windows", &self.inner.windows)
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl QdrantIndex {
    /// Connects to the first node that answers, creates the two collections when missing
    /// (with the configured shards, replication, on-disk vectors and quantization) and
    /// their payload indexes, and checks that existing ones hold this model's vectors.
    pub async fn connect(config: QdrantConfig) -> Result<Self> {
        if config.urls.is_empty() {
            return Err(IndexError::InvalidArgument(
                "no Qdrant URL given (e.g. http://localhost:6334)".into(),
            ));
        }
        if config.dim == 0 {
            return Err(IndexError::InvalidArgument(
                "index dimension must be positive".into(),
            ));
        }
        if config.shard_number == 0
            || config.replication_factor == 0
            || config.write_consistency_factor == 0
            || config.upsert_batch == 0
        {
            return Err(IndexError::InvalidArgument(
                "shard number, replication factor, write consistency factor and upsert batch \
                 must be positive"
                    .into(),
            ));
        }
        let nodes = config
            .urls
            .iter()
            .map(|url| {
                let mut builder = Qdrant::from_url(url)
                    .timeout(config.timeout)
                    .connect_timeout(config.connect_timeout)
                    // The client's own version check prints to stdout; `connect` logs the
                    // server's version and warns below instead.
                    .skip_compatibility_check();
                if let Some(key) = &config.api_key {
                    builder = builder.api_key(key.as_str());
                }
                let client = builder
                    .build()
                    .map_err(|e| IndexError::InvalidArgument(format!("Qdrant URL `{url}`: {e}")))?;
                Ok(Node {
                    url: url.clone(),
                    client,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let index = Self {
            inner: Arc::new(Inner {
                windows: config.collection("windows"),
                files: config.collection("files"),
                config,
                nodes,
                current: AtomicUsize::new(0),
            }),
        };
        let version = index
            .call("health check", |c| async move { c.health_check().await })
            .await?
            .version;
        let node = &index.inner.nodes[index.inner.current.load(Ordering::Relaxed)].url;
        tracing::info!(%node, version, "connected to Qdrant");
        if !version_is_tested(&version) {
            tracing::warn!(
                %node,
                version,
                "this Qdrant version is not the one traum is tested with ({TESTED_VERSION}.x); \
                 searches or collection options may fail"
            );
        }
        for kind in Kind::ALL {
            index.ensure_collection(kind).await?;
        }
        Ok(index)
    }

    /// Deletes the two collections `config` names, with every point in them (a model index
    /// that is no longer wanted). Collections that do not exist are not an error.
    pub async fn drop_collections(config: QdrantConfig) -> Result<()> {
        let index = Self::connect(config).await?;
        for kind in Kind::ALL {
            let name = index.collection(kind).to_owned();
            index
                .send("collection delete", &name, |c, r| async move {
                    c.delete_collection(r).await
                })
                .await?;
            tracing::info!(collection = %name, "Qdrant collection deleted");
        }
        Ok(())
    }

    /// The configuration this index was opened with.
    pub fn config(&self) -> &QdrantConfig {
        &self.inner.config
    }

    /// The collection holding points of `kind`.
    fn collection(&self, kind: Kind) -> &str {
        match kind {
            Kind::Window => &self.inner.windows,
            Kind::File => &self.inner.files,
        }
    }

    /// Runs `f` on the current node; when that node cannot be reached (refused, timed out,
    /// connection lost), on the next one, until one answers. Every operation here is
    /// idempotent, so one that may have reached a node before it failed can be repeated.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(Qdrant) -> Fut,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        let nodes = &self.inner.nodes;
        let first = self.inner.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..nodes.len() {
            let at = (first + step) % nodes.len();
            let node = &nodes[at];
            match f(node.client.clone()).await {
                Ok(value) => {
                    if step > 0 {
                        self.inner.current.store(at, Ordering::Relaxed);
                        tracing::warn!(node = %node.url, "switched to another Qdrant node");
                    }
                    return Ok(value);
                }
                Err(e) if node_unavailable(&e) => {
                    tracing::warn!(node = %node.url, op, error = %e, "Qdrant node did not answer");
                    last = Some(e);
                }
                Err(e) => return Err(IndexError::backend(op, e)),
            }
        }
        Err(IndexError::Unreachable {
            op,
            nodes: self.inner.config.urls.join(", "),
            source: last.expect("there is at least one node").into(),
        })
    }

    /// [`Self::call`] with a request that each attempt gets a copy of.
    async fn send<R, T, F, Fut>(&self, op: &'static str, request: &R, f: F) -> Result<T>
    where
        R: Clone,
        F: Fn(Qdrant, R) -> Fut,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        self.call(op, |c| f(c, request.clone())).await
    }

    async fn collection_exists(&self, name: &str) -> Result<bool> {
        self.send("collection check", &name.to_owned(), |c, r| async move {
            c.collection_exists(r).await
        })
        .await
    }

    async fn ensure_collection(&self, kind: Kind) -> Result<()> {
        let config = &self.inner.config;
        let name = self.collection(kind).to_owned();
        if !self.collection_exists(&name).await? {
            let mut vectors = VectorParamsBuilder::new(config.dim as u64, Distance::Cosine)
                .on_disk(config.on_disk_vectors);
            if config.int8 {
                vectors = vectors.quantization_config(quantization_config::Quantization::Scalar(
                    ScalarQuantizationBuilder::default()
                        .r#type(QuantizationType::Int8.into())
                        .quantile(0.99)
                        .always_ram(true)
                        .build(),
                ));
            }
            let create = CreateCollectionBuilder::new(&name)
                .vectors_config(vectors)
                .shard_number(config.shard_number)
                .replication_factor(config.replication_factor)
                .write_consistency_factor(config.write_consistency_factor)
                .hnsw_config(
                    HnswConfigDiffBuilder::default()
                        .m(config.hnsw_m)
                        .ef_construct(config.hnsw_ef_construct)
                        // As in the edge backend: no payload-aware links (they multiply the
                        // build time); selective filters are served by ACORN or exactly.
                        .payload_m(0),
                )
                .build();
            match self
                .send("create collection", &create, |c, r| async move {
                    c.create_collection(r).await
                })
                .await
            {
                Ok(_) => tracing::info!(collection = %name, "created Qdrant collection"),
                // Another replica may have created it at the same moment.
                Err(e) => {
                    if !self.collection_exists(&name).await? {
                        return Err(e);
                    }
                }
            }
        }

        let info = self
            .send("collection info", &name, |c, r| async move {
                c.collection_info(r).await
            })
            .await?
            .result
            .ok_or_else(|| IndexError::Collection {
                collection: name.clone(),
                reason: "the server returned no collection info".into(),
            })?;
        let unusable = |reason: String| IndexError::Collection {
            collection: name.clone(),
            reason: format!(
                "{reason}; delete the collection, or choose another --qdrant-collection-prefix"
            ),
        };
        let params = info
            .config
            .as_ref()
            .and_then(|c| c.params.as_ref())
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| v.config.as_ref());
        match params {
            Some(vectors_config::Config::Params(p)) => {
                if p.size != config.dim as u64 {
                    return Err(unusable(format!(
                        "it holds {}-d vectors but the model `{}` produces {}-d",
                        p.size, config.model, config.dim
                    )));
                }
                if p.distance != Distance::Cosine as i32 {
                    let distance = Distance::try_from(p.distance)
                        .map(|d| d.as_str_name())
                        .unwrap_or("unknown");
                    return Err(unusable(format!("it uses {distance} distance, not cosine")));
                }
            }
            Some(vectors_config::Config::ParamsMap(_)) => {
                return Err(unusable(
                    "it has named vectors, not one unnamed vector".into(),
                ))
            }
            None => return Err(unusable("it has no vector configuration".into())),
        }

        for (field, index) in kind.payload_indexes() {
            if info.payload_schema.contains_key(field) {
                continue;
            }
            let request = match index {
                FieldIndex::Keyword { filterable } => {
                    CreateFieldIndexCollectionBuilder::new(&name, field, FieldType::Keyword)
                        .field_index_params(
                            KeywordIndexParamsBuilder::default().enable_hnsw(filterable),
                        )
                }
                FieldIndex::Float => {
                    CreateFieldIndexCollectionBuilder::new(&name, field, FieldType::Float)
                        .field_index_params(FloatIndexParamsBuilder::new())
                }
                FieldIndex::Integer {
                    lookup,
                    range,
                    filterable,
                } => CreateFieldIndexCollectionBuilder::new(&name, field, FieldType::Integer)
                    .field_index_params(
                        IntegerIndexParamsBuilder::new(lookup, range).enable_hnsw(filterable),
                    ),
            }
            .wait(true)
            .build();
            self.send("create payload index", &request, |c, r| async move {
                c.create_field_index(r).await
            })
            .await?;
            tracing::debug!(collection = %name, field, "created payload index");
        }
        Ok(())
    }

    async fn upsert_points(&self, kind: Kind, points: Vec<PointStruct>) -> Result<()> {
        for chunk in points.chunks(self.inner.config.upsert_batch) {
            let request = UpsertPointsBuilder::new(self.collection(kind), chunk.to_vec())
                .wait(true)
                .ordering(ordering())
                .build();
            self.send("upsert", &request, |c, r| async move {
                c.upsert_points(r).await
            })
            .await?;
        }
        Ok(())
    }

    async fn delete_points(&self, op: &'static str, kind: Kind, filter: Filter) -> Result<()> {
        let request = DeletePointsBuilder::new(self.collection(kind))
            .points(filter)
            .wait(true)
            .ordering(ordering())
            .build();
        self.send(op, &request, |c, r| async move { c.delete_points(r).await })
            .await?;
        Ok(())
    }

    fn search_params(&self, user_filter: bool) -> QSearch {
        let config = &self.inner.config;
        let mut params = SearchParamsBuilder::default();
        if user_filter {
            // As in the edge backend: a wider beam, and ACORN when the filter is selective.
            params = params
                .hnsw_ef(config.filtered_hnsw_ef)
                .acorn(AcornSearchParamsBuilder::new(true));
        } else if let Some(ef) = config.hnsw_ef {
            params = params.hnsw_ef(ef);
        }
        if config.int8 {
            params = params.quantization(
                QuantizationSearchParamsBuilder::default()
                    .rescore(true)
                    .oversampling(config.rescore_oversampling),
            );
        }
        params.build()
    }

    /// Files ranked by their best window: one group per file, computed by the server.
    async fn search_windows(
        &self,
        query: &[f32],
        params: &SearchParams,
        conditions: &schema::Conditions,
        search: QSearch,
    ) -> Result<Vec<FileHit>> {
        let mut request = QueryPointGroupsBuilder::new(&self.inner.windows, schema::FILE_ID)
            .query(Query::new_nearest(query.to_vec()))
            .limit(params.limit as u64)
            .group_size(1u64)
            .with_payload(Kind::Window.hit_fields().to_vec())
            .params(search);
        if !conditions.is_empty() {
            request = request.filter(filter(conditions));
        }
        if let Some(t) = params.score_threshold {
            request = request.score_threshold(t);
        }
        let request = request.build();
        let response = self
            .send(
                "search",
                &request,
                |c, r| async move { c.query_groups(r).await },
            )
            .await?;
        response
            .result
            .map(|r| r.groups)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|group| group.hits.into_iter().next())
            .map(|hit| parse_hit(Kind::Window, hit))
            .collect()
    }

    /// Files without windows, ranked by their file vector (the filter matches next to no
    /// points, so the server answers from the payload index).
    async fn search_bare_files(
        &self,
        query: &[f32],
        params: &SearchParams,
        conditions: &schema::Conditions,
        search: QSearch,
    ) -> Result<Vec<FileHit>> {
        let mut conditions = conditions.clone();
        conditions.must.push(schema::without_windows());
        let mut request = QueryPointsBuilder::new(&self.inner.files)
            .query(Query::new_nearest(query.to_vec()))
            .limit(params.limit as u64)
            .filter(filter(&conditions))
            .with_payload(PayloadIncludeSelector {
                fields: Kind::File
                    .hit_fields()
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            })
            .params(search);
        if let Some(t) = params.score_threshold {
            request = request.score_threshold(t);
        }
        let request = request.build();
        let response = self
            .send("search", &request, |c, r| async move { c.query(r).await })
            .await?;
        response
            .result
            .into_iter()
            .map(|hit| parse_hit(Kind::File, hit))
            .collect()
    }

    async fn count_points(&self, kind: Kind) -> Result<u64> {
        let request = CountPointsBuilder::new(self.collection(kind))
            .exact(true)
            .build();
        let response = self
            .send("count", &request, |c, r| async move { c.count(r).await })
            .await?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}

#[async_trait]
impl VectorIndex for QdrantIndex {
    fn dim(&self) -> usize {
        self.inner.config.dim
    }

    async fn upsert_file(&self, file: FileVectors) -> Result<()> {
        self.upsert_files(vec![file]).await
    }

    async fn upsert_files(&self, files: Vec<FileVectors>) -> Result<()> {
        let Some(plan) = schema::plan_upsert(self.inner.config.dim, files)? else {
            return Ok(());
        };
        let stale = Filter::should(plan.stale.iter().map(|c| Condition::from(filter(c))));
        // Windows first, the file point last: a file that `count` reports has its windows.
        self.upsert_points(Kind::Window, plan.windows.into_iter().map(point).collect())
            .await?;
        self.delete_points("upsert (removing stale windows)", Kind::Window, stale)
            .await?;
        self.upsert_points(Kind::File, plan.files.into_iter().map(point).collect())
            .await
    }

    async fn delete_file(&self, file_id: Uuid) -> Result<()> {
        let of_file = Filter::must([condition(&schema::of_file(file_id))]);
        self.delete_points("delete", Kind::File, of_file.clone())
            .await?;
        self.delete_points("delete", Kind::Window, of_file).await
    }

    async fn search(&self, query: &[f32], params: SearchParams) -> Result<Vec<FileHit>> {
        schema::check_vector(self.inner.config.dim, "query vector", query)?;
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        let conditions = schema::search_conditions(&params);
        let search = self.search_params(params.filter != SearchFilter::default());
        let (mut hits, bare) = tokio::try_join!(
            self.search_windows(query, &params, &conditions, search),
            self.search_bare_files(query, &params, &conditions, search),
        )?;
        schema::merge_bare_files(&mut hits, bare, params.limit);
        Ok(hits)
    }

    async fn file_vector(&self, file_id: Uuid) -> Result<Option<Vec<f32>>> {
        let id = point_id::file(file_id);
        let request = GetPointsBuilder::new(&self.inner.files, vec![PointId::from(id)])
            .with_vectors(true)
            .with_payload(false)
            .build();
        let response = self
            .send(
                "retrieve",
                &request,
                |c, r| async move { c.get_points(r).await },
            )
            .await?;
        let Some(point) = response.result.into_iter().next() else {
            return Ok(None);
        };
        #[allow(deprecated)] // servers before 1.15 fill only `data`
        let vector = match point.vectors.and_then(|v| v.vectors_options) {
            Some(VectorsOptions::Vector(v)) => match v.vector {
                Some(vector_output::Vector::Dense(dense)) => Some(dense.data),
                _ if !v.data.is_empty() => Some(v.data),
                _ => None,
            },
            _ => None,
        };
        vector.map(Some).ok_or_else(|| IndexError::CorruptPayload {
            point: id.to_string(),
            reason: "file point has no dense vector".into(),
        })
    }

    async fn count(&self) -> Result<IndexCounts> {
        let (files, windows) = tokio::try_join!(
            self.count_points(Kind::File),
            self.count_points(Kind::Window)
        )?;
        Ok(IndexCounts { files, windows })
    }

    /// Writes are acknowledged by the server (`wait = true`) before they return; there is
    /// nothing left to flush.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn status(&self) -> Result<IndexStatus> {
        let mut nodes = Vec::with_capacity(self.inner.nodes.len());
        for node in &self.inner.nodes {
            nodes.push(match node.client.health_check().await {
                Ok(reply) => NodeStatus {
                    url: node.url.clone(),
                    reachable: true,
                    version: Some(reply.version),
                    error: None,
                },
                Err(e) => NodeStatus {
                    url: node.url.clone(),
                    reachable: false,
                    version: None,
                    error: Some(e.to_string()),
                },
            });
        }
        let mut collections = Vec::with_capacity(2);
        // With no node answering there is nothing to ask; the nodes say why.
        let any_reachable = nodes.iter().any(|n| n.reachable);
        for kind in Kind::ALL.into_iter().filter(|_| any_reachable) {
            let name = self.collection(kind).to_owned();
            let info = self
                .send("collection info", &name, |c, r| async move {
                    c.collection_info(r).await
                })
                .await?
                .result
                .unwrap_or_default();
            let status = QdrantStatus::try_from(info.status)
                .map(|s| match s {
                    QdrantStatus::Green => "green",
                    QdrantStatus::Yellow => "yellow",
                    QdrantStatus::Red => "red",
                    QdrantStatus::Grey => "grey",
                    QdrantStatus::UnknownCollectionStatus => "unknown",
                })
                .unwrap_or("unknown");
            collections.push(CollectionStatus {
                name,
                status: status.into(),
                points: info.points_count.unwrap_or(0),
                indexed_vectors: info.indexed_vectors_count.unwrap_or(0),
                segments: info.segments_count,
            });
        }
        Ok(IndexStatus {
            backend: "qdrant",
            nodes,
            collections,
        })
    }
}

/// The server line the client (qdrant-client 1.18) and the tests match.
const TESTED_VERSION: &str = "1.18";

/// Whether a server version (`1.18.3`) is within one minor release of [`TESTED_VERSION`].
fn version_is_tested(version: &str) -> bool {
    let minor = |v: &str| -> Option<(u32, u32)> {
        let mut parts = v.trim_start_matches('v').split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (minor(version), minor(TESTED_VERSION)) {
        (Some((major, minor)), Some((tested_major, tested_minor))) => {
            major == tested_major && minor.abs_diff(tested_minor) <= 1
        }
        _ => false,
    }
}

/// Whether the error says that the node, not the request, failed: then another node may
/// answer. Transport errors reach us as `Unavailable` (reset, or refused once connected
/// before) or `Unknown`; a connection that cannot be made at all as qdrant-client's own
/// `Internal` "Failed to connect to …".
fn node_unavailable(e: &QdrantError) -> bool {
    use tonic::Code;
    match e {
        QdrantError::ResponseError { status } => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => true,
            Code::Internal => status.message().starts_with("Failed to connect"),
            _ => false,
        },
        QdrantError::Io(_) => true,
        _ => false,
    }
}

fn ordering() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Medium.into(),
    }
}

/// Qdrant's form of a neutral condition.
fn condition(c: &schema::Condition) -> Condition {
    match c {
        schema::Condition::Keyword { key, any } => match any.as_slice() {
            [one] => Condition::matches(*key, one.clone()),
            _ => Condition::matches(*key, any.clone()),
        },
        schema::Condition::Integer { key, value } => Condition::matches(*key, *value),
        schema::Condition::Range { key, range } => Condition::range(
            *key,
            Range {
                gt: range.gt,
                gte: range.gte,
                lt: range.lt,
                lte: range.lte,
            },
        ),
    }
}

/// Qdrant's form of a neutral conjunction.
fn filter(c: &schema::Conditions) -> Filter {
    Filter {
        must: c.must.iter().map(condition).collect(),
        must_not: c.must_not.iter().map(condition).collect(),
        ..Filter::default()
    }
}

fn point(p: schema::Point) -> PointStruct {
    PointStruct::new(PointId::from(p.id), p.vector, Payload::from(p.payload))
}

fn parse_hit(kind: Kind, hit: ScoredPoint) -> Result<FileHit> {
    let id = match hit.id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(s)) => s,
        Some(PointIdOptions::Num(n)) => n.to_string(),
        None => "(no id)".into(),
    };
    let payload = serde_json::Map::from(Payload::from(hit.payload));
    schema::parse_hit(kind, &id, &payload, hit.score)
}

#[cfg(test)]
mod tests {
    use super::version_is_tested;

    #[test]
    fn server_versions_near_the_client_are_tested() {
        assert!(version_is_tested("1.18.3"));
        assert!(version_is_tested("1.17.0"));
        assert!(version_is_tested("v1.19.1"));
        assert!(!version_is_tested("1.15.4"));
        assert!(!version_is_tested("2.18.0"));
        assert!(!version_is_tested("dev"));
    }
}
