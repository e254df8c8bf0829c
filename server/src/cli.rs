//! Command-line arguments. Every option also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_model::{DeviceSpec, Precision, DEFAULT_MODEL};

/// Search your own audio by what it sounds like.
#[derive(Debug, Parser)]
#[command(name = "traum", version, about)]
pub struct Cli {
    /// Log as JSON lines (to stderr).
    #[arg(long, env = "TRAUM_LOG_JSON", global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: GraphQL API, processing pipeline, web client.
    Serve(ServeArgs),
    /// Add folders of audio to the library and scan them (read in place; --copy stores copies).
    Ingest(IngestArgs),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Print CLAP embeddings of audio files and texts, one JSON object per line.
    Embed(EmbedArgs),
    /// Manage API keys (stored hashed in the library's database).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once: only its hash is stored).
    Create(KeysCreateArgs),
    /// List keys (never their secrets).
    List(KeysDbArgs),
    /// Revoke a key by id or prefix; it stops working at once.
    Revoke(KeysRevokeArgs),
}

/// Which library's keys.
#[derive(Debug, Clone, Args)]
pub struct KeysDbArgs {
    /// Data directory (for its SQLite database).
    #[arg(long, env = "TRAUM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL (sqlite://… or postgres://…); default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct KeysCreateArgs {
    #[command(flatten)]
    pub db: KeysDbArgs,
    /// A name saying who holds the key ("laptop", "ci", "alice").
    #[arg(long)]
    pub name: String,
    /// read (queries, subscriptions, playback), write (also uploads, clip searches,
    /// delete, reprocess) or admin (also keys).
    #[arg(long, default_value = "read")]
    pub scope: String,
}

#[derive(Debug, Clone, Args)]
pub struct KeysRevokeArgs {
    #[command(flatten)]
    pub db: KeysDbArgs,
    /// The key's id, or its prefix as `traum keys list` shows it.
    pub key: String,
}

/// Where the library lives and how it processes files.
#[derive(Debug, Clone, Args)]
pub struct LibraryArgs {
    /// Data directory: stored files, vector index, SQLite database. One process uses it at a
    /// time.
    #[arg(long, env = "TRAUM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// When --model is not the model the library's index was made with, the current index
    /// keeps serving while the new model reindexes in the background; then: auto (switch
    /// when complete) or manual (switch with the switchModel mutation).
    #[arg(long, env = "TRAUM_SWITCH", default_value = "auto")]
    pub switch: crate::models::SwitchMode,
    /// Where the originals are kept instead of the data directory: a directory every replica
    /// mounts (each stages its uploads in its own subdirectory of it).
    #[arg(long, env = "TRAUM_STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,
    /// Database URL (sqlite://… or postgres://…); default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Files processed at once [default: twice the batch size, at most 64: one batch runs
    /// while the files of the next decode].
    #[arg(long, env = "TRAUM_WORKERS")]
    pub workers: Option<usize>,
    /// Longest wait (ms) for a forward pass to fill its batch.
    #[arg(long, env = "TRAUM_BATCH_WAIT_MS", default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Seconds between the starts of consecutive 10 s windows (at most 10).
    #[arg(long, env = "TRAUM_WINDOW_HOP_S", default_value_t = 10.0)]
    pub hop_s: f64,
    /// Largest accepted file, in MB (10^6 bytes).
    #[arg(long, env = "TRAUM_MAX_UPLOAD_MB", default_value_t = 100)]
    pub max_upload_mb: u64,
    /// Most gigabytes (10^9 bytes) of originals the library may store; none: no quota.
    #[arg(long, env = "TRAUM_MAX_LIBRARY_GB")]
    pub max_library_gb: Option<f64>,
    /// Searches served at once; more get TOO_BUSY.
    #[arg(long, env = "TRAUM_MAX_CONCURRENT_SEARCHES", default_value_t = 32)]
    pub max_concurrent_searches: usize,
    /// Longest search clip (searchByAudio), in seconds.
    #[arg(long, env = "TRAUM_MAX_CLIP_S", default_value_t = 60.0)]
    pub max_clip_s: f64,
    /// Processing attempts a file gets (a worker that died on it, or a passing failure such
    /// as a lost connection, uses one) before it is marked failed.
    #[arg(long, env = "TRAUM_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// Seconds a worker's claim on a file lasts without renewal (it renews every third of
    /// that): how soon another process takes over the files of one that died.
    #[arg(long, env = "TRAUM_LEASE_S", default_value_t = 60.0)]
    pub lease_s: f64,
    /// Optimise the vector index (build search graphs, vacuum deleted vectors) once no
    /// vectors were written for this many seconds; 0: never.
    #[arg(long, env = "TRAUM_INDEX_OPTIMIZE_IDLE_S", default_value_t = 5.0)]
    pub index_optimize_idle_s: f64,
    /// ... and at least this often, in seconds, while writes go on.
    #[arg(long, env = "TRAUM_INDEX_OPTIMIZE_MAX_DELAY_S", default_value_t = 60.0)]
    pub index_optimize_max_delay_s: f64,
    #[command(flatten)]
    pub vectors: VectorStoreArgs,
}

