//! Service benchmark (`cargo bench -p traum-server --bench service`), printing
//! three tables:
//!
//! 1. ingest throughput: 10 s clips through the whole pipeline (stage, store,
//!    decode, batcher, tiny model, index, database) per second, by batch size;
//! 2. search latency p50/p95 over random vectors in the in-process store
//!    (qdrant-edge), exact (fresh segments) and after HNSW optimisation;
//! 3. GraphQL request throughput over HTTP for a simple query;
//! 4. ingest throughput with one and two replicas (libraries in this process, each with its
//!    own data directory and batcher) on one PostgreSQL and one Qdrant server: only with
//!    `--qdrant-url`.
//!
//! Options (after `--`): `--clips N` (default 48), `--sizes 100000,1000000`
//! (windows in the store; default 100000), `--queries N` (default 200),
//! `--seconds S` for the HTTP run (default 5), `--skip ingest,search,graphql,replicas`,
//! `--qdrant-url http://127.0.0.1:6334` and `--postgres-url URL` (an admin connection that
//! may create databases; default `TRAUM_TEST_POSTGRES_URL` or
//! `postgres://postgres@127.0.0.1:5432/test`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap_model::{DeviceSpec, EmbedderOptions, Precision};
use traum_index::{EdgeIndex, FileVectors, IndexConfig, SearchParams, VectorIndex, WindowVector};
use traum_server::auth::{Anonymous, Auth, RateLimit, Scope};
use traum_server::graphql::{build_schema, SchemaLimits};
use traum_server::http::{router, HttpConfig};
use traum_server::library::{Library, LibraryConfig};
use traum_server::pipeline::batcher::BatcherConfig;
use traum_server::storage::stage_from_reader;
use uuid::Uuid;

#[path = "../../tests/support/signals.rs"]
mod signals;

