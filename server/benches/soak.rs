//! Soak benchmark (`cargo bench -p traum-server --bench soak`): the real `traum serve`
//! (tiny model) with many live subscribers while files are ingested, then kept busy for a
//! while to see whether its memory stays flat. Prints one table:
//!
//! - subscribers (half `graphql-transport-ws`, half legacy `graphql-ws`), each following
//!   `libraryEvents`: did every one see every event of every file, in order (no LAGGED)?
//! - event lag: receive time minus the event's `at` (same machine, same clock): p50, p99, max;
//! - the server's resident memory after the first round and at the end, and its growth,
//!   while rounds of upload → index → delete go on for `--minutes`.
//!
//! Options (after `--`): `--subscribers N` (default 1000), `--files N` per round (default
//! 200), `--minutes M` (default 10), `--warmup-minutes W` (default 0: rounds before the
//! memory baseline is taken; the RSS growth is measured over the `M` minutes after them),
//! `--batch N` files per upload request (default 20),
//! `--server-env K=V` (repeatable) for the server's environment.
//! Targets (issue 8): p99 lag < 100 ms; RSS growth < 10 % over 10 minutes.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{tone, wav_i16, Protocol, Server, Subscription};

struct Args {
    subscribers: usize,
    files: usize,
    minutes: f64,
    warmup_minutes: f64,
    batch: usize,
    /// `K=V` pairs for the server's environment (e.g. `MALLOC_ARENA_MAX=2`).
    server_env: Vec<(String, String)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        subscribers: 1000,
        files: 200,
        minutes: 10.0,
        warmup_minutes: 0.0,
        batch: 20,
        server_env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--subscribers" => args.subscribers = value().parse().unwrap(),
            "--files" => args.files = value().parse().unwrap(),
            "--minutes" => args.minutes = value().parse().unwrap(),
            "--warmup-minutes" => args.warmup_minutes = value().parse().unwrap(),
            "--batch" => args.batch = value().parse().unwrap(),
            "--server-env" => {
                let kv = value();
                let (k, v) = kv.split_once('=').expect("--server-env K=V");
                args.server_env.push((k.to_string(), v.to_string()));
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// Per file: the stage sequence (status changes) it saw, and the last windowsDone.
    files: HashMap<String, (Vec<String>, i64)>,
    lags_ms: Vec<f64>,
    out_of_order: usize,
    lagged: usize,
    events: usize,
}

fn stage_rank(status: &str) -> i32 {
    match status {
        "QUEUED" => 0,
        "DECODING" => 1,
        "EMBEDDING" => 2,
        "INDEXED" | "FAILED" => 3,
        _ => -1,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let mut options = support::Options::default()
        .arg("--rate-limit-per-min")
        .arg("0")
        .arg("--max-files-per-request")
        .arg(args.batch.max(1).to_string());
    for (k, v) in &args.server_env {
        options = options.env(k, v);
    }
    let server = Server::start_with(&dir.path().join("data"), options).await;
    let server = Arc::new(server);

    // Subscribers, all live (SUBSCRIBED seen) before the first upload.
    let query = "subscription { libraryEvents { fileId kind status windowsDone at } }";
    let mut handles = Vec::new();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..args.subscribers)
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    let opened = Instant::now();
    for (i, seen) in seen.iter().enumerate() {
        let protocol = if i % 2 == 0 {
            Protocol::TransportWs
        } else {
            Protocol::LegacyWs
        };
        let mut sub = Subscription::open(&server.base, query, json!({}), protocol).await;
        let first = sub.next_timeout(Duration::from_secs(30)).await.unwrap();
        assert_eq!(first["libraryEvents"]["kind"], "SUBSCRIBED");
        let seen = seen.clone();
        handles.push(tokio::spawn(async move {
            while let Some(e) = sub.next_timeout(Duration::from_secs(3600)).await {
                let received = chrono::Utc::now();
                let e = &e["libraryEvents"];
                let mut s = seen.lock().unwrap();
                s.events += 1;
                if e["kind"] == "LAGGED" {
                    s.lagged += 1;
                    continue;
                }
                if let Some(at) = e["at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                {
                    let lag = (received - at.with_timezone(&chrono::Utc)).num_microseconds();
                    s.lags_ms.push(lag.unwrap_or(0) as f64 / 1e3);
                }
                let id = e["fileId"].as_str().unwrap_or("").to_string();
                let status = e["status"].as_str().unwrap_or("").to_string();
                let done = e["windowsDone"].as_i64().unwrap_or(0);
                let kind = e["kind"].as_str().unwrap_or("");
                let entry = s.files.entry(id).or_default();
                let (stages, last_done) = (&mut entry.0, &mut entry.1);
                let mut bad = false;
                if kind == "DELETED" {
                    stages.push("DELETED".into());
                } else if stages.last() != Some(&status) {
                    if let Some(prev) = stages.last() {
                        bad |= prev != "DELETED" && stage_rank(&status) < stage_rank(prev);
                    }
                    stages.push(status);
                }
                if kind == "PROGRESS" {
                    bad |= done < *last_done;
                    *last_done = done;
                }
                if bad {
                    s.out_of_order += 1;
                }
            }
        }));
    }
    let open_s = opened.elapsed().as_secs_f64();

    // Rounds: upload `files` (batches), wait until all are indexed, delete them.
    let warm = Instant::now() + Duration::from_secs_f64(args.warmup_minutes * 60.0);
    let mut deadline = None;
    let mut rounds = 0;
    let mut indexed = 0;
    // Memory after the first round that ends past the warm-up, and when that was.
    let mut rss_after_first = None;
    let mut measured_from = None;
    let mut peak_rss = 0;
    // (seconds since the first upload, memory) after each round.
    let mut rss_trace: Vec<(f64, support::Memory)> = Vec::new();
    let started = Instant::now();
    while deadline.is_none_or(|d| Instant::now() < d) {
        let mut ids = Vec::new();
        for chunk in (0..args.files)
            .collect::<Vec<_>>()
            .chunks(args.batch.max(1))
        {
            let files = chunk
                .iter()
                .map(|&i| {
                    let hz = 100.0 + (rounds * args.files + i) as f32 * 0.37;
                    let secs = 2.0 + (i % 9) as f32;
                    (
                        format!("r{rounds}-{i}.wav"),
                        wav_i16(48_000, &tone(hz, secs, 0.4)),
                    )
                })
                .collect();
            for o in server.upload_files(files).await {
                ids.push(o["file"]["id"].as_str().unwrap().to_string());
            }
        }
        for chunk in ids.chunks(200) {
            for d in server.wait_done(chunk).await {
                assert_eq!(d["status"], "INDEXED", "{d:#}");
                indexed += 1;
            }
        }
        for id in &ids {
            server
                .query(
                    "mutation($id: ID!) { deleteFile(id: $id) }",
                    json!({ "id": id }),
                )
                .await;
        }
        rounds += 1;
        if deadline.is_none() && Instant::now() >= warm {
            measured_from = Some((rounds, Instant::now()));
            deadline = Some(Instant::now() + Duration::from_secs_f64(args.minutes * 60.0));
        }
        let mut now = String::new();
        if let Some(m) = server.memory_kib() {
            peak_rss = peak_rss.max(m.peak);
            if rss_after_first.is_none() && Instant::now() >= warm {
                rss_after_first = Some(m);
            }
            rss_trace.push((started.elapsed().as_secs_f64(), m));
            now = format!(
                ", server RSS {:.0} MiB (anon {:.0}, file {:.0})",
                mib(m.rss),
                mib(m.anon),
                mib(m.file)
            );
        }
        eprintln!(
            "round {rounds}: {indexed} files indexed in {:.0} s{now}",
            started.elapsed().as_secs_f64()
        );
    }
    // Let the last events reach everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem_end = server.memory_kib();

    let mut lags = Vec::new();
    let mut complete = 0;
    let mut out_of_order = 0;
    let mut lagged = 0;
    let expected_files = rounds * args.files;
    for s in &seen {
        let s = s.lock().unwrap();
        lags.extend_from_slice(&s.lags_ms);
        out_of_order += s.out_of_order;
        lagged += s.lagged;
        let finished = s
            .files
            .values()
            .filter(|(stages, _)| stages.iter().any(|st| st == "INDEXED"))
            .count();
        if finished == expected_files {
            complete += 1;
        }
    }
    lags.sort_by(f64::total_cmp);
    println!();
    println!("what                                         value");
    println!(
        "subscribers (half each protocol)             {}",
        args.subscribers
    );
    println!("  opened and live in                         {open_s:.1} s");
    println!(
        "rounds × files (upload, index, delete)       {rounds} × {} = {expected_files}",
        args.files
    );
    println!(
        "subscribers that saw every file indexed      {complete} of {}",
        args.subscribers
    );
    println!("events out of order / LAGGED markers         {out_of_order} / {lagged}");
    println!(
        "events received (all subscribers)            {}",
        lags.len()
    );
    println!(
        "event lag p50 / p99 / max                    {:.1} / {:.1} / {:.1} ms",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    if let (Some(first), Some(end), Some((round, from))) = (rss_after_first, mem_end, measured_from)
    {
        println!(
            "server RSS after round {round:<2} / at end / peak    {:.0} / {:.0} / {:.0} MiB",
            mib(first.rss),
            mib(end.rss),
            mib(peak_rss)
        );
        let growth = |a: u64, b: u64| (b as f64 / a as f64 - 1.0) * 100.0;
        println!(
            "RSS growth over {:.1} min                     {:+.1} % (anonymous {:.0} → {:.0} MiB \
             {:+.1} %, file-backed {:.0} → {:.0} MiB)",
            from.elapsed().as_secs_f64() / 60.0,
            growth(first.rss, end.rss),
            mib(first.anon),
            mib(end.anon),
            growth(first.anon, end.anon),
            mib(first.file),
            mib(end.file)
        );
    }
    // RSS over time, a line per minute (the last round of each), to tell growth from warm-up.
    let mut minute = -1i64;
    let mut trace_line = String::new();
    for (t, m) in &rss_trace {
        let at = (t / 60.0) as i64;
        if at != minute {
            minute = at;
            trace_line.push_str(&format!(" {t:.0}s:{:.0}/{:.0}", mib(m.anon), mib(m.file)));
        }
    }
    println!("server RSS trace (s: anon/file MiB)        {trace_line}");
    // Where the index's disk goes: segments (vacuumed by the server's maintenance) and WAL.
    let index = server.data_dir.join("index");
    for shard in ["windows", "files"] {
        println!(
            "index {shard:<8} on disk: segments / WAL          {:.1} / {:.1} MiB",
            mib(traum_index::allocated_bytes(&index.join(shard).join("segments")) / 1024),
            mib(traum_index::allocated_bytes(&index.join(shard).join("wal")) / 1024)
        );
    }
    // The server's log, for what happened when (warnings, maintenance): target/soak-server.log.
    let log = server.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak-server.log");
    let _ = std::fs::write(&kept, &log);
    println!(
        "server log: {warnings} warnings/errors, kept in {}",
        kept.display()
    );
    for h in handles {
        h.abort();
    }
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => eprintln!("server still shared; it is killed on exit"),
    }
}