/// Where the vectors live: in-process (`edge`, in the data directory) or on a Qdrant
/// server or cluster (`qdrant`), which several `traum serve` replicas can share.
#[derive(Debug, Clone, Args)]
pub struct VectorStoreArgs {
    /// edge (in-process, in the data directory) or qdrant (a server or cluster).
    #[arg(long, env = "TRAUM_VECTOR_STORE", default_value = "edge")]
    pub vector_store: VectorStoreKind,
    /// In-process store: none, or int8 (scalar quantization of a new store, built by the
    /// index optimisation; searches rescore with the original vectors).
    #[arg(long, env = "TRAUM_INDEX_QUANTIZATION", default_value = "none")]
    pub index_quantization: Quantization,
    /// In-process store: HNSW beam width of unfiltered searches (default 100; 200 with
    /// int8 reached recall@10 0.98 over 1M windows in the index benchmark).
    #[arg(long, env = "TRAUM_INDEX_SEARCH_EF")]
    pub index_search_ef: Option<usize>,
    /// In-process store: also score exactly the windows of this many files found by their
    /// file vector (0: off; 20 lifted filtered recall in the index benchmark).
    #[arg(long, env = "TRAUM_INDEX_FILE_CANDIDATES", default_value_t = 0)]
    pub index_file_candidates: usize,
    /// Qdrant gRPC URLs, comma-separated (http://host:6334, or https:// for TLS); when one
    /// node refuses, the next is tried.
    #[arg(
        long,
        env = "TRAUM_QDRANT_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:6334"
    )]
    pub qdrant_url: Vec<String>,
    /// Qdrant API key (sent as `api-key`; never logged).
    #[arg(long, env = "TRAUM_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<Secret>,
    /// Collections are named <prefix><model>_windows and <prefix><model>_files.
    #[arg(long, env = "TRAUM_QDRANT_COLLECTION_PREFIX", default_value = "traum_")]
    pub qdrant_collection_prefix: String,
    /// Shards of a new collection.
    #[arg(long, env = "TRAUM_QDRANT_SHARDS", default_value_t = 1)]
    pub qdrant_shards: u32,
    /// Copies of each shard of a new collection (on different nodes).
    #[arg(long, env = "TRAUM_QDRANT_REPLICATION_FACTOR", default_value_t = 1)]
    pub qdrant_replication_factor: u32,
    /// Replicas that must acknowledge a write before it counts.
    #[arg(
        long,
        env = "TRAUM_QDRANT_WRITE_CONSISTENCY_FACTOR",
        default_value_t = 1
    )]
    pub qdrant_write_consistency_factor: u32,
    /// Keep a new collection's vectors on disk (memory-mapped) instead of in RAM.
    #[arg(long, env = "TRAUM_QDRANT_ON_DISK_VECTORS")]
    pub qdrant_on_disk_vectors: bool,
    /// none, or int8 (scalar quantization of a new collection; searches rescore).
    #[arg(long, env = "TRAUM_QDRANT_QUANTIZATION", default_value = "none")]
    pub qdrant_quantization: Quantization,
    /// Longest wait for one Qdrant request, seconds.
    #[arg(long, env = "TRAUM_QDRANT_TIMEOUT_S", default_value_t = 30.0)]
    pub qdrant_timeout_s: f64,
    /// Longest wait to connect to a Qdrant node, seconds.
    #[arg(long, env = "TRAUM_QDRANT_CONNECT_TIMEOUT_S", default_value_t = 5.0)]
    pub qdrant_connect_timeout_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VectorStoreKind {
    Edge,
    Qdrant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantization {
    None,
    Int8,
}

/// A secret from the command line or environment: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub library: LibraryArgs,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, env = "TRAUM_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// Origins allowed to call the API from a browser (comma-separated, or *).
    #[arg(long, env = "TRAUM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// What callers without a key may do: none, read, write or admin. Default: everything
    /// on a loopback address until the first key exists, nothing elsewhere (where the server
    /// refuses to start without a key).
    #[arg(long, env = "TRAUM_ALLOW_ANONYMOUS")]
    pub allow_anonymous: Option<String>,
    /// Requests per minute per key (or per address without one); 0: no limit.
    #[arg(long, env = "TRAUM_RATE_LIMIT_PER_MIN", default_value_t = 1200)]
    pub rate_limit_per_min: u32,
    /// Requests a caller may send at once before the per-minute rate applies.
    #[arg(long, env = "TRAUM_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Upload requests received at once; more get TOO_BUSY (503, Retry-After).
    #[arg(long, env = "TRAUM_MAX_CONCURRENT_UPLOADS", default_value_t = 8)]
    pub max_concurrent_uploads: usize,
    /// Most files in one upload request.
    #[arg(long, env = "TRAUM_MAX_FILES_PER_REQUEST", default_value_t = 32)]
    pub max_files_per_request: usize,
    /// Largest multipart request (all its files together), in MB.
    #[arg(long, env = "TRAUM_MAX_REQUEST_MB", default_value_t = 1000)]
    pub max_request_mb: u64,
    /// Most operations in one batched GraphQL request.
    #[arg(long, env = "TRAUM_MAX_BATCH_OPERATIONS", default_value_t = 16)]
    pub max_batch_operations: usize,
    /// GraphiQL's npm packages for GET /graphql (default: server/graphiql/node_modules,
    /// installed by scripts/setup-web.sh).
    #[arg(long, env = "TRAUM_GRAPHIQL_DIR")]
    pub graphiql_dir: Option<PathBuf>,
    /// Deepest GraphQL query accepted (introspection excepted).
    #[arg(long, env = "TRAUM_MAX_QUERY_DEPTH", default_value_t = 12)]
    pub max_query_depth: usize,
    /// Most complex GraphQL query accepted (fields, weighted by lists).
    #[arg(long, env = "TRAUM_MAX_QUERY_COMPLEXITY", default_value_t = 2000)]
    pub max_query_complexity: usize,
    /// The built web client to serve at / (default: client/dist if present).
    #[arg(long, env = "TRAUM_CLIENT_DIR")]
    pub client_dir: Option<PathBuf>,
    /// Seconds to finish in-flight work after SIGTERM before giving it back to the queue.
    #[arg(long, env = "TRAUM_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,
    /// A folder to read in place (repeatable): added as a source if it is not one, scanned,
    /// and watched while the server runs. Sources added before are scanned and watched too.
    #[arg(long = "folder", env = "TRAUM_FOLDERS", value_delimiter = ',')]
    pub folders: Vec<PathBuf>,
    /// Milliseconds a changed file must stay unchanged before the watcher takes it (a file
    /// still being copied keeps changing).
    #[arg(long, env = "TRAUM_WATCH_SETTLE_MS", default_value_t = 1000)]
    pub watch_settle_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub library: LibraryArgs,
    /// Hide the progress bar (log lines only).
    #[arg(long)]
    pub no_progress: bool,
    /// Store copies of the files in the data directory (as uploads are) instead of adding
    /// the folders as sources read in place.
    #[arg(long)]
    pub copy: bool,
    /// Folders to add and scan (recursively, by content), or with --copy, folders or files
    /// to copy in.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Which model, where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory or Hugging Face hub id (looked up in the HF cache;
    /// downloaded unless HF_HUB_OFFLINE=1).
    #[arg(long, env = "TRAUM_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "TRAUM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32, the precision the parity tests cover), f32, or on a GPU f16 or bf16.
    #[arg(long, env = "TRAUM_DTYPE", default_value = "auto")]
    pub dtype: Precision,
    /// Most audio windows or texts per forward pass [default: 4 on the CPU, 128 on a GPU].
    #[arg(long, env = "TRAUM_BATCH_SIZE")]
    pub batch_size: Option<usize>,
}

