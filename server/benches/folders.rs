//! Folder benchmark (`cargo bench -p traum-server --bench folders`), printing one table:
//! a first scan of N small files (hashing each and recording it; no embedding: workers
//! are not started, so the scan is measured alone), a rescan where nothing changed (which
//! reads no file contents: `stat` only), the process's memory after them, and the watcher's
//! latency from a file's arrival in the folder to INDEXED (tiny model, workers on).
//!
//! Options (after `--`): `--files N` (default 100000), `--arrivals N` (default 20),
//! `--settle-ms MS` (the watcher's quiet time, default 200).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traum_server::events::ApiFileStatus;
use traum_server::library::{Library, LibraryConfig};
use traum_server::sources::watch::WatchConfig;

#[path = "../../tests/support/signals.rs"]
mod signals;
mod support;

use support::memory_mib;

fn tiny_model() -> clap_model::ClapEmbedder {
    support::tiny("tiny-a")
}

/// `n` distinct 0.1 s WAVs in nested folders (100 per folder).
fn make_files(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("d{:03}/e{:02}", i / 10_000, (i / 100) % 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        // The index in the samples makes every file distinct.
        let mut samples = signals::tone(220.0, 0.1, 0.3);
        samples[0] = (i as f32) / n as f32;
        samples[1] = ((i * 7919) % 1000) as f32 / 1000.0;
        std::fs::write(
            dir.join(format!("s{i:06}.wav")),
            signals::wav_i16(8_000, &samples),
        )
        .unwrap();
    }
}

fn main() {
    let mut files = 100_000usize;
    let mut arrivals = 20usize;
    let mut settle_ms = 200u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--files" => files = value().parse().unwrap(),
            "--arrivals" => arrivals = value().parse().unwrap(),
            "--settle-ms" => settle_ms = value().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(files, arrivals, settle_ms));
}

async fn run(files: usize, arrivals: usize, settle_ms: u64) {
    println!(
        "# traum-server folder benchmark ({} cores)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    std::fs::create_dir_all(&root).unwrap();
    let made = Instant::now();
    make_files(&root, files);
    eprintln!(
        "made {files} files in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let (rss_before, _) = memory_mib();

    let model = tokio::task::spawn_blocking(tiny_model).await.unwrap();
    let mut config = LibraryConfig::new(dir.path().join("data"));
    config.index_maintenance = None;
    let lib = Library::open(config, model).await.unwrap();
    let (source, _) = entity::store::sources::add_folder(
        &lib.db,
        &root.canonicalize().unwrap().to_string_lossy(),
    )
    .await
    .unwrap();

    println!("| step | files | wall | files/s | RSS after | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |step: &str, n: usize, wall: Duration| {
        let (rss, peak) = memory_mib();
        println!(
            "| {step} | {n} | {:.1} s | {:.0} | {rss:.0} MiB | {peak:.0} MiB |",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64()
        );
    };
    let started = Instant::now();
    let counts = traum_server::sources::scan_source(&lib, source.id)
        .await
        .unwrap();
    assert_eq!(counts.new as usize, files, "{counts:?}");
    row("first scan (sniff, hash, record)", files, started.elapsed());
    let started = Instant::now();
    let counts = traum_server::sources::scan_source(&lib, source.id)
        .await
        .unwrap();
    assert_eq!(counts.found as usize, files, "{counts:?}");
    assert_eq!(
        counts.new + counts.changed + counts.moved + counts.gone,
        0,
        "{counts:?}"
    );
    row(
        "rescan, nothing changed (stat only)",
        files,
        started.elapsed(),
    );
    println!("\n(RSS before the library opened: {rss_before:.0} MiB; the {files} files stay queued: no workers ran)\n");
    drop(lib);

    // Watcher latency: a fresh library on a small folder, workers and watcher running.
    let small = dir.path().join("arrivals");
    std::fs::create_dir_all(&small).unwrap();
    let model = tokio::task::spawn_blocking(tiny_model).await.unwrap();
    let lib: Arc<Library> = Library::open(LibraryConfig::new(dir.path().join("data2")), model)
        .await
        .unwrap();
    let workers = traum_server::pipeline::start_workers(&lib);
    let watcher = traum_server::sources::watch::start(
        &lib,
        WatchConfig {
            settle: Duration::from_millis(settle_ms),
            tick: Duration::from_millis(50),
            ..Default::default()
        },
    );
    lib.add_folder(&small, true).await.unwrap();
    // Let the watch be set up before the first file arrives.
    let mut events = lib.events.subscribe();
    loop {
        let sources = lib.sources().await.unwrap();
        if sources
            .iter()
            .any(|(s, _)| s.state == entity::library_source::SourceState::Idle)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for i in 0..arrivals {
        let bytes = signals::wav_i16(48_000, &signals::noise(2.0, 0.2, i as u64 + 1));
        let arrived = Instant::now();
        std::fs::write(small.join(format!("arrival{i}.wav")), &bytes).unwrap();
        loop {
            let e = events.recv().await.unwrap();
            if e.kind == traum_server::events::FileEventKind::Status
                && e.status == ApiFileStatus::Indexed
            {
                latencies.push(arrived.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!("| watcher: arrival → INDEXED (settle {settle_ms} ms, 2 s clips) | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| {arrivals} files, one at a time | {:.0} ms | {:.0} ms | {:.0} ms |",
        pct(0.5),
        pct(0.95),
        latencies[latencies.len() - 1]
    );
    watcher.abort();
    lib.shutdown(workers, Duration::from_secs(5)).await;
}
