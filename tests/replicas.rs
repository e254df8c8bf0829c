//! Several processes on one database: real `traum serve` replicas on one PostgreSQL (and, for
//! the tests that share vectors, one real Qdrant server), claims with lease tokens, attempts
//! that hold when workers die, events that cross replicas, and subscribers that resync when
//! their replica's listener loses its connection.
//!
//! The tests that need Qdrant start it from `TRAUM_TEST_QDRANT_BIN` (or use
//! `TRAUM_TEST_QDRANT_URL`) and print SKIPPED without either; the others need only what CI
//! has (SQLite, PostgreSQL).

#[path = "../entity/tests/common/mod.rs"]
mod db_common;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{json, Value};
use support::qdrant::Single;
use support::{noise, tone, wav_i16, Options, Server};

const LIBRARY_EVENTS: &str =
    "subscription { libraryEvents { kind fileId status windowsDone windowsTotal missed } }";

fn ids(outcomes: &[Value]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| {
            o["file"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{o:#}"))
                .to_string()
        })
        .collect()
}

/// A multipart upload whose reply may never come (the server dies taking the file).
async fn upload_and_forget(server: &Server, name: &str, bytes: Vec<u8>) {
    let form = reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({"query": "mutation($file: Upload!) { uploadFile(file: $file) { id } }", "variables": {"file": null}}).to_string(),
        )
        .text("map", json!({"0": ["variables.file"]}).to_string())
        .part("0", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
    let _ = server
        .http()
        .post(server.url("/graphql"))
        .multipart(form)
        .send()
        .await;
}

async fn file_by_name(server: &Server, name: &str) -> Value {
    let res = server
        .query(
            "{ files(first: 200) { edges { node { id originalName status attempts errorCode errorMessage windowsTotal } } } }",
            json!({}),
        )
        .await;
    res["files"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .find(|n| n["originalName"] == name)
        .unwrap_or_else(|| panic!("no file {name}: {res:#}"))
}

/// `TRAUM_TEST_ABORT_ON` makes the server abort whenever it takes the file; with
/// `--max-attempts 2` the second death is the last: the next start fails the file with
/// TOO_MANY_ATTEMPTS instead of dying a third time, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_worker_dies_every_time_ends_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = Options::default()
        .arg("--workers")
        .arg("1")
        .arg("--max-attempts")
        .arg("2")
        .env("TRAUM_TEST_ABORT_ON", "crash-me");
    let mut server = Server::start_with(&data, options.clone()).await;
    let fine = server
        .upload_files(vec![(
            "fine.wav".into(),
            wav_i16(48_000, &tone(440.0, 2.0, 0.5)),
        )])
        .await;
    assert_eq!(server.wait_done(&ids(&fine)).await[0]["status"], "INDEXED");

    // Attempt 1: the server dies as soon as a worker takes the file.
    upload_and_forget(
        &server,
        "crash-me.wav",
        wav_i16(48_000, &tone(660.0, 2.0, 0.5)),
    )
    .await;
    let exit = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .expect("the server aborts on the file")
        .unwrap();
    assert!(!exit.success(), "{exit}");
    // Attempt 2: the restarted server takes it back at once (the killed run's claim) and dies
    // again.
    let (exit, log) = Server::run_to_exit(&data, options.clone(), Duration::from_secs(120)).await;
    assert!(!exit.success(), "{exit}");
    assert!(log.contains("TRAUM_TEST_ABORT_ON: aborting"), "{log}");
    // No attempts left: the next start fails it and stays up.
    let server = Server::start_with(&data, options).await;
    let crashed = file_by_name(&server, "crash-me.wav").await;
    let id = crashed["id"].as_str().unwrap().to_string();
    let done = server.wait_done(std::slice::from_ref(&id)).await;
    assert_eq!(done[0]["status"], "FAILED", "{done:?}");
    assert_eq!(done[0]["errorCode"], "TOO_MANY_ATTEMPTS", "{done:?}");
    let crashed = file_by_name(&server, "crash-me.wav").await;
    assert_eq!(crashed["attempts"], 2, "{crashed}");
    let message = crashed["errorMessage"].as_str().unwrap();
    assert!(message.contains("gave up after 2 attempts"), "{message}");
    // The server goes on working.
    let next = server
        .upload_files(vec![(
            "after.wav".into(),
            wav_i16(48_000, &tone(880.0, 2.0, 0.5)),
        )])
        .await;
    assert_eq!(server.wait_done(&ids(&next)).await[0]["status"], "INDEXED");
    server.stop().await;
}

/// Two processes may not share a data directory: the second is refused with a message that
/// says what to do, and the first is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data).await;
    let (exit, log) =
        Server::run_to_exit(&data, Options::default(), Duration::from_secs(120)).await;
    assert!(!exit.success(), "{exit}");
    assert!(
        log.contains("is in use by another traum process") && log.contains("--storage-dir"),
        "{log}"
    );
    assert_eq!(server.health().await["status"], "ok");
    server.stop().await;
}

