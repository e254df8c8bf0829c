//! Insert and search cost of the index backends at library scale, side by side: the
//! in-process store (`edge`, qdrant-edge) and a Qdrant server (`qdrant`, and `qdrant-int8`
//! with int8 scalar quantization and rescoring).
//!
//! ```sh
//! cargo bench -p traum-index --bench search              # 100k and 1M window vectors, edge
//! cargo bench -p traum-index --bench search -- --quick   # 100k only
//! cargo bench -p traum-index --bench search -- --sizes 20000,300000 --dir /mnt/big
//! cargo bench -p traum-index --bench search -- --clustered \
//!     --backends edge,qdrant,qdrant-int8 --qdrant-url http://127.0.0.1:6334
//! # also: --ef N  --filtered-ef N  --m N  --ef-construct N  --filter-links
//! ```
//!
//! On a Qdrant server, "optimize" is the wait (after the last write) until the server's own
//! background optimisation has indexed the collections (status green, every vector in an
//! HNSW graph); the bench's collections (prefix `bench_<random>_`) are deleted afterwards.
//!
//! Data: random normalised 512-d vectors (Gaussian components), 10 windows per file
//! (100 s files), plus one file vector each; formats cycle over 4 values, durations over
//! 10–99 s. Queries: a stored window plus as much Gaussian noise again (cosine ≈ 0.71 to
//! its source window; random vectors score ≈ 0 ± 0.05 to each other). Random vectors in
//! 512-d have no neighbourhood structure and are the worst case for HNSW; `--clustered`
//! groups files into topics of ~50 and windows around their file, which is closer to
//! real embeddings.
//!
//! For each size it reports: bulk insert (`upsert_files`, 100 files per call, one flush
//! each), single `upsert_file` latency (with its flush), exact search before
//! `optimize` (one appendable segment, brute force), the `optimize` time (HNSW build),
//! and search latency after it, unfiltered and with a format or duration filter, plus
//! file-level recall against exact grouping (recall@1: the query's source file comes
//! first; recall@10: overlap of the top 10 files with the exact top 10, a pessimistic
//! figure on structureless random data where ranks 2–10 differ in the third decimal).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use traum_index::{
    allocated_bytes, EdgeIndex, FileHit, FileVectors, IndexConfig, QdrantConfig, QdrantIndex,
    SearchFilter, SearchParams, Uuid, VectorIndex, WindowVector,
};

const DIM: usize = 512;
const WINDOWS_PER_FILE: usize = 10;
const FORMATS: [&str; 4] = ["wav", "flac", "mp3", "m4a/aac"];
const BATCH_FILES: usize = 100;
const SINGLE_UPSERTS: usize = 50;
const QUERIES: usize = 200;
const RECALL_QUERIES: usize = 20;
const LIMIT: usize = 10;

struct Args {
    sizes: Vec<usize>,
    dir: Option<PathBuf>,
    m: usize,
    ef_construct: usize,
    ef: Option<usize>,
    filtered_ef: Option<usize>,
    filter_links: bool,
    clustered: bool,
    backends: Vec<Backend>,
    qdrant_url: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Edge,
    Qdrant { int8: bool },
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Edge => "edge",
            Backend::Qdrant { int8: false } => "qdrant",
            Backend::Qdrant { int8: true } => "qdrant-int8",
        }
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![100_000, 1_000_000],
        dir: None,
        m: 16,
        ef_construct: 100,
        ef: None,
        filtered_ef: None,
        filter_links: false,
        clustered: false,
        backends: vec![Backend::Edge],
        qdrant_url: std::env::var("TRAUM_TEST_QDRANT_URL").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.sizes = vec![100_000],
            "--sizes" => {
                let list = it.next().expect("--sizes needs a comma-separated list");
                args.sizes = list
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse().expect("a window count"))
                    .collect();
            }
            "--dir" => args.dir = Some(it.next().expect("--dir needs a path").into()),
            "--m" => args.m = it.next().and_then(|s| s.parse().ok()).expect("--m N"),
            "--ef-construct" => {
                args.ef_construct = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--ef-construct N")
            }
            "--ef" => args.ef = Some(it.next().and_then(|s| s.parse().ok()).expect("--ef N")),
            "--filtered-ef" => {
                args.filtered_ef = Some(
                    it.next()
                        .and_then(|s| s.parse().ok())
                        .expect("--filtered-ef N"),
                )
            }
            "--filter-links" => args.filter_links = true,
            "--clustered" => args.clustered = true,
            "--backends" => {
                let list = it.next().expect("--backends needs edge,qdrant,qdrant-int8");
                args.backends = list
                    .split(',')
                    .map(|b| match b.trim() {
                        "edge" => Backend::Edge,
                        "qdrant" => Backend::Qdrant { int8: false },
                        "qdrant-int8" => Backend::Qdrant { int8: true },
                        other => panic!("unknown backend {other:?}"),
                    })
                    .collect();
            }
            "--qdrant-url" => args.qdrant_url = it.next(),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    args
}

