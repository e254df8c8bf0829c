//! Insert and search cost of the index backends at library scale, side by side: the
//! in-process store (`edge`, qdrant-edge) and a Qdrant server (`qdrant`, and `qdrant-int8`
//! with int8 scalar quantization and rescoring).
//!
//! ```sh
//! cargo bench -p traum-index --bench search              # 100k and 1M window vectors, edge
//! cargo bench -p traum-index --bench search -- --quick   # 100k only
//! cargo bench -p traum-index --bench search -- --sizes 20000,300000 --dir /mnt/big
//! cargo bench -p traum-index --bench search -- --clustered \
//!     --backends edge,edge-int8,qdrant,qdrant-int8 --qdrant-url http://127.0.0.1:6334
//! # sweep search settings over one build, kept for the next run:
//! cargo bench -p traum-index --bench search -- --sizes 1000000 --clustered \
//!     --backends edge-int8 --efs 100,200,300 --oversamples 4,10 --reuse /var/tmp/traum-bench
//! # also: --ef N  --filtered-ef N  --rescore X  --rescore-files on|off|both
//! #       --file-candidates 0,20 (files found by their file vector, scored exactly)
//! #       --m N  --ef-construct N  --filter-links
//! ```
//!
//! `--reuse DIR` keeps each built index under `DIR` (named by backend, data, size, `m` and
//! `ef_construct`; a Qdrant server's collections by a prefix made of the same) with the
//! exact file scores of the recall queries, and a later run with the same build settings
//! only searches: build settings are fixed per index, search settings (`--efs`,
//! `--oversamples`, `--rescore`, `--rescore-files`, `--filtered-ef`) are not.
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
//! figure on structureless random data where ranks 2–10 differ in the third decimal), for
//! every combination of the search settings asked for.

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
/// Queries whose results are checked against exact search (recall ± ~0.03 at 100).
const RECALL_QUERIES: usize = 100;
const LIMIT: usize = 10;

struct Args {
    sizes: Vec<usize>,
    dir: Option<PathBuf>,
    m: usize,
    ef_construct: usize,
    /// Search `ef` values to try, one row each (`None`: the backend's default).
    efs: Vec<Option<usize>>,
    /// Edge grouping oversampling factors to try, one row each.
    oversamples: Vec<usize>,
    /// Int8 rescoring oversampling.
    rescore: f64,
    /// Edge: exact rescoring of the files found, off and/or on (one row each).
    rescore_files: Vec<bool>,
    /// Edge: file-vector candidates to add, one row each.
    file_candidates: Vec<usize>,
    filtered_ef: Option<usize>,
    filter_links: bool,
    clustered: bool,
    backends: Vec<Backend>,
    qdrant_url: Option<String>,
    reuse: Option<PathBuf>,
}

impl Args {
    /// How the vectors are made, in words (the table heading, kept indexes' names).
    fn data_name(&self) -> &'static str {
        if self.clustered {
            "clustered"
        } else {
            "random"
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Edge { int8: bool },
    Qdrant { int8: bool },
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Edge { int8: false } => "edge",
            Backend::Edge { int8: true } => "edge-int8",
            Backend::Qdrant { int8: false } => "qdrant",
            Backend::Qdrant { int8: true } => "qdrant-int8",
        }
    }
}