/// Runs SQL on the test database (as another client would).
async fn sql(url: &str, query: &str) -> Vec<sea_orm::QueryResult> {
    let db = Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, query))
        .await
        .unwrap();
    db.close().await.unwrap();
    rows
}

/// Next event of a libraryEvents subscription, failing after 60 s.
async fn next_event(sub: &mut support::Subscription, server: &Server) -> Value {
    let e = sub
        .next_timeout(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no event within 60 s; log:\n{}", server.log()));
    e.as_object().unwrap().values().next().unwrap().clone()
}

/// The listener's PostgreSQL connection is terminated: both kinds of subscriber are told
/// (LAGGED, missed unknown; fileEvents with fresh snapshots), and every later event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_listener_resyncs_subscribers() {
    let Some(pg) = db_common::PgScratch::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Options::default().env("DATABASE_URL", &pg.url),
    )
    .await;
    let mut library = server.subscribe_live(LIBRARY_EVENTS, "libraryEvents").await;
    let first = server
        .upload_files(vec![(
            "a.wav".into(),
            wav_i16(48_000, &tone(500.0, 2.0, 0.5)),
        )])
        .await;
    let a = ids(&first).remove(0);
    // Events reach this replica's subscribers through PostgreSQL, even its own.
    let mut seen = Vec::new();
    while !seen.contains(&"INDEXED".to_string()) {
        let e = next_event(&mut library, &server).await;
        assert_eq!(e["fileId"], a.as_str(), "{e}");
        seen.push(e["status"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.first().map(String::as_str), Some("QUEUED"), "{seen:?}");
    let mut file = server
        .subscribe(
            "subscription($ids: [ID!]!) { fileEvents(ids: $ids) { kind fileId status missed } }",
            json!({"ids": [a]}),
        )
        .await;
    assert_eq!(next_event(&mut file, &server).await["kind"], "SUBSCRIBED");
    assert_eq!(next_event(&mut file, &server).await["kind"], "SNAPSHOT");

    let killed = sql(
        &pg.url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'",
    )
    .await;
    assert_eq!(killed.len(), 1, "one listener connection");

    let lagged = next_event(&mut library, &server).await;
    assert_eq!(lagged["kind"], "LAGGED", "{lagged}");
    assert!(lagged["missed"].is_null(), "{lagged}");
    let lagged = next_event(&mut file, &server).await;
    assert_eq!(lagged["kind"], "LAGGED", "{lagged}");
    let snapshot = next_event(&mut file, &server).await;
    assert_eq!(
        (snapshot["kind"].as_str(), snapshot["status"].as_str()),
        (Some("SNAPSHOT"), Some("INDEXED")),
        "{snapshot}"
    );
    assert_eq!(server.metric("traum_relay_resyncs_total").await, Some(1.0));

    // Listening again: a new file's every event arrives.
    let second = server
        .upload_files(vec![(
            "b.wav".into(),
            wav_i16(48_000, &tone(700.0, 2.0, 0.5)),
        )])
        .await;
    let b = ids(&second).remove(0);
    let mut seen = Vec::new();
    while !seen.contains(&"INDEXED".to_string()) {
        let e = next_event(&mut library, &server).await;
        assert_eq!(e["fileId"], b.as_str(), "{e}");
        seen.push(e["status"].as_str().unwrap().to_string());
    }
    for status in ["QUEUED", "DECODING", "EMBEDDING", "INDEXED"] {
        assert!(
            seen.iter().any(|s| s == status),
            "{status} missing from {seen:?}"
        );
    }
    server.stop().await;
    pg.drop_database().await;
}

/// Replicas of one library: each its own data directory, sharing PostgreSQL, a Qdrant server
/// and the storage directory.
struct Cluster {
    pg: db_common::PgScratch,
    _qdrant: Single,
    dir: tempfile::TempDir,
    options: Options,
}

impl Cluster {
    async fn new(test: &str, extra: &[&str]) -> Option<Cluster> {
        let qdrant = Single::get(test)?;
        let pg = db_common::PgScratch::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("rep{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut options = Options::default()
            .env("DATABASE_URL", &pg.url)
            .arg("--vector-store")
            .arg("qdrant")
            .arg("--qdrant-url")
            .arg(qdrant.grpc_url())
            .arg("--qdrant-collection-prefix")
            .arg(prefix)
            .arg("--storage-dir")
            .arg(dir.path().join("storage").to_string_lossy());
        for a in extra {
            options = options.arg(*a);
        }
        Some(Cluster {
            pg,
            _qdrant: qdrant,
            dir,
            options,
        })
    }

    async fn replica(&self, name: &str) -> Server {
        Server::start_with(&self.dir.path().join(name), self.options.clone()).await
    }

    fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }
}

fn clip(n: usize) -> (String, Vec<u8>) {
    let secs = 1.0 + (n % 3) as f32 * 6.0; // 1, 7 or 13 s: one or two windows
    (
        format!("clip-{n:03}.wav"),
        wav_i16(48_000, &noise(secs, 0.3, n as u64 + 1)),
    )
}

/// Every file once in SQL, and as many window points in Qdrant as SQL has windows.
async fn assert_indexed_exactly_once(server: &Server, expected_files: usize) {
    let res = server
        .query(
            "{ files(first: 200) { totalCount edges { node { status windowsTotal } } } health { vectorStore { files windows } } }",
            json!({}),
        )
        .await;
    let nodes: Vec<&Value> = res["files"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .collect();
    assert_eq!(nodes.len(), expected_files, "{res:#}");
    assert!(nodes.iter().all(|n| n["status"] == "INDEXED"), "{res:#}");
    let windows: i64 = nodes
        .iter()
        .map(|n| n["windowsTotal"].as_i64().unwrap())
        .sum();
    let store = &res["health"]["vectorStore"];
    assert_eq!(
        store["files"].as_f64(),
        Some(expected_files as f64),
        "{store}"
    );
    assert_eq!(store["windows"].as_f64(), Some(windows as f64), "{store}");
}

async fn indexed_here(server: &Server) -> f64 {
    let text = server
        .http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("traum_files_processed_total{outcome=\"indexed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// With `--storage-dir` the originals are kept there, not in the data directory; the upload
/// was staged under the storage's `incoming/` and nothing is left there; the file is indexed
/// and its original is served back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originals_are_kept_in_the_storage_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (data, storage) = (dir.path().join("data"), dir.path().join("storage"));
    let options = Options::default()
        .arg("--storage-dir")
        .arg(storage.to_string_lossy());
    let server = Server::start_with(&data, options).await;
    let (name, bytes) = clip(1);
    let uploaded = ids(&server.upload_files(vec![(name, bytes.clone())]).await);
    let done = server.wait_done(&uploaded).await;
    assert_eq!(done[0]["status"], "INDEXED", "{}", done[0]);
    assert_eq!(files_under(&storage.join("files")), 1);
    assert_eq!(files_under(&storage.join("incoming")), 0);
    assert_eq!(files_under(&data.join("files")), 0);
    let served = server
        .http()
        .get(server.url(&format!("/files/{}", uploaded[0])))
        .send()
        .await
        .unwrap();
    assert!(served.status().is_success(), "{}", served.status());
    assert!(
        served.bytes().await.unwrap() == bytes,
        "the original comes back"
    );
    server.stop().await;
}

/// Two replicas, 100 files uploaded half to each: each indexed exactly once, both replicas
/// worked, and a subscriber on B saw every event of every file, A's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_the_events() {
    let test = "two_replicas_share_the_work_and_the_events";
    let Some(cluster) = Cluster::new(test, &["--workers", "2"]).await else {
        return;
    };
    let a = cluster.replica("a").await;
    let b = cluster.replica("b").await;
    let mut on_b = b.subscribe_live(LIBRARY_EVENTS, "libraryEvents").await;
    const N: usize = 100;
    let mut uploads = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        let files: Vec<_> = chunk.iter().map(|&n| clip(n)).collect();
        let to = if chunk[0] % 20 == 0 { &a } else { &b };
        uploads.extend(ids(&to.upload_files(files).await));
    }
    assert_eq!(uploads.iter().collect::<HashSet<_>>().len(), N);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut done = 0;
    while done < N {
        let e = next_event(&mut on_b, &b).await;
        assert_ne!(e["kind"], "LAGGED", "{e}");
        let status = e["status"].as_str().unwrap().to_string();
        if e["kind"] == "STATUS" && status == "INDEXED" {
            done += 1;
        }
        assert_ne!(status, "FAILED", "{e}");
        seen.entry(e["fileId"].as_str().unwrap().to_string())
            .or_default()
            .push(status);
    }
    for id in &uploads {
        let statuses = &seen[id];
        assert_eq!(
            statuses.iter().filter(|s| *s == "INDEXED").count(),
            1,
            "{id}: {statuses:?}"
        );
        for status in ["QUEUED", "DECODING", "EMBEDDING"] {
            assert!(
                statuses.iter().any(|s| s == status),
                "{id}: {status} missing: {statuses:?}"
            );
        }
    }
    let (by_a, by_b) = (indexed_here(&a).await, indexed_here(&b).await);
    assert_eq!(by_a + by_b, N as f64);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both replicas worked: {by_a} + {by_b}"
    );
    assert_indexed_exactly_once(&a, N).await;
    assert_indexed_exactly_once(&b, N).await;
    // One copy of each original in the shared storage; nothing left staged.
    assert_eq!(files_under(&cluster.storage().join("files")), N);
    assert_eq!(files_under(&cluster.storage().join("incoming")), 0);
    // Search answers the same on both.
    let search = "{ search(text: \"noise\", limit: 5) { results { file { id } } } }";
    assert_eq!(
        a.query(search, json!({})).await,
        b.query(search, json!({})).await
    );
    a.stop().await;
    b.stop().await;
    cluster.pg.drop_database().await;
}