/// SplitMix64: deterministic, seedable, fast.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `out.len()` standard normal samples (Box–Muller).
    fn gaussians(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let r = (-2.0 * self.unit().ln()).sqrt();
            let theta = std::f64::consts::TAU * self.unit();
            pair[0] = (r * theta.cos()) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (r * theta.sin()) as f32;
            }
        }
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// How the vectors are made.
#[derive(Clone, Copy)]
enum Data {
    /// Independent random unit vectors: no structure at all (the worst case for HNSW).
    Random,
    /// Files around topics of ~50 files each, windows around their file: closer to real
    /// embeddings, and every query has related files beyond its source.
    Clustered { topics: u64 },
}

/// A random unit vector from `seed`.
fn unit_vector(seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut v = vec![0.0; DIM];
    rng.gaussians(&mut v);
    normalise(&mut v);
    v
}

/// `a + w·b`, normalised.
fn blend(mut a: Vec<f32>, b: &[f32], w: f32) -> Vec<f32> {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += w * y);
    normalise(&mut a);
    a
}

/// Window `w` of file `f`: the same vector every time it is asked for.
fn window_vector(data: Data, f: usize, w: usize) -> Vec<f32> {
    let own = unit_vector((f as u64) << 8 | w as u64);
    match data {
        Data::Random => own,
        Data::Clustered { topics } => {
            let topic = unit_vector(u64::MAX - (f as u64).wrapping_mul(0x9e37) % topics);
            let file = blend(topic, &unit_vector(u64::MAX / 2 - f as u64), 0.8);
            blend(file, &own, 0.6)
        }
    }
}

fn file_id(f: usize) -> Uuid {
    Uuid::from_u128(0x7a0e_0000_0000_0000_0000_0000_0000_0000 | f as u128)
}

fn duration_s(f: usize) -> f64 {
    10.0 + (f * 37 % 90) as f64
}

fn make_file(data: Data, f: usize) -> FileVectors {
    let windows: Vec<Vec<f32>> = (0..WINDOWS_PER_FILE)
        .map(|w| window_vector(data, f, w))
        .collect();
    let mut vector = vec![0.0; DIM];
    for w in &windows {
        vector.iter_mut().zip(w).for_each(|(a, b)| *a += b);
    }
    normalise(&mut vector);
    let duration = duration_s(f);
    let hop = duration / WINDOWS_PER_FILE as f64;
    FileVectors {
        file_id: file_id(f),
        duration_s: duration,
        format: FORMATS[f % FORMATS.len()].into(),
        created_at: 1_700_000_000 + f as i64,
        vector,
        windows: windows
            .into_iter()
            .enumerate()
            .map(|(i, vector)| WindowVector {
                start_s: i as f64 * hop,
                end_s: (i as f64 * hop + 10.0).min(duration),
                vector,
            })
            .collect(),
    }
}

/// A query near window `w` of file `f`.
fn make_query(data: Data, rng: &mut Rng, n_files: usize) -> (usize, Vec<f32>) {
    let f = (rng.next_u64() % n_files as u64) as usize;
    let w = (rng.next_u64() % WINDOWS_PER_FILE as u64) as usize;
    let mut noise = vec![0.0; DIM];
    rng.gaussians(&mut noise);
    normalise(&mut noise);
    let mut q = window_vector(data, f, w);
    q.iter_mut().zip(&noise).for_each(|(a, b)| *a += b);
    normalise(&mut q);
    (f, q)
}

struct Stats {
    p50: Duration,
    p95: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.50),
        p95: at(0.95),
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