fn parse_list<T: std::str::FromStr>(flag: &str, list: Option<String>) -> Vec<T> {
    let list = list.unwrap_or_else(|| panic!("{flag} needs a comma-separated list"));
    list.split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: not a number: {s:?}"))
        })
        .collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![100_000, 1_000_000],
        dir: None,
        m: 16,
        ef_construct: 100,
        efs: vec![None],
        oversamples: vec![IndexConfig::new("", DIM).oversample],
        rescore: IndexConfig::new("", DIM).rescore_oversampling,
        rescore_files: vec![IndexConfig::new("", DIM).rescore_files],
        file_candidates: vec![IndexConfig::new("", DIM).file_candidates],
        filtered_ef: None,
        filter_links: false,
        clustered: false,
        backends: vec![Backend::Edge { int8: false }],
        qdrant_url: std::env::var("TRAUM_TEST_QDRANT_URL").ok(),
        reuse: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.sizes = vec![100_000],
            "--sizes" => args.sizes = parse_list("--sizes", it.next()),
            "--efs" => {
                args.efs = parse_list("--efs", it.next())
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            "--oversamples" => args.oversamples = parse_list("--oversamples", it.next()),
            "--rescore" => {
                args.rescore = it.next().and_then(|s| s.parse().ok()).expect("--rescore X")
            }
            "--rescore-files" => {
                args.rescore_files = match it.next().as_deref() {
                    Some("on") => vec![true],
                    Some("off") => vec![false],
                    Some("both") => vec![false, true],
                    other => panic!("--rescore-files on|off|both, not {other:?}"),
                }
            }
            "--file-candidates" => {
                args.file_candidates = parse_list("--file-candidates", it.next())
            }
            "--reuse" => args.reuse = Some(it.next().expect("--reuse needs a path").into()),
            "--dir" => args.dir = Some(it.next().expect("--dir needs a path").into()),
            "--m" => args.m = it.next().and_then(|s| s.parse().ok()).expect("--m N"),
            "--ef-construct" => {
                args.ef_construct = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--ef-construct N")
            }
            "--ef" => {
                args.efs = vec![Some(
                    it.next().and_then(|s| s.parse().ok()).expect("--ef N"),
                )]
            }
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
                let list = it
                    .next()
                    .expect("--backends needs edge,edge-int8,qdrant,qdrant-int8");
                args.backends = list
                    .split(',')
                    .map(|b| match b.trim() {
                        "edge" => Backend::Edge { int8: false },
                        "edge-int8" => Backend::Edge { int8: true },
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

/// Best-window score of every file for each query, by brute force over regenerated data
/// (on every core: regenerating the windows is most of the work).
fn exact_file_scores(data: Data, queries: &[(usize, Vec<f32>)], n_files: usize) -> Vec<Vec<f32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n_files.div_ceil(threads);
    let parts: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let files = t * chunk..((t + 1) * chunk).min(n_files);
                    let mut scores = vec![Vec::with_capacity(files.len()); queries.len()];
                    for f in files {
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
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("exact scoring thread"))
            .collect()
    });
    let mut scores = vec![Vec::with_capacity(n_files); queries.len()];
    for part in parts {
        for (all, mine) in scores.iter_mut().zip(part) {
            all.extend(mine);
        }
    }
    scores
}

