//! The service end to end: the real `traum serve` binary with the tiny model,
//! over real HTTP and real WebSockets, on a fresh data directory per test.

#[path = "../entity/tests/common/mod.rs"]
mod db_common;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::{audio_fixture, chirp, noise, tone, wav_f32, wav_i16, Options, Protocol, Server};

const SEARCH: &str = "query($text: String!, $limit: Int, $threshold: Float, $filter: SearchFilterInput) {
  search(text: $text, limit: $limit, threshold: $threshold, filter: $filter) {
    latencyMs
    results { score file { id originalName container durationS } bestWindow { index startS endS score } }
  }
}";

const SIMILAR: &str = "query($id: ID!, $limit: Int) {
  similar(fileId: $id, limit: $limit) { results { score file { id } bestWindow { startS endS } } }
}";

const SEARCH_BY_AUDIO: &str = "mutation($file: Upload!, $limit: Int) {
  searchByAudio(file: $file, limit: $limit) {
    results { score file { id originalName } bestWindow { index startS endS score } }
  }
}";

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

fn fixture(name: &str) -> (String, Vec<u8>) {
    (
        name.to_string(),
        std::fs::read(audio_fixture(name)).unwrap(),
    )
}

/// Five formats in one batch upload; every stage seen live on the
/// subscription; then text, clip and similar search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_processed_live_and_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    // Live once SUBSCRIBED has arrived: every later event reaches us, no sleep needed.
    let mut events = server
        .subscribe_live(
            "subscription { libraryEvents { fileId kind status windowsDone windowsTotal } }",
            "libraryEvents",
        )
        .await;

    let chirp_wav = wav_i16(44_100, &chirp(200.0, 4000.0, 3.0, 0.5));
    let files = vec![
        ("chirp.wav".to_string(), chirp_wav.clone()),
        fixture("tone_1k_stereo_44k.flac"),
        fixture("tone_440_mono_22k.mp3"),
        fixture("tone_1k_stereo_44k.ogg"),
        fixture("tone_440_mono_22k.m4a"),
    ];
    let outcomes = server.upload_files(files.clone()).await;
    assert_eq!(outcomes.len(), 5);
    for o in &outcomes {
        assert!(o["error"].is_null(), "{o:#}");
        assert_eq!(o["created"], true);
    }
    let ids = ids(&outcomes);
    let containers: Vec<String> = {
        let mut v = Vec::new();
        for id in &ids {
            let f = server
                .query(
                    "query($id: ID!) { file(id: $id) { container } }",
                    json!({"id": id}),
                )
                .await;
            v.push(f["file"]["container"].as_str().unwrap().to_string());
        }
        v
    };
    assert_eq!(containers, ["wav", "flac", "mp3", "ogg", "mp4"]);

    // Every file goes queued → decoding → embedding → indexed, in order.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut indexed = 0;
    while indexed < ids.len() {
        let e = events
            .next_timeout(Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("events stopped: {seen:#?}\n{}", server.log()));
        let e = &e["libraryEvents"];
        let id = e["fileId"].as_str().unwrap().to_string();
        let status = e["status"].as_str().unwrap().to_string();
        assert_ne!(status, "FAILED", "{e:#}\n{}", server.log());
        if e["kind"] == "PROGRESS" {
            assert!(e["windowsDone"].as_i64() <= e["windowsTotal"].as_i64());
        }
        let stages = seen.entry(id).or_default();
        if stages.last() != Some(&status) {
            stages.push(status.clone());
        }
        if status == "INDEXED" {
            indexed += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            seen[id],
            ["QUEUED", "DECODING", "EMBEDDING", "INDEXED"],
            "stages of {id}"
        );
    }

    let health = server.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"]["loaded"], true);
    assert_eq!(health["vectorStore"]["kind"], "qdrant-edge");
    assert_eq!(health["vectorStore"]["files"], 5.0);
    assert_eq!(
        health["vectorStore"]["windows"], 5.0,
        "one window per short file"
    );
    assert_eq!(health["queue"]["indexed"], 5);

    // Text search ranks every file, best first, each with its window.
    let res = server
        .query(SEARCH, json!({"text": "a pure sine tone", "limit": 10}))
        .await;
    let results = res["search"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for r in results {
        assert_eq!(r["bestWindow"]["index"], 0);
        assert_eq!(r["bestWindow"]["startS"], 0.0);
    }
    // Threshold and filters.
    let top = scores[0];
    let res = server
        .query(
            SEARCH,
            json!({"text": "a pure sine tone", "threshold": top - 1e-6}),
        )
        .await;
    assert_eq!(res["search"]["results"].as_array().unwrap().len(), 1);
    let res = server
        .query(
            SEARCH,
            json!({"text": "x", "filter": {"formats": ["flac", "ogg"]}}),
        )
        .await;
    let formats: Vec<&str> = res["search"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"]["container"].as_str().unwrap())
        .collect();
    assert_eq!(formats.len(), 2, "{formats:?}");
    assert!(formats.iter().all(|f| ["flac", "ogg"].contains(f)));

    // The same audio as a clip finds its file first, near cosine 1.
    let (status, res) = server
        .multipart(
            SEARCH_BY_AUDIO,
            json!({"file": null, "limit": 3}),
            vec![("variables.file", "query.wav".into(), chirp_wav)],
        )
        .await;
    assert!(status.is_success(), "{res:#}");
    let first = &res["data"]["searchByAudio"]["results"][0];
    assert_eq!(first["file"]["id"], ids[0].as_str(), "{res:#}");
    assert!(first["score"].as_f64().unwrap() > 0.9999, "{first:#}");

    // "More like this" never returns the file itself.
    let res = server
        .query(SIMILAR, json!({"id": ids[1], "limit": 10}))
        .await;
    let similar: Vec<&str> = res["similar"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(similar.len(), 4);
    assert!(!similar.contains(&ids[1].as_str()));

    // Searches are logged with their latency.
    let stats = server
        .query(
            "{ searchStats { total text audio similar meanLatencyMs p95LatencyMs } recentSearches(limit: 2) { kind queryText resultCount latencyMs } }",
            json!({}),
        )
        .await;
    assert_eq!(stats["searchStats"]["total"], 5);
    assert_eq!(stats["searchStats"]["text"], 3);
    assert_eq!(stats["searchStats"]["audio"], 1);
    assert_eq!(stats["searchStats"]["similar"], 1);
    assert!(stats["searchStats"]["p95LatencyMs"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["recentSearches"][0]["kind"], "SIMILAR");
    assert_eq!(stats["recentSearches"][1]["queryText"], "query.wav");

    // The library's composition: one file per container here.
    let lib = server
        .query(
            "{ libraryStats { files bytes durationS formats { format files bytes durationS } } }",
            json!({}),
        )
        .await;
    let lib = &lib["libraryStats"];
    assert_eq!(lib["files"], 5);
    let uploaded_bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(lib["bytes"].as_f64().unwrap(), uploaded_bytes as f64);
    let formats: Vec<&str> = lib["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats.len(), 5, "{lib}");
    for f in ["wav", "flac", "mp3", "ogg", "mp4"] {
        assert!(formats.contains(&f), "{f} missing from {lib}");
    }
    // 3 s chirp + four ~2-3 s tones: every file decoded, all seconds counted.
    let seconds = lib["durationS"].as_f64().unwrap();
    assert!(seconds > 5.0 && seconds < 30.0, "{lib}");

    // Metrics saw it all.
    let metrics = server
        .http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("traum_uploads_total{outcome=\"created\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("traum_files_processed_total{outcome=\"indexed\"} 5"));
    assert!(metrics.contains("traum_embed_batch_size_bucket"));
    assert!(metrics.contains("traum_search_duration_seconds_count{kind=\"text\"} 3"));
    server.stop().await;
}

/// A 35 s file: four windows (the last end-aligned), progress reported, and a
/// clip of its third window finds that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_file_reports_progress_and_the_matching_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let marked = tone(2500.0, 10.0, 0.4);
    let mut long = noise(20.0, 0.3, 7);
    long.extend_from_slice(&marked);
    long.extend(chirp(100.0, 300.0, 5.0, 0.5));
    let (status, res) = server.upload_file("long.wav", wav_f32(&long)).await;
    assert!(status.is_success(), "{res:#}");
    let id = res["data"]["uploadFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.wait_done(std::slice::from_ref(&id)).await;
    assert_eq!(done[0]["status"], "INDEXED", "{:#}", done[0]);
    assert_eq!(done[0]["windowsDone"], 4);
    assert_eq!(done[0]["windowsTotal"], 4);
    let file = server
        .query(
            "query($id: ID!) { file(id: $id) { durationS sampleRate channels codec windowsDone windowsTotal modelId url } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(file["file"]["durationS"], 35.0);
    assert_eq!(file["file"]["sampleRate"], 48000);
    assert_eq!(file["file"]["windowsTotal"], 4);

    let (_, res) = server
        .multipart(
            SEARCH_BY_AUDIO,
            json!({"file": null, "limit": 1}),
            vec![("variables.file", "marked.wav".into(), wav_f32(&marked))],
        )
        .await;
    let hit = &res["data"]["searchByAudio"]["results"][0];
    assert_eq!(hit["file"]["id"], id.as_str(), "{res:#}");
    assert_eq!(hit["bestWindow"]["index"], 2, "{hit:#}");
    assert_eq!(hit["bestWindow"]["startS"], 20.0);
    assert_eq!(hit["bestWindow"]["endS"], 30.0);
    assert!(
        hit["bestWindow"]["score"].as_f64().unwrap() > 0.9999,
        "{hit:#}"
    );
    server.stop().await;
}

/// Wrong type, empty, oversize: refused at upload with a code; a corrupt file
/// is accepted and FAILS with a message; none of it affects a good file in
/// the same batch; duplicates come back as the existing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        Options::default().arg("--max-upload-mb").arg("1"),
    )
    .await;
    let good = wav_i16(16_000, &tone(330.0, 2.0, 0.5));
    let mut corrupt = wav_i16(16_000, &tone(330.0, 2.0, 0.5));
    // A WAV header announcing a format nobody has: 0x7777.
    corrupt[20] = 0x77;
    corrupt[21] = 0x77;
    let big = wav_i16(48_000, &noise(11.0, 0.5, 3)); // 1.06 MB > 1 MB
    let outcomes = server
        .upload_files(vec![
            ("notes.txt".into(), b"these are not sounds".to_vec()),
            ("good.wav".into(), good.clone()),
            ("empty.wav".into(), Vec::new()),
            ("big.wav".into(), big.clone()),
            ("corrupt.wav".into(), corrupt),
        ])
        .await;
    let codes: Vec<Value> = outcomes
        .iter()
        .map(|o| o["error"]["code"].clone())
        .collect();
    assert_eq!(
        codes,
        [
            json!("UNSUPPORTED_FORMAT"),
            Value::Null,
            json!("EMPTY"),
            json!("TOO_LARGE"),
            Value::Null
        ],
        "{outcomes:#?}"
    );
    assert!(outcomes[3]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upload limit of 1 MB"));
    let good_id = outcomes[1]["file"]["id"].as_str().unwrap().to_string();
    let corrupt_id = outcomes[4]["file"]["id"].as_str().unwrap().to_string();
    let done = server
        .wait_done(&[good_id.clone(), corrupt_id.clone()])
        .await;
    assert_eq!(done[0]["status"], "INDEXED");
    assert_eq!(done[1]["status"], "FAILED");
    assert_eq!(done[1]["errorCode"], "UNSUPPORTED_FORMAT", "{:#}", done[1]);
    let message = done[1]["errorMessage"].as_str().unwrap();
    assert!(message.starts_with("corrupt.wav: "), "{message}");

    // The single-file mutation answers with a GraphQL error and a code.
    let (_, res) = server.upload_file("readme.md", b"# hello".to_vec()).await;
    assert_eq!(
        res["errors"][0]["extensions"]["code"], "UNSUPPORTED_FORMAT",
        "{res:#}"
    );
    let (_, res) = server.upload_file("big.wav", big).await;
    assert_eq!(
        res["errors"][0]["extensions"]["code"], "TOO_LARGE",
        "{res:#}"
    );

    // The same content again: the existing file, not a copy.
    let again = server.upload_files(vec![("copy.wav".into(), good)]).await;
    assert_eq!(again[0]["created"], false);
    assert_eq!(again[0]["file"]["id"], good_id.as_str());
    assert_eq!(again[0]["file"]["originalName"], "good.wav");
    let list = server.query("{ files { totalCount } }", json!({})).await;
    assert_eq!(list["files"]["totalCount"], 2);
    let stored = walk_files(&server.data_dir.join("files"));
    assert_eq!(stored, 2, "one stored copy per distinct content");
    assert_eq!(
        walk_files(&server.data_dir.join("incoming")),
        0,
        "no leftovers"
    );

    // Reprocessing a failed file runs it again (and it fails again).
    let res = server
        .query(
            "mutation($id: ID!) { reprocessFile(id: $id) { status attempts } }",
            json!({"id": corrupt_id}),
        )
        .await;
    assert_eq!(res["reprocessFile"]["status"], "QUEUED");
    let done = server.wait_done(std::slice::from_ref(&corrupt_id)).await;
    assert_eq!(done[0]["status"], "FAILED");

    // Request-level limits.
    let too_deep =
        "{ files { edges { node { id } } pageInfo { hasNextPage } } health { model { id } } }";
    assert!(server.post(too_deep, json!({})).await["errors"].is_null());
    // Introspection is exempt from the depth limit (graphql-js's query is 13+ levels)...
    let res = server
        .post("{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } } } } }", json!({}))
        .await;
    assert!(res["errors"].is_null(), "{res:#}");
    // ...queries over the data are not.
    let res = server
        .post(
            "{ a { b { c { d { e { f { g { h { i { j { k { l { m { n } } } } } } } } } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        res["errors"][0]["extensions"]["code"], "QUERY_TOO_DEEP",
        "{res:#}"
    );
    let many: Vec<(String, Vec<u8>)> = (0..33).map(|i| (format!("{i}.wav"), vec![1u8])).collect();
    let paths: Vec<String> = (0..33).map(|i| format!("variables.files.{i}")).collect();
    let (status, res) = server
        .multipart(
            "mutation($files: [Upload!]!) { uploadFiles(files: $files) { filename } }",
            json!({"files": vec![Value::Null; 33]}),
            many.into_iter()
                .zip(&paths)
                .map(|((n, b), p)| (p.as_str(), n, b))
                .collect(),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(res["errors"][0]["extensions"]["code"], "TOO_MANY_FILES");
    assert_eq!(server.health().await["status"], "ok");
    server.stop().await;
}

/// The file ids of a `SEARCH` answer, best first.
fn result_ids(res: &Value) -> Vec<&str> {
    res["search"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"]["id"].as_str().unwrap())
        .collect()
}

fn walk_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                n += walk_files(&e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Stop and start on the same data directory: files, vectors and search
/// statistics are all there; the originals stream with Range requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_files_vectors_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data).await;
    let a = wav_i16(48_000, &tone(700.0, 3.0, 0.5));
    let outcomes = server
        .upload_files(vec![
            ("a.wav".into(), a.clone()),
            ("b.wav".into(), wav_i16(48_000, &noise(3.0, 0.5, 9))),
        ])
        .await;
    let ids = ids(&outcomes);
    server.wait_done(&ids).await;
    let before = server.query(SEARCH, json!({"text": "hiss"})).await;
    server.stop().await;

    let server = Server::start(&data).await;
    let health = server.health().await;
    assert_eq!(health["vectorStore"]["files"], 2.0);
    assert_eq!(health["vectorStore"]["windows"], 2.0);
    let list = server
        .query(
            "{ files(first: 1, order: OLDEST_FIRST) { totalCount edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(list["files"]["totalCount"], 2);
    assert_eq!(list["files"]["edges"][0]["node"]["status"], "INDEXED");
    assert_eq!(list["files"]["pageInfo"]["hasNextPage"], true);
    let cursor = list["files"]["pageInfo"]["endCursor"].as_str().unwrap();
    let next = server
        .query(
            "query($after: String) { files(first: 1, after: $after, order: OLDEST_FIRST) { edges { node { id } } pageInfo { hasNextPage } } }",
            json!({"after": cursor}),
        )
        .await;
    let first_id = list["files"]["edges"][0]["node"]["id"].as_str().unwrap();
    let second_id = next["files"]["edges"][0]["node"]["id"].as_str().unwrap();
    assert_ne!(first_id, second_id);
    assert_eq!(next["files"]["pageInfo"]["hasNextPage"], false);

    let after = server.query(SEARCH, json!({"text": "hiss"})).await;
    let strip = |v: &Value| {
        v["search"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["file"]["id"].clone(), r["score"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after));
    let stats = server
        .query("{ searchStats { total text } }", json!({}))
        .await;
    assert_eq!(stats["searchStats"]["total"], 2);

    // Range requests for playback.
    let res = server
        .http()
        .get(server.url(&format!("/files/{}", ids[0])))
        .header("Range", "bytes=10-109")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 10-109/{}", a.len()).as_str()
    );
    assert_eq!(res.headers()["content-type"], "audio/wav");
    assert_eq!(res.bytes().await.unwrap().as_ref(), &a[10..110]);
    let full = server
        .http()
        .get(server.url(&format!("/files/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(full.bytes().await.unwrap().as_ref(), a.as_slice());
    server.stop().await;
}

/// Delete: gone from the list, search, the index and the disk — also while
/// the file is still processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_everything_even_mid_processing() {
    let dir = tempfile::tempdir().unwrap();
    // One worker: a file queued after the delete is processed only once the deleted file's
    // worker has stopped, which makes "nothing is written afterwards" checkable without
    // waiting and hoping.
    let server = Server::start_with(
        &dir.path().join("data"),
        Options::default()
            .arg("--batch-size")
            .arg("1")
            .arg("--workers")
            .arg("1")
            .arg("--index-optimize-idle-s")
            .arg("0.2"),
    )
    .await;
    let outcomes = server
        .upload_files(vec![
            ("keep.wav".into(), wav_i16(48_000, &tone(500.0, 2.0, 0.5))),
            ("gone.wav".into(), wav_i16(48_000, &tone(900.0, 2.0, 0.5))),
        ])
        .await;
    let ids = ids(&outcomes);
    server.wait_done(&ids).await;
    let stored = server.data_dir.join("files");
    assert_eq!(walk_files(&stored), 2);
    let res = server
        .query(
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": ids[1]}),
        )
        .await;
    assert_eq!(res["deleteFile"], ids[1].as_str());
    assert!(server
        .query(
            "query($id: ID!) { file(id: $id) { id } }",
            json!({"id": ids[1]})
        )
        .await["file"]
        .is_null());
    let list = server
        .query("{ files { totalCount edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(list["files"]["totalCount"], 1);
    let res = server.query(SEARCH, json!({"text": "tone"})).await;
    assert_eq!(result_ids(&res), [ids[0].as_str()]);
    assert_eq!(walk_files(&stored), 1);
    let res = server
        .http()
        .get(server.url(&format!("/files/{}", ids[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = server
        .post(
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": ids[1]}),
        )
        .await;
    assert_eq!(res["errors"][0]["extensions"]["code"], "NOT_FOUND");

    // Mid-processing: a 10-minute file (60 windows, one per forward pass).
    let mut sub = server
        .subscribe_live(
            "subscription { libraryEvents { fileId kind status windowsDone } }",
            "libraryEvents",
        )
        .await;
    let long = wav_i16(48_000, &noise(600.0, 0.3, 11));
    let (_, res) = server.upload_file("long.wav", long).await;
    let long_id = res["data"]["uploadFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let e = sub
            .next_timeout(Duration::from_secs(60))
            .await
            .expect("progress");
        let e = &e["libraryEvents"];
        if e["fileId"] == long_id.as_str() && e["windowsDone"].as_i64().unwrap_or(0) >= 2 {
            assert_eq!(e["status"], "EMBEDDING");
            break;
        }
    }
    server
        .query(
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": long_id}),
        )
        .await;
    // It never becomes INDEXED: the next status event after the delete is DELETED.
    loop {
        let e = sub
            .next_timeout(Duration::from_secs(30))
            .await
            .expect("deleted event");
        let e = &e["libraryEvents"];
        if e["fileId"] != long_id.as_str() || e["kind"] == "PROGRESS" {
            continue;
        }
        assert_ne!(
            e["status"], "INDEXED",
            "deleted while processing, yet indexed: {e:#}"
        );
        if e["kind"] == "DELETED" {
            break;
        }
    }
    // The worker stops; no vectors of the deleted file appear afterwards. The one worker
    // takes the next file only after it has let go of the deleted one: once that file is
    // indexed, whatever the deleted file's worker would have written is there to see.
    let after = server
        .upload_files(vec![(
            "after.wav".into(),
            wav_i16(48_000, &tone(700.0, 2.0, 0.5)),
        )])
        .await;
    let after = self::ids(&after);
    for d in server.wait_done(&after).await {
        assert_eq!(d["status"], "INDEXED", "{d:#}");
    }
    let health = server.health().await;
    assert_eq!(health["vectorStore"]["files"], 2.0, "{health:#}");
    assert_eq!(health["vectorStore"]["windows"], 2.0, "{health:#}");
    assert_eq!(health["queue"]["processing"], 0);
    assert_eq!(walk_files(&stored), 2);

    // Deleted vectors stay in the index as tombstones until it is optimised; the server
    // does that by itself once writes pause (0.2 s here), and searches still find the rest.
    server
        .wait_for_metric("traum_index_writes_pending", |v| v == 0.0)
        .await;
    assert!(server.metric("traum_index_optimize_seconds_count").await >= Some(1.0));
    let res = server.query(SEARCH, json!({"text": "tone"})).await;
    let mut found = result_ids(&res);
    found.sort();
    let mut expected = vec![ids[0].as_str(), after[0].as_str()];
    expected.sort();
    assert_eq!(found, expected);
    server.stop().await;
}

/// kill -9 in the middle of processing: at the next start the interrupted
/// files finish, with no duplicate vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_ingest_resumes_at_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = Options::default()
        .arg("--batch-size")
        .arg("1")
        .arg("--workers")
        .arg("1");
    let server = Server::start_with(&data, slow.clone()).await;
    let mut sub = server
        .subscribe_live(
            "subscription { libraryEvents { fileId kind status windowsDone } }",
            "libraryEvents",
        )
        .await;
    // Three 60 s files: 6 windows each.
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("take{i}.wav"),
                wav_i16(48_000, &noise(60.0, 0.3, 100 + i)),
            )
        })
        .collect();
    let ids = ids(&server.upload_files(files).await);
    loop {
        let e = sub
            .next_timeout(Duration::from_secs(60))
            .await
            .expect("progress");
        if e["libraryEvents"]["windowsDone"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
    }
    server.kill().await;

    let server = Server::start_with(&data, slow).await;
    let done = server.wait_done(&ids).await;
    for d in &done {
        assert_eq!(d["status"], "INDEXED", "{d:#}");
        assert_eq!(d["windowsDone"], 6);
    }
    let health = server.health().await;
    assert_eq!(health["vectorStore"]["files"], 3.0);
    assert_eq!(
        health["vectorStore"]["windows"], 18.0,
        "no duplicate vectors"
    );
    let attempts = server
        .query(
            "{ files(order: OLDEST_FIRST) { edges { node { attempts } } } }",
            json!({}),
        )
        .await;
    let attempts: Vec<i64> = attempts["files"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["attempts"].as_i64().unwrap())
        .collect();
    assert_eq!(
        attempts[0], 2,
        "the interrupted file was claimed again: {attempts:?}"
    );
    server.stop().await;
}

/// The legacy `graphql-ws` protocol works beside `graphql-transport-ws`, and
/// a subscription to given files starts with their current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_websocket_protocol_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let (_, res) = server
        .upload_file("t.wav", wav_i16(48_000, &tone(1200.0, 1.0, 0.5)))
        .await;
    let id = res["data"]["uploadFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_done(std::slice::from_ref(&id)).await;
    let mut sub = support::Subscription::open(
        &server.base,
        "subscription($ids: [ID!]!) { fileEvents(ids: $ids) { fileId kind status } }",
        json!({"ids": [id, "00000000-0000-0000-0000-000000000000"]}),
        Protocol::LegacyWs,
    )
    .await;
    let first = sub.next_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first["fileEvents"]["kind"], "SUBSCRIBED", "{first:#}");
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let e = sub.next_timeout(Duration::from_secs(10)).await.unwrap();
        kinds.push((
            e["fileEvents"]["kind"].as_str().unwrap().to_string(),
            e["fileEvents"]["status"].as_str().unwrap().to_string(),
        ));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("DELETED".to_string(), "FAILED".to_string()),
            ("SNAPSHOT".to_string(), "INDEXED".to_string())
        ]
    );
    // GraphiQL on GET.
    let page = server
        .http()
        .get(server.url("/graphql"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("graphiql"), "{page}");
    server.stop().await;
}

/// PostgreSQL instead of SQLite (`DATABASE_URL`), with a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_works() {
    let Some(pg) = db_common::PgScratch::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = Options::default().env("DATABASE_URL", &pg.url);
    let server = Server::start_with(&data, options.clone()).await;
    let outcomes = server
        .upload_files(vec![(
            "pg.wav".into(),
            wav_i16(48_000, &tone(640.0, 2.0, 0.5)),
        )])
        .await;
    let ids = ids(&outcomes);
    assert_eq!(server.wait_done(&ids).await[0]["status"], "INDEXED");
    server.query(SEARCH, json!({"text": "beep"})).await;
    server.stop().await;
    assert!(
        !data.join("traum.db").exists(),
        "no SQLite file with DATABASE_URL"
    );
    let server = Server::start_with(&data, options).await;
    let res = server
        .query(
            "{ files { totalCount } searchStats { total } libraryStats { files durationS formats { format } } }",
            json!({}),
        )
        .await;
    assert_eq!(res["files"]["totalCount"], 1);
    assert_eq!(res["searchStats"]["total"], 1);
    assert_eq!(res["libraryStats"]["files"], 1);
    assert_eq!(res["libraryStats"]["formats"][0]["format"], "wav");
    let seconds = res["libraryStats"]["durationS"].as_f64().unwrap();
    assert!((seconds - 2.0).abs() < 0.01, "{seconds}");
    server.stop().await;
    pg.drop_database().await;
}

/// `traum ingest` of `music` into `data` on the tiny model (`--copy`: imported).
fn ingest_command(
    data: &std::path::Path,
    music: &std::path::Path,
    copy: bool,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(support::traum());
    cmd.arg("ingest");
    if copy {
        cmd.arg("--copy");
    }
    cmd.arg("--no-progress")
        .arg("--data-dir")
        .arg(data)
        .arg("--model")
        .arg(support::tiny_model())
        .arg(music)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL");
    cmd
}

/// `traum ingest` in place: its summary counts every file this run processed, also
/// those the workers finished while the scan was still running (small files on the
/// tiny model often are), and a second run over the same folder none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_in_place_counts_what_it_processed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let music = dir.path().join("music");
    std::fs::create_dir_all(&music).unwrap();
    let files = 64;
    for i in 0..files {
        let tone = tone(200.0 + 50.0 * i as f32, 1.0, 0.5);
        std::fs::write(music.join(format!("tone-{i}.wav")), wav_i16(48_000, &tone)).unwrap();
    }
    let ingest = || ingest_command(&data, &music, false);
    let out = ingest().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{files} processed, {files} indexed, 0 failed")),
        "{stderr}"
    );
    let out = ingest().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0 processed, 0 indexed, 0 failed"),
        "{stderr}"
    );
}

/// `traum ingest --copy`: a folder imported recursively by extension, once; a second
/// run skips what the library holds; the server then finds it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_imports_a_folder_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let music = dir.path().join("music");
    std::fs::create_dir_all(music.join("sub/deeper")).unwrap();
    std::fs::write(music.join("a.wav"), wav_i16(48_000, &tone(300.0, 2.0, 0.5))).unwrap();
    std::fs::copy(
        audio_fixture("tone_1k_stereo_44k.flac"),
        music.join("sub/b.FLAC"),
    )
    .unwrap();
    std::fs::copy(
        audio_fixture("tone_440_mono_22k.mp3"),
        music.join("sub/deeper/c.mp3"),
    )
    .unwrap();
    std::fs::write(music.join("notes.txt"), "not audio").unwrap();
    std::fs::write(music.join("sub/broken.wav"), "not audio either").unwrap();
    let ingest = || ingest_command(&data, &music, true);
    let out = ingest().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a broken file makes the exit status non-zero"
    );
    assert!(
        stderr.contains("3 added, 3 indexed, 0 already in the library, 1 failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("broken.wav: not a supported audio file"),
        "{stderr}"
    );
    let out = ingest().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0 added, 0 indexed, 3 already in the library, 1 failed"),
        "{stderr}"
    );

    let server = Server::start(&data).await;
    let res = server
        .query(
            "{ files(status: INDEXED) { totalCount edges { node { originalName } } } }",
            json!({}),
        )
        .await;
    assert_eq!(res["files"]["totalCount"], 3);
    let mut names: Vec<&str> = res["files"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["originalName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.wav", "b.FLAC", "c.mp3"]);
    assert_eq!(server.health().await["vectorStore"]["files"], 3.0);
    server.stop().await;
}

/// The server on a real Qdrant server instead of the in-process index: files are indexed
/// and searched there, `health` and `/readyz` report it, and when the node is gone
/// `/readyz` says so (while `/healthz` stays up) until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_vector_store_indexes_searches_and_reports_readiness() {
    use support::qdrant::Single;
    let test = "qdrant_vector_store_indexes_searches_and_reports_readiness";
    let Some(mut qdrant) = Single::get(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prefix = format!("svc{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let options = Options::default()
        .arg("--vector-store")
        .arg("qdrant")
        .arg("--qdrant-url")
        .arg(qdrant.grpc_url())
        .arg("--qdrant-collection-prefix")
        .arg(prefix.clone());
    let server = Server::start_with(&data, options).await;
    let outcomes = server
        .upload_files(vec![
            ("beep.wav".into(), wav_i16(48_000, &tone(880.0, 12.0, 0.5))),
            ("hiss.wav".into(), wav_i16(48_000, &noise(3.0, 0.5, 4))),
        ])
        .await;
    let ids = ids(&outcomes);
    for done in server.wait_done(&ids).await {
        assert_eq!(done["status"], "INDEXED", "{done}");
    }
    let res = server.query(SEARCH, json!({"text": "a beep"})).await;
    assert_eq!(
        res["search"]["results"].as_array().unwrap().len(),
        2,
        "{res}"
    );
    assert!(
        !data.join("index").join("windows").exists(),
        "no in-process index with --vector-store qdrant"
    );

    let health = server
        .query(
            "{ health { vectorStore { kind files windows nodes { url reachable version } collections { name status points } statusError } } }",
            json!({}),
        )
        .await;
    let store = &health["health"]["vectorStore"];
    assert_eq!(store["kind"], "qdrant", "{store}");
    assert_eq!(store["files"], 2.0, "{store}");
    assert_eq!(store["windows"], 3.0, "{store}"); // 12 s: two windows; 3 s: one
    assert_eq!(store["nodes"][0]["reachable"], true, "{store}");
    assert!(
        store["nodes"][0]["version"]
            .as_str()
            .unwrap()
            .starts_with("1."),
        "{store}"
    );
    let names: Vec<&str> = store["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
    let ready = server
        .http()
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = server
        .http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("traum_vector_store_backend{backend=\"qdrant\"} 1")
            && metrics.contains("traum_vector_store_nodes{state=\"reachable\"} 1"),
        "{metrics}"
    );

    // Delete removes the file's points from the server.
    server
        .post(
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": ids[1]}),
        )
        .await;
    let health = server.health().await;
    assert_eq!(health["vectorStore"]["files"], 1.0, "{health}");
    assert_eq!(health["vectorStore"]["windows"], 2.0, "{health}");

    // Readiness follows the node (only where the test started it, so it can stop it).
    if let Single::Started(node) = &mut qdrant {
        node.kill();
        let ready = server
            .http()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let reason = ready.text().await.unwrap();
        assert!(reason.contains("no Qdrant node answers"), "{reason}");
        let alive = server
            .http()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(alive.status(), 200);
        node.restart();
        // The client reconnects on the next request: ready again, same data.
        let ready = server
            .http()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
        let res = server.query(SEARCH, json!({"text": "a beep"})).await;
        assert_eq!(
            res["search"]["results"].as_array().unwrap().len(),
            1,
            "{res}"
        );
    }
    server.stop().await;
}