struct Args {
    clips: usize,
    sizes: Vec<usize>,
    queries: usize,
    seconds: u64,
    skip: Vec<String>,
    qdrant_url: Option<String>,
    postgres_url: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        clips: 48,
        sizes: vec![100_000],
        queries: 200,
        seconds: 5,
        skip: Vec::new(),
        qdrant_url: None,
        postgres_url: std::env::var("TRAUM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--clips" => args.clips = value().parse().unwrap(),
            "--sizes" => args.sizes = value().split(',').map(|s| s.parse().unwrap()).collect(),
            "--queries" => args.queries = value().parse().unwrap(),
            "--seconds" => args.seconds = value().parse().unwrap(),
            "--skip" => args.skip = value().split(',').map(String::from).collect(),
            "--qdrant-url" => args.qdrant_url = Some(value()),
            "--postgres-url" => args.postgres_url = value(),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/clap/models/tiny-a")
}

fn load_model(batch: usize) -> clap_model::ClapEmbedder {
    clap_model::ClapEmbedder::load(&EmbedderOptions {
        model: model_dir().display().to_string(),
        device: DeviceSpec::Cpu,
        precision: Precision::F32,
        max_batch: batch,
    })
    .expect("tiny model")
}

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.unit()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn bench_ingest(args: &Args) {
    println!("\n## Ingest: 10 s clips through the whole pipeline (tiny model, CPU f32)\n");
    println!("| batch | workers | clips | wall | clips/s | audio s/s |");
    println!("|---|---|---|---|---|---|");
    let clips: Vec<Vec<u8>> = (0..args.clips as u64)
        .map(|seed| signals::wav_i16(48_000, &signals::noise(10.0, 0.25, seed + 1)))
        .collect();
    for (batch, workers) in [(1, 2), (8, 2), (32, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LibraryConfig::new(dir.path());
        config.workers = workers;
        config.batcher = BatcherConfig {
            max_batch: batch,
            max_wait: Duration::from_millis(5),
            queue_capacity: (batch * 4).max(8),
        };
        let model = tokio::task::spawn_blocking(move || load_model(batch))
            .await
            .unwrap();
        let lib = Library::open(config, model).await.unwrap();
        let workers_handles = traum_server::pipeline::start_workers(&lib);
        let mut events = lib.events.subscribe();
        let started = Instant::now();
        for (i, bytes) in clips.iter().enumerate() {
            let staged = stage_from_reader(
                &lib.paths.incoming(),
                &format!("{i}.wav"),
                u64::MAX,
                bytes.as_slice(),
            )
            .unwrap()
            .unwrap();
            lib.add_file(staged).await.unwrap();
        }
        let mut done = 0;
        while done < clips.len() {
            let e = events.recv().await.unwrap();
            if e.is_terminal() {
                assert_eq!(format!("{:?}", e.status), "Indexed", "{e:?}");
                done += 1;
            }
        }
        let wall = started.elapsed();
        lib.shutdown(workers_handles, Duration::from_secs(5)).await;
        let rate = clips.len() as f64 / wall.as_secs_f64();
        println!(
            "| {batch} | {workers} | {} | {:.1} s | {rate:.2} | {:.1} |",
            clips.len(),
            wall.as_secs_f64(),
            rate * 10.0
        );
    }
}

/// Ingest with `n` replicas sharing one PostgreSQL database (made for the run, dropped after)
/// and one Qdrant server; clips are added round-robin to the replicas.
async fn bench_replicas(args: &Args) {
    use sea_orm::{ConnectionTrait, Database};
    use traum_index::QdrantConfig;
    use traum_server::library::VectorStore;
    let Some(qdrant_url) = &args.qdrant_url else {
        println!("\n(replicas: skipped; give --qdrant-url to run them)");
        return;
    };
    println!(
        "\n## Ingest with replicas on PostgreSQL + Qdrant (10 s clips, tiny model, CPU f32, batch 8, 2 workers each)\n"
    );
    println!("(collections `bench<pid>_<n>_…` are left on the Qdrant server)\n");
    println!("| replicas | clips | wall | clips/s | indexed per replica |");
    println!("|---|---|---|---|---|");
    let clips: Vec<Vec<u8>> = (0..args.clips as u64)
        .map(|seed| signals::wav_i16(48_000, &signals::noise(10.0, 0.25, seed + 1000)))
        .collect();
    let admin = Database::connect(&args.postgres_url)
        .await
        .expect("PostgreSQL (--postgres-url)");
    for n in [1usize, 2] {
        let name = format!("traum_bench_{}_{n}", std::process::id());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = match args.postgres_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("--postgres-url names no database"),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut libs = Vec::new();
        for r in 0..n {
            let mut config = LibraryConfig::new(dir.path().join(format!("replica-{r}")));
            config.database_url = Some(url.clone());
            config.storage_dir = Some(dir.path().join("storage"));
            config.workers = 2;
            config.batcher = BatcherConfig {
                max_batch: 8,
                max_wait: Duration::from_millis(5),
                queue_capacity: 32,
            };
            let mut qdrant = QdrantConfig::new(vec![qdrant_url.clone()], String::new(), 0);
            qdrant.collection_prefix = format!("bench{}_{n}_", std::process::id());
            config.vector_store = VectorStore::Qdrant(Box::new(qdrant));
            let model = tokio::task::spawn_blocking(|| load_model(8)).await.unwrap();
            let lib = Library::open(config, model).await.unwrap();
            let workers = traum_server::pipeline::start_workers(&lib);
            libs.push((lib, workers));
        }
        let mut events = libs[0].0.events.subscribe();
        let started = Instant::now();
        for (i, bytes) in clips.iter().enumerate() {
            let lib = &libs[i % n].0;
            let staged = stage_from_reader(
                &lib.paths.incoming(),
                &format!("{i}.wav"),
                u64::MAX,
                bytes.as_slice(),
            )
            .unwrap()
            .unwrap();
            lib.add_file(staged).await.unwrap();
        }
        let mut done = 0;
        while done < clips.len() {
            let e = events.recv().await.unwrap();
            if e.is_terminal() {
                assert_eq!(format!("{:?}", e.status), "Indexed", "{e:?}");
                done += 1;
            }
        }
        let wall = started.elapsed();
        let per_replica: Vec<String> = libs
            .iter()
            .map(|(lib, _)| {
                lib.metrics
                    .files_processed
                    .with_label_values(&["indexed"])
                    .get()
                    .to_string()
            })
            .collect();
        for (lib, workers) in libs {
            lib.shutdown(workers, Duration::from_secs(5)).await;
        }
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        let rate = clips.len() as f64 / wall.as_secs_f64();
        println!(
            "| {n} | {} | {:.1} s | {rate:.2} | {} |",
            clips.len(),
            wall.as_secs_f64(),
            per_replica.join(" + ")
        );
    }
}

async fn bench_search(args: &Args) {
    println!(
        "\n## Search latency over random 512-d vectors (qdrant-edge in-process, top 10 files)\n"
    );
    println!("| windows | files | insert | exact p50 / p95 | optimise | HNSW p50 / p95 |");
    println!("|---|---|---|---|---|---|");
    for &n in &args.sizes {
        let dir = tempfile::tempdir().unwrap();
        let mut config = IndexConfig::new(dir.path().join("index"), 512);
        config.flush_on_write = false;
        let index = EdgeIndex::open(config).unwrap();
        let mut rng = Rng(n as u64 + 1);
        let per_file = 10;
        let files = n / per_file;
        let started = Instant::now();
        let mut batch = Vec::new();
        for f in 0..files {
            let windows: Vec<WindowVector> = (0..per_file)
                .map(|w| WindowVector {
                    start_s: w as f64 * 10.0,
                    end_s: w as f64 * 10.0 + 10.0,
                    vector: rng.vector(512),
                })
                .collect();
            batch.push(FileVectors {
                file_id: Uuid::from_u128(f as u128 + 1),
                duration_s: per_file as f64 * 10.0,
                format: "wav".into(),
                created_at: 1_700_000_000 + f as i64,
                vector: rng.vector(512),
                windows,
            });
            if batch.len() == 500 {
                index
                    .upsert_files(std::mem::take(&mut batch))
                    .await
                    .unwrap();
            }
        }
        index.upsert_files(batch).await.unwrap();
        index.flush().await.unwrap();
        let insert = started.elapsed();
        let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| rng.vector(512)).collect();
        let exact = time_queries(&index, &queries).await;
        let t = Instant::now();
        index.optimize().await.unwrap();
        let optimise = t.elapsed();
        let hnsw = time_queries(&index, &queries).await;
        println!(
            "| {n} | {files} | {:.0} s ({:.0} vectors/s) | {} / {} | {:.0} s | {} / {} |",
            insert.as_secs_f64(),
            (n + files) as f64 / insert.as_secs_f64(),
            ms(percentile(&exact, 0.5)),
            ms(percentile(&exact, 0.95)),
            optimise.as_secs_f64(),
            ms(percentile(&hnsw, 0.5)),
            ms(percentile(&hnsw, 0.95)),
        );
    }
}

async fn time_queries(index: &EdgeIndex, queries: &[Vec<f32>]) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let hits = index.search(q, SearchParams::with_limit(10)).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(hits.len(), 10);
    }
    lat.sort();
    lat
}