/// [`exact_file_scores`], kept in `cache` (when reusing) for the next run.
fn cached_exact_file_scores(
    cache: Option<PathBuf>,
    data: Data,
    queries: &[(usize, Vec<f32>)],
    n_files: usize,
) -> Vec<Vec<f32>> {
    if let Some(bytes) = cache.as_ref().and_then(|path| std::fs::read(path).ok()) {
        if bytes.len() == queries.len() * n_files * 4 {
            let all: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            return all.chunks(n_files).map(<[f32]>::to_vec).collect();
        }
    }
    let scores = exact_file_scores(data, queries, n_files);
    if let Some(path) = cache {
        let bytes: Vec<u8> = scores
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(&path, bytes).expect("write the exact scores");
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

/// One built index: what building it cost (absent when it was reused).
struct Build {
    backend: Backend,
    windows: usize,
    files: usize,
    cost: Option<BuildCost>,
    /// On-disk sizes (in-process store only).
    disk: Option<(u64, u64)>,
    /// Segments of the window and file shards (in-process store only).
    segments: Option<(usize, usize)>,
}

struct BuildCost {
    generate: Duration,
    insert: Duration,
    single: Stats,
    brute: Stats,
    optimize: Duration,
}

/// Searches with one combination of search settings on one built index.
/// The search settings one row was measured with (fixed per open index, not per build).
#[derive(Clone, Copy)]
struct SearchSettings {
    /// `None`: the backend's default.
    ef: Option<usize>,
    /// Edge grouping oversampling.
    oversample: usize,
    /// Edge: exact rescoring of the files found.
    rescore_files: bool,
    /// Edge: file-vector candidates added.
    file_candidates: usize,
}

struct Searched {
    backend: Backend,
    windows: usize,
    settings: SearchSettings,
    hnsw: Stats,
    format: Stats,
    duration: Stats,
    recall1: f64,
    recall10: [f64; 3],
}

/// The index under test.
enum Open {
    Edge(EdgeIndex),
    Qdrant(QdrantIndex),
}

impl Open {
    fn index(&self) -> &dyn VectorIndex {
        match self {
            Open::Edge(index) => index,
            Open::Qdrant(index) => index,
        }
    }
}

/// Where one index lives: a temp dir or a kept dir (edge), a collection prefix (Qdrant).
struct Place {
    /// Edge: the store's directory; Qdrant: the marker file's directory when reusing.
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// Qdrant collection prefix.
    prefix: String,
    /// Set when the index is kept: the file that marks it complete.
    done_marker: Option<PathBuf>,
}

fn place(backend: Backend, n_windows: usize, root: &Path, args: &Args) -> Place {
    let name = format!(
        "{}-{}-{n_windows}-m{}-efc{}{}",
        backend.name(),
        args.data_name(),
        args.m,
        args.ef_construct,
        if args.filter_links { "-links" } else { "" },
    );
    match &args.reuse {
        Some(keep) => {
            let dir = keep.join(&name);
            std::fs::create_dir_all(&dir).expect("reuse dir");
            Place {
                done_marker: Some(dir.join("complete")),
                dir,
                _temp: None,
                prefix: format!("bench_{}_", name.replace('-', "_")),
            }
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("traum-index-bench-")
                .tempdir_in(root)
                .expect("temp dir");
            Place {
                dir: temp.path().to_owned(),
                _temp: Some(temp),
                prefix: format!("bench_{}_", &Uuid::new_v4().simple().to_string()[..8]),
                done_marker: None,
            }
        }
    }
}

fn qdrant_config(place: &Place, args: &Args, int8: bool) -> QdrantConfig {
    let url = args
        .qdrant_url
        .clone()
        .expect("the qdrant backends need --qdrant-url (or TRAUM_TEST_QDRANT_URL)");
    let mut config = QdrantConfig::new(vec![url], "bench", DIM);
    config.collection_prefix = place.prefix.clone();
    config.int8 = int8;
    config.hnsw_m = args.m as u64;
    config.hnsw_ef_construct = args.ef_construct as u64;
    config.rescore_oversampling = args.rescore;
    if let Some(ef) = args.filtered_ef {
        config.filtered_hnsw_ef = ef as u64;
    }
    config.timeout = Duration::from_secs(300);
    config
}

/// Opens (or makes) the index at `place` with the search settings `ef` and `oversample`.
async fn open(backend: Backend, place: &Place, args: &Args, settings: SearchSettings) -> Open {
    match backend {
        Backend::Edge { int8 } => {
            let mut config = IndexConfig::new(place.dir.join("index"), DIM);
            config.hnsw_m = args.m;
            config.hnsw_ef_construct = args.ef_construct;
            config.filter_links = args.filter_links;
            // Preloaded explicitly before each search run (see `search_one_build`).
            config.preload = false;
            config.int8 = int8;
            config.rescore_oversampling = args.rescore;
            config.hnsw_ef = settings.ef;
            config.oversample = settings.oversample;
            config.rescore_files = settings.rescore_files;
            config.file_candidates = settings.file_candidates;
            if let Some(ef) = args.filtered_ef {
                config.filtered_hnsw_ef = ef;
            }
            let index = tokio::task::spawn_blocking(move || EdgeIndex::open(config))
                .await
                .expect("open task")
                .expect("open");
            Open::Edge(index)
        }
        Backend::Qdrant { int8 } => {
            let mut config = qdrant_config(place, args, int8);
            config.hnsw_ef = settings.ef.map(|ef| ef as u64);
            let index = QdrantIndex::connect(config)
                .await
                .expect("connect to Qdrant");
            Open::Qdrant(index)
        }
    }
}

/// The backend's optimisation: the in-process store's `optimize`, or the wait until the
/// server's background optimiser has indexed everything.
async fn optimize(open: &Open) {
    match open {
        Open::Edge(index) => index.optimize().await.expect("optimize"),
        Open::Qdrant(index) => loop {
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

/// Inserts `n_files` files into `index` and optimises it.
async fn build(
    opened: &Open,
    data: Data,
    n_files: usize,
    queries: &[(usize, Vec<f32>)],
    name: &str,
) -> BuildCost {
    let index = opened.index();
    let n_windows = n_files * WINDOWS_PER_FILE;
    eprintln!("[{name}, {n_windows} windows] inserting {n_files} files …");

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

    eprintln!("[{name}, {n_windows} windows] search before optimize …");
    let brute_queries = if n_windows > 200_000 { 10 } else { 30 };
    let plain = SearchParams::with_limit(LIMIT);
    let (brute, _) = time_searches(index, &queries[..brute_queries], &plain).await;

    eprintln!("[{name}, {n_windows} windows] optimize (HNSW build) …");
    let started = Instant::now();
    optimize(opened).await;
    let optimize = started.elapsed();
    eprintln!("  {:.0} s", optimize.as_secs_f64());
    BuildCost {
        generate,
        insert,
        single: stats(single),
        brute,
        optimize,
    }
}

async fn bench_size(
    n_windows: usize,
    root: &Path,
    args: &Args,
    backend: Backend,
) -> (Build, Vec<Searched>) {
    let n_files = n_windows / WINDOWS_PER_FILE;
    let data = if args.clustered {
        Data::Clustered {
            topics: (n_files as u64 / 50).max(1),
        }
    } else {
        Data::Random
    };
    let name = backend.name();
    let place = place(backend, n_windows, root, args);
    let mut rng = Rng(0x5eed);
    let queries: Vec<(usize, Vec<f32>)> = (0..QUERIES)
        .map(|_| make_query(data, &mut rng, n_files))
        .collect();

    let reused = place.done_marker.as_ref().is_some_and(|m| m.exists());
    let cost = if reused {
        eprintln!(
            "[{name}, {n_windows} windows] reusing {}",
            place.dir.display()
        );
        None
    } else {
        let build_settings = SearchSettings {
            ef: None,
            oversample: args.oversamples[0],
            rescore_files: false,
            file_candidates: 0,
        };
        let opened = open(backend, &place, args, build_settings).await;
        let cost = build(&opened, data, n_files, &queries, name).await;
        opened.index().flush().await.expect("flush");
        if let Some(marker) = &place.done_marker {
            std::fs::write(marker, b"").expect("mark the index complete");
        }
        Some(cost)
    };

    eprintln!("[{name}, {n_windows} windows] exact grouping for recall …");
    let exact = cached_exact_file_scores(
        place.done_marker.as_ref().map(|_| {
            place
                .dir
                .join(format!("exact-{}-queries.f32", RECALL_QUERIES))
        }),
        data,
        &queries[..RECALL_QUERIES],
        n_files,
    );

    let mut searched = Vec::new();
    let all_settings = args.efs.iter().flat_map(|&ef| {
        args.oversamples.iter().flat_map(move |&oversample| {
            args.rescore_files.iter().flat_map(move |&rescore_files| {
                args.file_candidates
                    .iter()
                    .map(move |&file_candidates| SearchSettings {
                        ef,
                        oversample,
                        rescore_files,
                        file_candidates,
                    })
            })
        })
    });
    let mut segments = None;
    for settings in all_settings {
        let opened = open(backend, &place, args, settings).await;
        if let Open::Edge(edge) = &opened {
            let stats = edge.stats();
            segments = Some((stats.windows.segments, stats.files.segments));
            // As a server does after opening its store: searches then measure the index,
            // not the disk (a reopened store starts paged out).
            let edge = edge.clone();
            let started = Instant::now();
            let bytes = tokio::task::spawn_blocking(move || edge.preload())
                .await
                .expect("preload");
            eprintln!(
                "[{name}, {n_windows} windows] preloaded {} in {:.1} s",
                gib(bytes),
                started.elapsed().as_secs_f64()
            );
        }
        let index = opened.index();
        let counts = index.count().await.expect("count");
        assert_eq!(counts.files as usize, n_files, "files in {name}");
        assert_eq!(counts.windows as usize, n_windows, "windows in {name}");
        eprintln!(
            "[{name}, {n_windows} windows] HNSW search, ef {}, oversample {}, \
             rescore files {} (+ {} file candidates) …",
            settings.ef.map_or("default".into(), |ef| ef.to_string()),
            settings.oversample,
            settings.rescore_files,
            settings.file_candidates,
        );
        searched.push(search_with(index, backend, n_windows, settings, &queries, &exact).await);
    }
    // Searches write nothing: the sizes after the last one are those of every one.
    let disk = matches!(backend, Backend::Edge { .. }).then(|| {
        let shards = ["windows", "files"].map(|shard| place.dir.join("index").join(shard));
        let segments = shards
            .iter()
            .map(|s| allocated_bytes(&s.join("segments")))
            .sum();
        let wal = shards.iter().map(|s| allocated_bytes(&s.join("wal"))).sum();
        (segments, wal)
    });

    if place.done_marker.is_none() {
        if let Backend::Qdrant { int8 } = backend {
            let config = qdrant_config(&place, args, int8);
            let client = qdrant_client::Qdrant::from_url(&config.urls[0])
                .skip_compatibility_check()
                .build()
                .expect("client");
            for kind in ["windows", "files"] {
                let _ = client.delete_collection(config.collection(kind)).await;
            }
        }
    }
    let build = Build {
        backend,
        windows: n_windows,
        files: n_files,
        cost,
        disk,
        segments,
    };
    (build, searched)
}

async fn search_with(
    index: &dyn VectorIndex,
    backend: Backend,
    n_windows: usize,
    settings: SearchSettings,
    queries: &[(usize, Vec<f32>)],
    exact: &[Vec<f32>],
) -> Searched {
    let plain = SearchParams::with_limit(LIMIT);
    time_searches(index, &queries[..10], &plain).await; // warm-up
    let (hnsw, results) = time_searches(index, queries, &plain).await;
    let format_filter = SearchParams {
        filter: SearchFilter {
            formats: vec!["flac".into()],
            ..SearchFilter::default()
        },
        ..plain.clone()
    };
    let (format, format_results) = time_searches(index, queries, &format_filter).await;
    let duration_filter = SearchParams {
        filter: SearchFilter {
            min_duration_s: Some(20.0),
            max_duration_s: Some(28.0),
            ..SearchFilter::default()
        },
        ..plain.clone()
    };
    let (duration, duration_results) = time_searches(index, queries, &duration_filter).await;

    let recall_queries = &queries[..exact.len()];
    let recall1 = recall_queries
        .iter()
        .zip(&results)
        .filter(|((source, _), hits)| hits.first().map(|h| h.file_id) == Some(file_id(*source)))
        .count() as f64
        / recall_queries.len() as f64;
    let recall10 = [
        recall(exact, &results, |_| true),
        recall(exact, &format_results, |f| {
            FORMATS[f % FORMATS.len()] == "flac"
        }),
        recall(exact, &duration_results, |f| {
            (20.0..=28.0).contains(&duration_s(f))
        }),
    ];
    Searched {
        backend,
        windows: n_windows,
        settings,
        hnsw,
        format,
        duration,
        recall1,
        recall10,
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

    let mut builds = Vec::new();
    let mut searches = Vec::new();
    for &n in &args.sizes {
        for &backend in &args.backends {
            let started = Instant::now();
            let (build, searched) = runtime.block_on(bench_size(n, &root, &args, backend));
            builds.push(build);
            searches.extend(searched);
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
         {cores} cores, limit {LIMIT}; {} data, HNSW m {}, ef_construct {}, filtered ef {}, \
         int8 rescoring ×{}, filter links {}; recall over {RECALL_QUERIES} queries",
        args.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.data_name(),
        args.m,
        args.ef_construct,
        args.filtered_ef
            .unwrap_or(IndexConfig::new("", DIM).filtered_hnsw_ef),
        args.rescore,
        if args.filter_links { "on" } else { "off" },
    );
    println!();
    println!(
        "| backend | windows | files | bulk insert | upsert_file p50 / p95 | \
         search before optimize p50 / p95 | optimize | on disk: segments / WAL | \
         segments: windows / files |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for b in &builds {
        let points = b.files * (WINDOWS_PER_FILE + 1);
        let disk = b.disk.map_or("(server)".into(), |(segments, wal)| {
            format!("{} / {}", gib(segments), gib(wal))
        });
        let segments = b
            .segments
            .map_or("(server)".into(), |(w, f)| format!("{w} / {f}"));
        match &b.cost {
            Some(c) => println!(
                "| {} | {} | {} | {:.0} vectors/s ({:.0} s; generating {:.0} s more) | {} / {} | {} / {} | {:.0} s | {disk} | {segments} |",
                b.backend.name(),
                b.windows,
                b.files,
                points as f64 / c.insert.as_secs_f64(),
                c.insert.as_secs_f64(),
                c.generate.as_secs_f64(),
                ms(c.single.p50),
                ms(c.single.p95),
                ms(c.brute.p50),
                ms(c.brute.p95),
                c.optimize.as_secs_f64(),
            ),
            None => println!(
                "| {} | {} | {} | (reused) | | | | {disk} | {segments} |",
                b.backend.name(),
                b.windows,
                b.files,
            ),
        }
    }
    println!();
    println!(
        "| backend | windows | ef | oversample | rescore files | file candidates | HNSW p50 / p95 | \
         + format filter | + duration filter | recall@1 | recall@10 (none / format / duration) |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &searches {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {:.2} | {:.2} / {:.2} / {:.2} |",
            r.backend.name(),
            r.windows,
            r.settings.ef.map_or("default".into(), |ef| ef.to_string()),
            match r.backend {
                Backend::Edge { .. } => r.settings.oversample.to_string(),
                Backend::Qdrant { .. } => "(group-by)".into(),
            },
            match r.backend {
                Backend::Edge { .. } if r.settings.rescore_files => "on",
                Backend::Edge { .. } => "off",
                Backend::Qdrant { .. } => "–",
            },
            match r.backend {
                Backend::Edge { .. } => r.settings.file_candidates.to_string(),
                Backend::Qdrant { .. } => "–".into(),
            },
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