/// kill -9 of a replica holding files: the other finishes them once the lease runs out;
/// nothing lost or doubled; the attempts show what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_files_are_finished_by_the_other() {
    let test = "a_killed_replicas_files_are_finished_by_the_other";
    let Some(cluster) = Cluster::new(
        test,
        &[
            "--workers",
            "1",
            "--lease-s",
            "3",
            "--batch-size",
            "1",
            "--hop-s",
            "1",
        ],
    )
    .await
    else {
        return;
    };
    let a = cluster.replica("a").await;
    let mut on_a = a.subscribe_live(LIBRARY_EVENTS, "libraryEvents").await;
    const N: usize = 6;
    let files: Vec<_> = (0..N)
        .map(|n| {
            (
                format!("long-{n}.wav"),
                wav_i16(48_000, &noise(60.0, 0.3, 100 + n as u64)),
            )
        })
        .collect();
    let uploaded = ids(&a.upload_files(files).await);
    // A is embedding a file when it dies.
    loop {
        let e = next_event(&mut on_a, &a).await;
        if e["kind"] == "PROGRESS" {
            break;
        }
    }
    a.kill().await;
    // What A held when it died (its worker may have been between two files: then nothing).
    let held: Vec<String> = sql(
        &cluster.pg.url,
        "SELECT CAST(id AS TEXT) AS id FROM audio_file WHERE status IN ('decoding', 'embedding')",
    )
    .await
    .iter()
    .map(|r| r.try_get::<String>("", "id").unwrap())
    .collect();
    assert!(
        held.len() <= 1,
        "one worker holds at most one file: {held:?}"
    );
    let b = cluster.replica("b").await;
    let results = b.wait_done(&uploaded).await;
    for r in &results {
        assert_eq!(r["status"], "INDEXED", "{r}");
    }
    assert_indexed_exactly_once(&b, N).await;
    for id in &uploaded {
        let res = b
            .query(
                "query($id: ID!) { file(id: $id) { attempts } }",
                json!({"id": id}),
            )
            .await;
        let expected = if held.contains(id) { 2 } else { 1 };
        assert_eq!(
            res["file"]["attempts"], expected,
            "{id} (held by A: {held:?}): {res}"
        );
    }
    b.stop().await;
    cluster.pg.drop_database().await;
}