async fn time_searches(
    index: &dyn VectorIndex,
    queries: &[(usize, Vec<f32>)],
    params: &SearchParams,
) -> (Stats, Vec<Vec<FileHit>>) {
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for (_, q) in queries {
        let started = Instant::now();
        let hits = index.search(q, params.clone()).await.expect("search");
        times.push(started.elapsed());
        results.push(hits);
    }
    (stats(times), results)
}

/// Best-window score of every file for each query, by brute force over regenerated data.
fn exact_file_scores(data: Data, queries: &[(usize, Vec<f32>)], n_files: usize) -> Vec<Vec<f32>> {
    let mut scores = vec![Vec::with_capacity(n_files); queries.len()];
    for f in 0..n_files {
        let windows: Vec<Vec<f32>> = (0..WINDOWS_PER_FILE)
            .map(|w| window_vector(data, f, w))
            .collect();
        for (qi, (_, q)) in queries.iter().enumerate() {
            let best = windows
                .iter()
                .map(|w| dot(q, w))
                .fold(f32::NEG_INFINITY, f32::max);
            scores[qi].push(best);
        }
    }
    scores
}

/// Mean overlap of the returned top files with the exact top files among those `keep`ing.
fn recall(exact: &[Vec<f32>], results: &[Vec<FileHit>], keep: impl Fn(usize) -> bool) -> f64 {
    let mut total = 0.0;
    let n = exact.len().min(results.len());
    for (scores, hits) in exact.iter().zip(results) {
        let mut files: Vec<usize> = (0..scores.len()).filter(|&f| keep(f)).collect();
        files.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let truth: HashSet<Uuid> = files.into_iter().take(LIMIT).map(file_id).collect();
        let got = hits.iter().filter(|h| truth.contains(&h.file_id)).count();
        total += got as f64 / truth.len() as f64;
    }
    total / n as f64
}

struct Row {
    backend: Backend,
    windows: usize,
    files: usize,
    generate: Duration,
    insert: Duration,
    single: Stats,
    brute: Stats,
    optimize: Duration,
    hnsw: Stats,
    format: Stats,
    duration: Stats,
    recall1: f64,
    recall10: [f64; 3],
    /// On-disk sizes (in-process store only).
    disk: Option<(u64, u64)>,
}

/// The index under test, and how to clean up after it.
enum Open {
    Edge(EdgeIndex, tempfile::TempDir),
    Qdrant(QdrantIndex, QdrantConfig),
}

impl Open {
    fn index(&self) -> &dyn VectorIndex {
        match self {
            Open::Edge(index, _) => index,
            Open::Qdrant(index, _) => index,
        }
    }
}

async fn open(backend: Backend, root: &Path, args: &Args) -> Open {
    match backend {
        Backend::Edge => {
            let dir = tempfile::Builder::new()
                .prefix("traum-index-bench-")
                .tempdir_in(root)
                .expect("temp dir");
            let mut config = IndexConfig::new(dir.path().join("index"), DIM);
            config.hnsw_m = args.m;
            config.hnsw_ef_construct = args.ef_construct;
            config.filter_links = args.filter_links;
            config.hnsw_ef = args.ef;
            if let Some(ef) = args.filtered_ef {
                config.filtered_hnsw_ef = ef;
            }
            Open::Edge(EdgeIndex::open(config).expect("open"), dir)
        }
        Backend::Qdrant { int8 } => {
            let url = args
                .qdrant_url
                .clone()
                .expect("the qdrant backends need --qdrant-url (or TRAUM_TEST_QDRANT_URL)");
            let mut config = QdrantConfig::new(vec![url], "bench", DIM);
            config.collection_prefix =
                format!("bench_{}_", &Uuid::new_v4().simple().to_string()[..8]);
            config.int8 = int8;
            config.hnsw_m = args.m as u64;
            config.hnsw_ef_construct = args.ef_construct as u64;
            config.hnsw_ef = args.ef.map(|ef| ef as u64);
            if let Some(ef) = args.filtered_ef {
                config.filtered_hnsw_ef = ef as u64;
            }
            config.timeout = Duration::from_secs(300);
            let index = QdrantIndex::connect(config.clone())
                .await
                .expect("connect to Qdrant");
            Open::Qdrant(index, config)
        }
    }
}

