//! `traum serve`: load the model, open the library, serve HTTP until SIGTERM
//! or Ctrl-C, then stop taking requests, give unfinished files back to the
//! queue and flush the index.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use traum_index::QdrantConfig;

use crate::auth::{Anonymous, Auth, RateLimit, Scope};
use crate::cli::{
    LibraryArgs, ModelArgs, Quantization, ServeArgs, VectorStoreArgs, VectorStoreKind,
};
use crate::graphql::{build_schema, SchemaLimits};
use crate::http::{router, HttpConfig};
use crate::library::{EdgeIndexSettings, Library, LibraryConfig, VectorStore};
use crate::pipeline::batcher::BatcherConfig;
use crate::pipeline::maintenance::IndexMaintenance;

/// The library configuration the command-line arguments describe.
pub fn library_config(model: &ModelArgs, args: &LibraryArgs) -> Result<LibraryConfig> {
    if !(args.hop_s > 0.0 && args.hop_s <= 10.0) {
        bail!("--hop-s must be in (0, 10], got {}", args.hop_s);
    }
    if args.max_upload_mb == 0 {
        bail!("--max-upload-mb must be at least 1");
    }
    let mut config = LibraryConfig::new(&args.data_dir);
    config.storage_dir = args.storage_dir.clone();
    config.database_url = args.database_url.clone().filter(|u| !u.trim().is_empty());
    // Twice the batch: with one batch's files in the forward pass, the next batch's decode.
    config.workers = args
        .workers
        .unwrap_or((2 * model.batch_size()).min(64))
        .max(1);
    config.batcher = BatcherConfig {
        max_batch: model.batch_size(),
        max_wait: Duration::from_millis(args.batch_wait_ms),
        queue_capacity: (model.batch_size() * 4).max(8),
    };
    config.hop_s = args.hop_s;
    config.max_attempts = args.max_attempts.max(1);
    if !(args.lease_s >= 1.0 && args.lease_s <= 86_400.0) {
        bail!(
            "--lease-s must be between 1 and 86400 seconds, got {}",
            args.lease_s
        );
    }
    config.lease = Duration::from_secs_f64(args.lease_s);
    config.max_file_bytes = args.max_upload_mb.saturating_mul(1_000_000);
    if !(args.max_clip_s > 0.0 && args.max_clip_s.is_finite()) {
        bail!("--max-clip-s must be a positive number of seconds");
    }
    config.max_clip_s = args.max_clip_s;
    config.max_concurrent_searches = args.max_concurrent_searches.max(1);
    for (flag, value) in [
        ("--index-optimize-idle-s", args.index_optimize_idle_s),
        (
            "--index-optimize-max-delay-s",
            args.index_optimize_max_delay_s,
        ),
    ] {
        if !(value >= 0.0 && value.is_finite()) {
            bail!("{flag} must be a number of seconds ≥ 0, got {value}");
        }
    }
    config.vector_store = vector_store(&args.vectors)?;
    config.switch = args.switch;
    config.model_options = clap_model::EmbedderOptions {
        model: model.model.clone(),
        device: model.device,
        precision: model.dtype,
        max_batch: model.batch_size(),
    };
    if let Some(ef) = args.vectors.index_search_ef {
        if !(1..=10_000).contains(&ef) {
            bail!("--index-search-ef must be between 1 and 10000, got {ef}");
        }
    }
    config.edge_index = EdgeIndexSettings {
        int8: args.vectors.index_quantization == Quantization::Int8,
        hnsw_ef: args.vectors.index_search_ef,
        file_candidates: args.vectors.index_file_candidates.min(1_000),
    };
    config.index_maintenance = (args.index_optimize_idle_s > 0.0).then(|| IndexMaintenance {
        idle: Duration::from_secs_f64(args.index_optimize_idle_s),
        max_delay: Duration::from_secs_f64(
            args.index_optimize_max_delay_s
                .max(args.index_optimize_idle_s),
        ),
    });
    if let Some(gb) = args.max_library_gb {
        if !(gb > 0.0 && gb.is_finite()) {
            bail!("--max-library-gb must be a positive number");
        }
        config.storage_quota_bytes = Some((gb * 1e9) as u64);
    }
    Ok(config)
}