/// A delete on one replica while the other embeds the file: the worker stops (or, if it was
/// committing, takes its vectors back out), and no vector of the file remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_replica_stops_the_other() {
    let test = "a_delete_on_one_replica_stops_the_other";
    let Some(cluster) = Cluster::new(
        test,
        &["--workers", "1", "--batch-size", "1", "--hop-s", "1"],
    )
    .await
    else {
        return;
    };
    let b = cluster.replica("b").await;
    let mut on_b = b.subscribe_live(LIBRARY_EVENTS, "libraryEvents").await;
    let uploaded = b
        .upload_files(vec![(
            "long.wav".into(),
            wav_i16(48_000, &noise(60.0, 0.3, 7)),
        )])
        .await;
    let id = ids(&uploaded).remove(0);
    loop {
        let e = next_event(&mut on_b, &b).await;
        if e["kind"] == "PROGRESS" {
            break;
        }
    }
    // A starts while B embeds, and deletes the file.
    let a = cluster.replica("a").await;
    let res = a
        .query(
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(res["deleteFile"], id.as_str());
    // B's worker ends: it notices the cancel (or its lost lease) and gives up, or it had
    // finished just before the delete (the delete then removed the vectors).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lost = b
            .metric("traum_attempts_unfinished_total{reason=\"lost\"}")
            .await
            .unwrap_or(0.0);
        if lost > 0.0 || indexed_here(&b).await > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's worker did not stop; log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for server in [&a, &b] {
        let health = server.health().await;
        assert_eq!(health["vectorStore"]["files"], 0.0, "{health}");
        assert_eq!(health["vectorStore"]["windows"], 0.0, "{health}");
    }
    assert_eq!(files_under(&cluster.storage().join("files")), 0);
    a.stop().await;
    b.stop().await;
    cluster.pg.drop_database().await;
}