/// The backend's optimisation: the in-process store's `optimize`, or the wait until the
/// server's background optimiser has indexed everything.
async fn optimize(open: &Open) {
    match open {
        Open::Edge(index, _) => index.optimize().await.expect("optimize"),
        Open::Qdrant(index, _) => loop {
            // A segment below qdrant's indexing threshold (10 000 KiB) is searched exactly
            // and never gets a graph; everything above it must be indexed.
            let below_threshold = |points: u64| points * DIM as u64 * 4 <= 10_000 * 1024;
            let status = index.status().await.expect("status");
            if status.collections.iter().all(|c| {
                c.status == "green"
                    && (c.indexed_vectors * 100 >= c.points * 99 || below_threshold(c.points))
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        },
    }
}

async fn bench_size(n_windows: usize, root: &Path, args: &Args, backend: Backend) -> Row {
    let n_files = n_windows / WINDOWS_PER_FILE;
    let data = if args.clustered {
        Data::Clustered {
            topics: (n_files as u64 / 50).max(1),
        }
    } else {
        Data::Random
    };
    let opened = open(backend, root, args).await;
    let index = opened.index();
    let backend_name = backend.name();
    eprintln!("[{backend_name}, {n_windows} windows] inserting {n_files} files …");

    // Bulk insert. Generating vectors is timed apart and left out of the throughput.
    let mut generate = Duration::ZERO;
    let mut insert = Duration::ZERO;
    let bulk_files = n_files - SINGLE_UPSERTS;
    let mut f = 0;
    while f < bulk_files {
        let end = (f + BATCH_FILES).min(bulk_files);
        let started = Instant::now();
        let batch: Vec<FileVectors> = (f..end).map(|f| make_file(data, f)).collect();
        generate += started.elapsed();
        let started = Instant::now();
        index.upsert_files(batch).await.expect("upsert_files");
        insert += started.elapsed();
        f = end;
        if f % (bulk_files / 10).max(1) < BATCH_FILES {
            eprintln!(
                "  {f} files, {:.0} vectors/s",
                (f * (WINDOWS_PER_FILE + 1)) as f64 / insert.as_secs_f64()
            );
        }
    }
    // The last files one at a time, as the service indexes them.
    let mut single = Vec::new();
    for f in bulk_files..n_files {
        let file = make_file(data, f);
        let started = Instant::now();
        index.upsert_file(file).await.expect("upsert_file");
        single.push(started.elapsed());
    }
    let counts = index.count().await.expect("count");
    assert_eq!(counts.files as usize, n_files);
    assert_eq!(counts.windows as usize, n_windows);

    let mut rng = Rng(0x5eed);
    let queries: Vec<(usize, Vec<f32>)> = (0..QUERIES)
        .map(|_| make_query(data, &mut rng, n_files))
        .collect();
    let plain = SearchParams::with_limit(LIMIT);

    eprintln!("[{backend_name}, {n_windows} windows] search before optimize …");
    let brute_queries = if n_windows > 200_000 { 10 } else { 30 };
    let (brute, brute_results) = time_searches(index, &queries[..brute_queries], &plain).await;

    eprintln!("[{backend_name}, {n_windows} windows] optimize (HNSW build) …");
    let started = Instant::now();
    optimize(&opened).await;
    let optimize = started.elapsed();
    eprintln!("  {:.0} s", optimize.as_secs_f64());

    eprintln!("[{backend_name}, {n_windows} windows] HNSW search …");
    time_searches(index, &queries[..10], &plain).await; // warm-up
    let (hnsw, results) = time_searches(index, &queries, &plain).await;
    let format_filter = SearchParams {
        filter: SearchFilter {
            formats: vec!["flac".into()],
            ..SearchFilter::default()
        },
        ..plain.clone()
    };
    let (format, format_results) = time_searches(index, &queries, &format_filter).await;
    let duration_filter = SearchParams {
        filter: SearchFilter {
            min_duration_s: Some(20.0),
            max_duration_s: Some(28.0),
            ..SearchFilter::default()
        },
        ..plain.clone()
    };
    let (duration, duration_results) = time_searches(index, &queries, &duration_filter).await;

    eprintln!("[{backend_name}, {n_windows} windows] exact grouping for recall …");
    let exact = exact_file_scores(data, &queries[..RECALL_QUERIES], n_files);
    let recall1 = queries[..RECALL_QUERIES]
        .iter()
        .zip(&results)
        .filter(|((source, _), hits)| hits.first().map(|h| h.file_id) == Some(file_id(*source)))
        .count() as f64
        / RECALL_QUERIES as f64;
    eprintln!(
        "  exact-search recall@10 (checks the grouping): {:.2}",
        recall(&exact, &brute_results, |_| true)
    );
    let recall10 = [
        recall(&exact, &results, |_| true),
        recall(&exact, &format_results, |f| {
            FORMATS[f % FORMATS.len()] == "flac"
        }),
        recall(&exact, &duration_results, |f| {
            (20.0..=28.0).contains(&duration_s(f))
        }),
    ];

    index.flush().await.expect("flush");
    let disk = match &opened {
        Open::Edge(_, dir) => {
            let shards = ["windows", "files"].map(|shard| dir.path().join("index").join(shard));
            let segments = shards
                .iter()
                .map(|s| allocated_bytes(&s.join("segments")))
                .sum();
            let wal = shards.iter().map(|s| allocated_bytes(&s.join("wal"))).sum();
            Some((segments, wal))
        }
        Open::Qdrant(_, config) => {
            let client = qdrant_client::Qdrant::from_url(&config.urls[0])
                .skip_compatibility_check()
                .build()
                .expect("client");
            for kind in ["windows", "files"] {
                let _ = client.delete_collection(config.collection(kind)).await;
            }
            None
        }
    };
    drop(opened);

    Row {
        backend,
        windows: n_windows,
        files: n_files,
        generate,
        insert,
        single: stats(single),
        brute,
        optimize,
        hnsw,
        format,
        duration,
        recall1,
        recall10,
        disk,
    }
}

fn main() {
    let args = parse_args();
    let root = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut rows = Vec::new();
    for &n in &args.sizes {
        for &backend in &args.backends {
            let started = Instant::now();
            rows.push(runtime.block_on(bench_size(n, &root, &args, backend)));
            eprintln!(
                "[{}, {n} windows] done in {:.0} s",
                backend.name(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    println!();
    println!(
        "traum-index ({}), {DIM}-d cosine, {WINDOWS_PER_FILE} windows per file, \
         {cores} cores, limit {LIMIT}; {} data, HNSW m {}, ef_construct {}, ef {} (filtered {}), \
         filter links {}",
        args.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        if args.clustered {
            "clustered"
        } else {
            "random"
        },
        args.m,
        args.ef_construct,
        args.ef.map_or("default".to_string(), |ef| ef.to_string()),
        args.filtered_ef
            .unwrap_or(IndexConfig::new("", DIM).filtered_hnsw_ef),
        if args.filter_links { "on" } else { "off" },
    );
    println!();
    println!(
        "| backend | windows | files | bulk insert | upsert_file p50 / p95 | on disk: segments / WAL |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let points = r.files * (WINDOWS_PER_FILE + 1);
        println!(
            "| {} | {} | {} | {:.0} vectors/s ({:.0} s; generating {:.0} s more) | {} / {} | {} |",
            r.backend.name(),
            r.windows,
            r.files,
            points as f64 / r.insert.as_secs_f64(),
            r.insert.as_secs_f64(),
            r.generate.as_secs_f64(),
            ms(r.single.p50),
            ms(r.single.p95),
            r.disk.map_or("(server)".into(), |(segments, wal)| format!(
                "{} / {}",
                gib(segments),
                gib(wal)
            )),
        );
    }
    println!();
    println!(
        "| backend | windows | exact search p50 / p95 | optimize | HNSW p50 / p95 | \
         + format filter | + duration filter | recall@1 | recall@10 (none / format / duration) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} / {} | {:.0} s | {} / {} | {} / {} | {} / {} | {:.2} | {:.2} / {:.2} / {:.2} |",
            r.backend.name(),
            r.windows,
            ms(r.brute.p50),
            ms(r.brute.p95),
            r.optimize.as_secs_f64(),
            ms(r.hnsw.p50),
            ms(r.hnsw.p95),
            ms(r.format.p50),
            ms(r.format.p95),
            ms(r.duration.p50),
            ms(r.duration.p95),
            r.recall1,
            r.recall10[0],
            r.recall10[1],
            r.recall10[2],
        );
    }
}