/// The vector store the arguments name. The Qdrant collections' model name and size are
/// filled in when the library opens (they come from the loaded model).
fn vector_store(args: &VectorStoreArgs) -> Result<VectorStore> {
    Ok(match args.vector_store {
        VectorStoreKind::Edge => VectorStore::Edge,
        VectorStoreKind::Qdrant => {
            let urls: Vec<String> = args
                .qdrant_url
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            if urls.is_empty() {
                bail!("--vector-store qdrant needs --qdrant-url (e.g. http://127.0.0.1:6334)");
            }
            for (flag, value) in [
                ("--qdrant-timeout-s", args.qdrant_timeout_s),
                ("--qdrant-connect-timeout-s", args.qdrant_connect_timeout_s),
            ] {
                if !(value > 0.0 && value <= 3600.0) {
                    bail!("{flag} must be between 0 and 3600 seconds, got {value}");
                }
            }
            let mut config = QdrantConfig::new(urls, String::new(), 0);
            config.api_key = args.qdrant_api_key.as_ref().map(|k| k.0.clone());
            config.collection_prefix = args.qdrant_collection_prefix.clone();
            config.shard_number = args.qdrant_shards;
            config.replication_factor = args.qdrant_replication_factor;
            config.write_consistency_factor = args.qdrant_write_consistency_factor;
            config.on_disk_vectors = args.qdrant_on_disk_vectors;
            config.int8 = args.qdrant_quantization == Quantization::Int8;
            config.timeout = Duration::from_secs_f64(args.qdrant_timeout_s);
            config.connect_timeout = Duration::from_secs_f64(args.qdrant_connect_timeout_s);
            VectorStore::Qdrant(Box::new(config))
        }
    })
}

/// Loads the model (off the async runtime) and opens the library.
pub async fn open_library(model: &ModelArgs, args: &LibraryArgs) -> Result<Arc<Library>> {
    let config = library_config(model, args)?;
    let model_args = model.clone();
    let embedder = tokio::task::spawn_blocking(move || crate::embed::load_embedder(&model_args))
        .await
        .context("model loading task")??;
    let library = Library::open(config, embedder)
        .await
        .with_context(|| format!("opening the library in {}", args.data_dir.display()))?;
    Ok(library)
}

/// Who may call without a key, from `--allow-anonymous` and the bind address.
fn anonymous_policy(args: &ServeArgs) -> Result<Anonymous> {
    match args.allow_anonymous.as_deref().map(str::trim) {
        None | Some("") => Ok(if args.bind.ip().is_loopback() {
            Anonymous::UntilKeysExist
        } else {
            Anonymous::Fixed(None)
        }),
        Some("none") => Ok(Anonymous::Fixed(None)),
        Some(scope) => {
            Ok(Anonymous::Fixed(Some(scope.parse::<Scope>().map_err(
                |e| anyhow::anyhow!("--allow-anonymous: {e} or none"),
            )?)))
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let anonymous = anonymous_policy(&args)?;
    let library = open_library(&args.model, &args.library).await?;
    if anonymous == Anonymous::Fixed(None)
        && args.allow_anonymous.is_none()
        && entity::store::count_live_keys(&library.db).await? == 0
    {
        bail!(
            "refusing to serve {} without API keys: anyone who can reach it could delete the \
             library. Create a key first (`traum keys create --name admin --scope admin`, same \
             --data-dir/--database-url), bind to 127.0.0.1, or allow anonymous access \
             explicitly (--allow-anonymous read|write|admin)",
            args.bind
        );
    }
    let auth = Auth::new(
        library.db.clone(),
        anonymous,
        RateLimit {
            per_minute: args.rate_limit_per_min,
            burst: args.rate_limit_burst,
        },
    )
    .await
    .context("setting up API keys")?;
    let workers = crate::pipeline::start_workers(&library);
    for folder in &args.folders {
        let source = library
            .add_folder(folder, false)
            .await
            .with_context(|| format!("--folder {}", folder.display()))?;
        tracing::info!(source = %source.id, path = %source.path, "reading folder");
    }
    let watcher = crate::sources::watch::start(
        &library,
        crate::sources::watch::WatchConfig {
            settle: Duration::from_millis(args.watch_settle_ms),
            ..Default::default()
        },
    );
    let schema = build_schema(
        library.clone(),
        auth.clone(),
        SchemaLimits {
            max_depth: args.max_query_depth,
            max_complexity: args.max_query_complexity,
        },
    );
    let client_dir = args.client_dir.clone().or_else(|| {
        let default = std::path::PathBuf::from("client/dist");
        default.join("index.html").is_file().then_some(default)
    });
    let http = HttpConfig {
        max_files_per_request: args.max_files_per_request.max(1),
        max_request_bytes: args.max_request_mb.max(1).saturating_mul(1_000_000),
        max_batch_operations: args.max_batch_operations.max(1),
        graphiql_dir: args.graphiql_dir.clone(),
        max_concurrent_uploads: args.max_concurrent_uploads.max(1),
        cors_origins: args.cors_origins.clone(),
        client_dir,
        ..HttpConfig::default()
    };
    let app = router(library.clone(), schema, auth, http);
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, model = %library.models.active().key, "serving");
    // One machine-readable line on stdout: tests and scripts read the port.
    println!("traum listening on http://{addr}");

    let shutdown = library.shutdown.clone();
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.await.context("HTTP server")?;
    watcher.abort();
    library
        .shutdown(workers, Duration::from_secs(args.shutdown_grace_s))
        .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
