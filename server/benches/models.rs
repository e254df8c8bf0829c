//! Model swap benchmark (`cargo bench --bench models`), printing one table: a library of N
//! short files indexed with the tiny model `tiny-a` is reopened with `tiny-b` (other
//! weights, 20 dimensions instead of 24) and `--switch manual`; the reindex runs in the
//! background while text searches go on against the old index. It reports the reindex rate,
//! search latency before, during and after the reindex (and that every search during it was
//! answered, by the old index), how long the switch takes, and memory with two models
//! loaded.
//!
//! Options (after `--`): `--files N` (default 2000), `--workers N` (default 2).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::model_index::ModelState;
use traum_index::SearchParams;
use traum_server::library::{Library, LibraryConfig};
use traum_server::models::SwitchMode;

#[path = "../../tests/support/signals.rs"]
mod signals;
mod support;

use support::{memory_mib, tiny as load, tiny_options as options};

/// `n` distinct 2 s clips (one window each).
fn make_files(root: &Path, n: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let mut samples = signals::tone(110.0 + (i % 400) as f32 * 7.0, 2.0, 0.3);
        samples[0] = i as f32 / n as f32;
        std::fs::write(
            root.join(format!("clip{i:05}.wav")),
            signals::wav_i16(16_000, &samples),
        )
        .unwrap();
    }
}

fn config(data: &Path, workers: usize) -> LibraryConfig {
    let mut config = LibraryConfig::new(data);
    config.workers = workers;
    config.switch = SwitchMode::Manual;
    config.model_options = options("tiny-a");
    config
}

const QUERIES: [&str; 4] = [
    "warm analog bass",
    "a bright bell",
    "field recording of rain",
    "speech",
];

/// Runs text searches until `stop`; returns each latency (ms) and the model that answered.
async fn search_loop(lib: Arc<Library>, stop: Arc<AtomicBool>) -> (Vec<f64>, Vec<String>, usize) {
    let mut latencies = Vec::new();
    let mut models = Vec::new();
    let mut errors = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match lib
            .search_text(QUERIES[i % QUERIES.len()], SearchParams::with_limit(10))
            .await
        {
            Ok(outcome) => {
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                if models.last() != Some(&outcome.model) {
                    models.push(outcome.model);
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("search failed: {e}");
            }
        }
        i += 1;
        // A user typing, not a flood: the reindex gets the machine's other share.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (latencies, models, errors)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn searches_for(lib: &Arc<Library>, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        lib.search_text(QUERIES[i % QUERIES.len()], SearchParams::with_limit(10))
            .await
            .unwrap();
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn main() {
    let mut files = 2000usize;
    let mut workers = 2usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--files" => files = value().parse().unwrap(),
            "--workers" => workers = value().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(files, workers));
}

async fn wait_indexed(lib: &Library, n: usize) {
    loop {
        let counts = entity::store::count_by_status(&lib.db).await.unwrap();
        if counts.indexed as usize + counts.failed as usize >= n {
            assert_eq!(counts.failed, 0, "no file may fail");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(files: usize, workers: usize) {
    println!(
        "# traum-server model swap benchmark ({} cores, {files} files of 2 s, {workers} workers)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("library");
    make_files(&folder, files);
    let data = dir.path().join("data");

    // The library with tiny-a.
    let model = tokio::task::spawn_blocking(|| load("tiny-a"))
        .await
        .unwrap();
    let lib = Library::open(config(&data, workers), model).await.unwrap();
    let running = traum_server::pipeline::start_workers(&lib);
    let started = Instant::now();
    lib.add_folder(&folder, true).await.unwrap();
    wait_indexed(&lib, files).await;
    let first_index = started.elapsed();
    let before = searches_for(&lib, 200).await;
    lib.shutdown(running, Duration::from_secs(10)).await;
    drop(lib);

    // Reopened with tiny-b: the reindex runs while searches go on.
    let model = tokio::task::spawn_blocking(|| load("tiny-b"))
        .await
        .unwrap();
    let opened = Instant::now();
    let lib = Library::open(config(&data, workers), model).await.unwrap();
    let open_s = opened.elapsed().as_secs_f64();
    let running = traum_server::pipeline::start_workers(&lib);
    let target = lib.models.target().expect("a reindex target").key.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = tokio::spawn(search_loop(lib.clone(), stop.clone()));
    let reindex_started = Instant::now();
    let mut peak_two_models = 0f64;
    loop {
        let p = lib.models.progress().expect("progress");
        peak_two_models = peak_two_models.max(memory_mib().0);
        if p.state == ModelState::Ready {
            assert_eq!(p.done as usize, files, "{p:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reindex = reindex_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut during, answered_by, errors) = searcher.await.unwrap();
    during.sort_by(f64::total_cmp);
    let switched = Instant::now();
    traum_server::models::request_switch(&lib, &target)
        .await
        .unwrap();
    let switch_ms = switched.elapsed().as_secs_f64() * 1e3;
    let after = searches_for(&lib, 200).await;
    let (rss, peak) = memory_mib();

    println!("| step | files | wall | files/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| first index with tiny-a (scan, decode, embed) | {files} | {:.1} s | {:.0} |",
        first_index.as_secs_f64(),
        files as f64 / first_index.as_secs_f64()
    );
    println!(
        "| reindex with tiny-b, in the background | {files} | {:.1} s | {:.0} |",
        reindex.as_secs_f64(),
        files as f64 / reindex.as_secs_f64()
    );
    println!("\n| text search | searches | p50 | p95 | answered by | errors |");
    println!("|---|---:|---:|---:|---|---:|");
    let line = |what: &str, l: &[f64], by: &str, errors: usize| {
        println!(
            "| {what} | {} | {:.1} ms | {:.1} ms | {by} | {errors} |",
            l.len(),
            pct(l, 0.5),
            pct(l, 0.95)
        );
    };
    line("before (tiny-a, idle)", &before, "tiny-a", 0);
    line(
        "during the reindex",
        &during,
        &answered_by.join(" → "),
        errors,
    );
    line("after the switch (tiny-b, idle)", &after, "tiny-b", 0);
    println!(
        "\nOpening with the new model (both loaded, both indexes open): {open_s:.2} s. \
         Switch (the last check for files indexed meanwhile, then activation): \
         {switch_ms:.0} ms.\n\
         RSS during the reindex (two models): up to {peak_two_models:.0} MiB; after the switch \
         {rss:.0} MiB (peak {peak:.0} MiB)."
    );
    lib.shutdown(running, Duration::from_secs(10)).await;
}
