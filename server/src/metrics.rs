//! Prometheus metrics, served on `/metrics`.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the service, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Uploads by outcome: `created`, `duplicate`, `rejected`.
    pub uploads: IntCounterVec,
    /// Files finished by outcome: `indexed`, `failed`.
    pub files_processed: IntCounterVec,
    /// Seconds per pipeline stage: `queued`, `decode_open`, `embed`, `index`, `total`.
    pub stage_seconds: HistogramVec,
    /// Inputs per forward pass, by kind (`audio`, `text`).
    pub batch_size: HistogramVec,
    /// Seconds per forward pass, by kind.
    pub forward_seconds: HistogramVec,
    /// Search latency by kind (`text`, `audio`, `similar`).
    pub search_seconds: HistogramVec,
    /// Windows and texts waiting for the model.
    pub embed_queue: IntGauge,
    /// GraphQL requests over HTTP, by transport (`json`, `multipart`, `get`).
    pub graphql_requests: IntCounterVec,
    /// Inputs dropped unembedded because their caller had gone (a cancelled or deleted file).
    pub embed_skipped: IntCounterVec,
    /// Text queries by `outcome`: `hit` (embedding kept from an earlier query), `miss`.
    pub text_cache: IntCounterVec,
    /// Seconds per index optimisation (its count: how many ran).
    pub index_optimize_seconds: Histogram,
    /// Index writes (files indexed or deleted) since the last optimisation began.
    pub index_writes_pending: IntGauge,
    /// 1 for the vector store in use (`backend`: `edge` or `qdrant`).
    pub vector_store_backend: IntGaugeVec,
    /// Qdrant nodes by `state` (`reachable`, `unreachable`) at the last status check.
    pub vector_store_nodes: IntGaugeVec,
    /// Points per collection (or in-process shard) at the last status check.
    pub vector_store_points: IntGaugeVec,
    /// Notifications between replicas by outcome: `published`, `thinned` (progress held
    /// back), `lost` (the database did not take it), `heard`.
    pub relay_events: IntCounterVec,
    /// Times the event listener lost its connection and subscribers were told to resync.
    pub relay_resyncs: IntCounter,
    /// Attempts that ended without a result, by reason: `retry` (a passing failure, tried
    /// again later), `released` (stopped on purpose), `lost` (another worker or a delete
    /// took the file).
    pub attempts_unfinished: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("traum".into()), None).expect("valid prefix");
        let uploads = IntCounterVec::new(
            Opts::new("uploads_total", "Uploaded files by outcome"),
            &["outcome"],
        )
        .unwrap();
        let files_processed = IntCounterVec::new(
            Opts::new(
                "files_processed_total",
                "Files that finished processing, by outcome",
            ),
            &["outcome"],
        )
        .unwrap();
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Time spent per pipeline stage")
                .buckets(exponential_buckets(0.005, 2.0, 18).unwrap()),
            &["stage"],
        )
        .unwrap();
        let batch_size = HistogramVec::new(
            HistogramOpts::new("embed_batch_size", "Inputs per model forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &["kind"],
        )
        .unwrap();
        let forward_seconds = HistogramVec::new(
            HistogramOpts::new("embed_forward_seconds", "Seconds per model forward pass")
                .buckets(exponential_buckets(0.001, 2.0, 16).unwrap()),
            &["kind"],
        )
        .unwrap();
        let search_seconds = HistogramVec::new(
            HistogramOpts::new("search_duration_seconds", "Search latency")
                .buckets(exponential_buckets(0.0005, 2.0, 16).unwrap()),
            &["kind"],
        )
        .unwrap();
        let embed_queue = IntGauge::new(
            "embed_queue_depth",
            "Windows and texts waiting for the model",
        )
        .unwrap();
        let graphql_requests = IntCounterVec::new(
            Opts::new("graphql_requests_total", "GraphQL requests over HTTP"),
            &["transport"],
        )
        .unwrap();
        let embed_skipped = IntCounterVec::new(
            Opts::new(
                "embed_skipped_total",
                "Inputs dropped unembedded because their caller had gone",
            ),
            &["kind"],
        )
        .unwrap();
        let text_cache = IntCounterVec::new(
            Opts::new(
                "text_query_cache_total",
                "Text queries by whether their embedding was kept from an earlier query",
            ),
            &["outcome"],
        )
        .unwrap();
        let index_optimize_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "index_optimize_seconds",
                "Seconds per vector index optimisation (graphs built, deleted points vacuumed)",
            )
            .buckets(exponential_buckets(0.001, 4.0, 12).unwrap()),
        )
        .unwrap();
        let index_writes_pending = IntGauge::new(
            "index_writes_pending",
            "Index writes not yet seen by an optimisation",
        )
        .unwrap();
        let vector_store_backend = IntGaugeVec::new(
            Opts::new("vector_store_backend", "The vector store in use (1)"),
            &["backend"],
        )
        .unwrap();
        let vector_store_nodes = IntGaugeVec::new(
            Opts::new(
                "vector_store_nodes",
                "Qdrant nodes by state at the last status check",
            ),
            &["state"],
        )
        .unwrap();
        let vector_store_points = IntGaugeVec::new(
            Opts::new(
                "vector_store_points",
                "Points per vector collection at the last status check",
            ),
            &["collection"],
        )
        .unwrap();
        let relay_events = IntCounterVec::new(
            Opts::new(
                "relay_events_total",
                "Notifications between replicas by outcome",
            ),
            &["outcome"],
        )
        .unwrap();
        let relay_resyncs = IntCounter::new(
            "relay_resyncs_total",
            "Times the event listener reconnected and subscribers were told to resync",
        )
        .unwrap();
        let attempts_unfinished = IntCounterVec::new(
            Opts::new(
                "attempts_unfinished_total",
                "Processing attempts that ended without a result, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        for c in [
            Box::new(uploads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(relay_events.clone()),
            Box::new(relay_resyncs.clone()),
            Box::new(attempts_unfinished.clone()),
            Box::new(vector_store_backend.clone()),
            Box::new(vector_store_nodes.clone()),
            Box::new(vector_store_points.clone()),
            Box::new(embed_skipped.clone()),
            Box::new(text_cache.clone()),
            Box::new(files_processed.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(batch_size.clone()),
            Box::new(forward_seconds.clone()),
            Box::new(search_seconds.clone()),
            Box::new(embed_queue.clone()),
            Box::new(graphql_requests.clone()),
            Box::new(index_optimize_seconds.clone()),
            Box::new(index_writes_pending.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            uploads,
            files_processed,
            stage_seconds,
            batch_size,
            forward_seconds,
            search_seconds,
            embed_queue,
            graphql_requests,
            embed_skipped,
            text_cache,
            index_optimize_seconds,
            index_writes_pending,
            vector_store_backend,
            vector_store_nodes,
            vector_store_points,
            relay_events,
            relay_resyncs,
            attempts_unfinished,
        }
    }

    /// Records a vector store status check.
    pub fn record_index_status(&self, status: &traum_index::IndexStatus) {
        self.vector_store_backend
            .with_label_values(&[status.backend])
            .set(1);
        let reachable = status.nodes.iter().filter(|n| n.reachable).count();
        self.vector_store_nodes
            .with_label_values(&["reachable"])
            .set(reachable as i64);
        self.vector_store_nodes
            .with_label_values(&["unreachable"])
            .set((status.nodes.len() - reachable) as i64);
        for c in &status.collections {
            self.vector_store_points
                .with_label_values(&[&c.name])
                .set(c.points as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