impl ModelArgs {
    /// `--batch-size`, or the default for the device: 4 on the CPU (a clip
    /// costs within 20 % the same at batch 1 and 8 there, and a search waits
    /// behind at most one batch: 0.5–2 s on two cores), 128 on a GPU (which
    /// needs that many windows to be busy).
    pub fn batch_size(&self) -> usize {
        let gpu = match self.device {
            DeviceSpec::Cpu => false,
            DeviceSpec::Cuda(_) => true,
            // A CUDA build takes the GPU when it finds one (else the CPU,
            // then with the GPU's batch: set --batch-size there).
            DeviceSpec::Auto => cfg!(feature = "cuda"),
        };
        self.batch_size.unwrap_or(if gpu { 128 } else { 4 }).max(1)
    }
}

#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A text to embed; repeat for several.
    #[arg(long = "text", short = 't')]
    pub texts: Vec<String>,
    /// Seconds between the starts of consecutive 10 s windows of long audio
    /// (at most 10; smaller overlaps the windows).
    #[arg(long, env = "TRAUM_WINDOW_HOP_S", default_value_t = 10.0)]
    pub hop_s: f64,
    /// Audio files (wav, aiff, flac, mp3, ogg with vorbis or opus, m4a with aac or alac).
    pub files: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-process index options as `traum serve` reads them (clap also checks the
    /// command's consistency while parsing in debug builds).
    #[test]
    fn the_index_options_parse() {
        let cli = Cli::try_parse_from([
            "traum",
            "serve",
            "--index-quantization",
            "int8",
            "--index-search-ef",
            "200",
            "--index-file-candidates",
            "20",
        ])
        .expect("parse");
        let Command::Serve(serve) = cli.command else {
            panic!("not serve");
        };
        let vectors = &serve.library.vectors;
        assert_eq!(vectors.index_quantization, Quantization::Int8);
        assert_eq!(vectors.index_search_ef, Some(200));
        assert_eq!(vectors.index_file_candidates, 20);
    }
}