async fn bench_graphql(args: &Args) {
    println!("\n## GraphQL over HTTP (loopback, keep-alive, 16 concurrent clients)\n");
    println!("| query | requests | req/s | p50 | p95 |");
    println!("|---|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let model = tokio::task::spawn_blocking(|| load_model(8)).await.unwrap();
    let lib: Arc<Library> = Library::open(LibraryConfig::new(dir.path()), model)
        .await
        .unwrap();
    // Open (as on loopback without keys) and unlimited: this measures the server, not limits.
    let auth = Auth::new(
        lib.db.clone(),
        Anonymous::Fixed(Some(Scope::Admin)),
        RateLimit {
            per_minute: 0,
            burst: 0,
        },
    )
    .await
    .unwrap();
    let schema = build_schema(lib.clone(), auth.clone(), SchemaLimits::default());
    let app = router(lib.clone(), schema, auth, HttpConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/graphql");
    for (name, query) in [
        ("{ health { status } }", "{ health { status } }"),
        (
            "{ files(first: 10) { totalCount } }",
            "{ files(first: 10) { totalCount } }",
        ),
    ] {
        let body = serde_json::json!({ "query": query }).to_string();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let client = reqwest::Client::new();
            let url = url.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let res = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(res.status().is_success());
                    res.bytes().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let started = Instant::now();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let wall = started.elapsed();
        lat.sort();
        println!(
            "| `{name}` | {} | {:.0} | {} | {} |",
            lat.len(),
            lat.len() as f64 / wall.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.95))
        );
    }
    // Close the store before its directory goes (qdrant-edge flushes on drop).
    server.abort();
    let _ = server.await;
    lib.shutdown(Vec::new(), Duration::from_secs(5)).await;
    drop(lib);
    drop(dir);
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# traum-server service benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    rt.block_on(async {
        if !args.skip.iter().any(|s| s == "ingest") {
            bench_ingest(&args).await;
        }
        if !args.skip.iter().any(|s| s == "search") {
            bench_search(&args).await;
        }
        if !args.skip.iter().any(|s| s == "graphql") {
            bench_graphql(&args).await;
        }
        if !args.skip.iter().any(|s| s == "replicas") {
            bench_replicas(&args).await;
        }
    });
}
