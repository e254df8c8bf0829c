//! Model versions on a real server: a library indexed with one tiny model is started with
//! another (other weights, 20-dimensional instead of 24); the old index keeps answering
//! while the new model reindexes beside it, the switch makes the new one answer, the old
//! one is kept until dropped, and a reindex killed midway resumes where it stopped.
//!
//! Every wait is for a state the server reaches by itself, with a deadline. The pauses the
//! tests need (a reindex half done, a reindex killed after n files) come from test hooks of
//! the debug build, not from timing.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{noise, tone, wav_i16, Options, Server};

/// Distinct short WAVs (one window each).
fn samples(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut signal = tone(200.0 + 90.0 * i as f32, 1.5, 0.4);
            for (s, r) in signal.iter_mut().zip(noise(1.5, 0.05, i as u64)) {
                *s += r;
            }
            (format!("sample {i}.wav"), wav_i16(16_000, &signal))
        })
        .collect()
}

async fn upload_all(server: &Server, files: Vec<(String, Vec<u8>)>) -> Vec<String> {
    let ids: Vec<String> = server
        .upload_files(files)
        .await
        .iter()
        .map(|o| o["file"]["id"].as_str().expect("uploaded").to_owned())
        .collect();
    for done in server.wait_done(&ids).await {
        assert_eq!(done["status"], "INDEXED", "{done:#}");
    }
    ids
}

const HEALTH: &str = "{ health { model { id key weightsDigest embeddingDim } vectorStore { files } reindex { key modelId state filesDone filesFailed filesTotal error } } }";

async fn health(server: &Server) -> Value {
    server.query(HEALTH, json!({})).await["health"].clone()
}

/// Waits until the health satisfies `done` (looking every 50 ms, 120 s at most).
async fn wait_health(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = health(server).await;
        if done(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "waited 120 s for {what}; health {h:#}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A text search: the key of the index that answered, and the ids found.
async fn search(server: &Server, text: &str) -> (String, Vec<String>) {
    let data = server
        .query(
            "query($t: String!) { search(text: $t, limit: 50) { model results { file { id } score } } }",
            json!({ "t": text }),
        )
        .await;
    let model = data["search"]["model"].as_str().unwrap().to_owned();
    let mut ids: Vec<String> = data["search"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    (model, ids)
}

async fn models(server: &Server) -> Vec<Value> {
    server
        .query(
            "{ models { key modelId dim state loaded filesDone filesFailed filesTotal } }",
            json!({}),
        )
        .await["models"]
        .as_array()
        .unwrap()
        .clone()
}

async fn embedded_windows(server: &Server) -> f64 {
    server
        .metric("traum_embed_batch_size_sum{kind=\"audio\"}")
        .await
        .unwrap_or(0.0)
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_reindexes_beside_the_serving_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The library with tiny-a.
    let server = Server::start(&data).await;
    let ids = sorted(upload_all(&server, samples(6)).await);
    let a = health(&server).await;
    let key_a = a["model"]["key"].as_str().unwrap().to_owned();
    assert!(key_a.starts_with("tiny-a@"), "{a:#}");
    assert_eq!(a["model"]["embeddingDim"], 24);
    assert_eq!(a["model"]["weightsDigest"].as_str().unwrap().len(), 64);
    assert!(a["reindex"].is_null(), "{a:#}");
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_a.clone(), ids.clone())
    );
    // The same text again: its embedding is kept, the answer is the same.
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_a.clone(), ids.clone())
    );
    let cache = |outcome: &str| format!("traum_text_query_cache_total{{outcome=\"{outcome}\"}}");
    assert_eq!(server.metric(&cache("miss")).await, Some(1.0));
    assert_eq!(server.metric(&cache("hit")).await, Some(1.0));
    server.stop().await;

    // Started with tiny-b, manual switch, the reindex held after 2 of 6 files.
    let options = Options::default()
        .model(support::tiny_model_b())
        .arg("--switch")
        .arg("manual")
        .env("TRAUM_TEST_HOLD_REINDEX_AFTER", "2");
    let server = Server::start_with(&data, options).await;
    let held = wait_health(&server, "the reindex at 2 files", |h| {
        h["reindex"]["filesDone"] == 2
    })
    .await;
    let key_b = held["reindex"]["key"].as_str().unwrap().to_owned();
    assert!(key_b.starts_with("tiny-b@"), "{held:#}");
    assert_eq!(held["reindex"]["state"], "BUILDING");
    assert_eq!(held["reindex"]["filesTotal"], 6);
    // The old index serves, with the old model, and still holds every file.
    assert_eq!(held["model"]["key"], key_a.as_str());
    assert_eq!(held["model"]["embeddingDim"], 24);
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_a.clone(), ids.clone())
    );
    let listed = models(&server).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["key"], key_a.as_str());
    assert_eq!(listed[0]["state"], "ACTIVE");
    assert_eq!(listed[1]["key"], key_b.as_str());
    assert_eq!(listed[1]["state"], "BUILDING");
    assert_eq!(listed[1]["dim"], 20);
    assert!(listed.iter().all(|m| m["loaded"] == true), "{listed:?}");
    // Switching before the new index is complete is refused, and changes nothing.
    let early = server
        .post(
            "mutation($k: String!) { switchModel(key: $k) { key } }",
            json!({ "k": key_b }),
        )
        .await;
    let message = early["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not complete"), "{early:#}");

    // Released: the reindex completes and waits for the switch; the old index still answers.
    // Its progress streams on `libraryEvents` as REINDEX events.
    let mut events = server
        .subscribe_live(
            "subscription { libraryEvents { kind reindex { key state filesDone filesTotal } } }",
            "libraryEvents",
        )
        .await;
    std::fs::write(data.join("release-reindex"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let e = events
            .next_timeout(deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|| panic!("no READY event; saw {seen:?}; log:\n{}", server.log()));
        let e = e["libraryEvents"].clone();
        if e["kind"] != "REINDEX" {
            continue;
        }
        assert_eq!(e["reindex"]["key"], key_b.as_str(), "{e:#}");
        let done = e["reindex"]["filesDone"].as_i64().unwrap();
        assert!(
            seen.last().is_none_or(|&(d, _)| d <= done),
            "{seen:?} then {e:#}"
        );
        let state = e["reindex"]["state"].as_str().unwrap().to_owned();
        seen.push((done, state.clone()));
        if state == "READY" {
            assert_eq!(done, 6, "{seen:?}");
            break;
        }
    }
    let ready = wait_health(&server, "the new index complete", |h| {
        h["reindex"]["state"] == "READY"
    })
    .await;
    assert_eq!(ready["reindex"]["filesDone"], 6, "{ready:#}");
    assert_eq!(ready["reindex"]["filesFailed"], 0, "{ready:#}");
    assert_eq!(ready["model"]["key"], key_a.as_str());
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_a.clone(), ids.clone())
    );

    // A file added now is embedded with the active model, and the new index catches up.
    let added = upload_all(&server, samples(7).split_off(6)).await;
    let mut all = ids.clone();
    all.extend(added);
    let all = sorted(all);
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_a.clone(), all.clone())
    );

    // The switch: from now on the new model embeds queries and files, and its index answers.
    let switched = server
        .query(
            "mutation($k: String!) { switchModel(key: $k) { key state dim } }",
            json!({ "k": key_b }),
        )
        .await;
    assert_eq!(switched["switchModel"]["state"], "ACTIVE", "{switched:#}");
    let after = health(&server).await;
    assert_eq!(after["model"]["key"], key_b.as_str(), "{after:#}");
    assert_eq!(after["model"]["embeddingDim"], 20);
    assert_eq!(after["vectorStore"]["files"], 7.0, "{after:#}");
    assert_eq!(
        search(&server, "a bright tone").await,
        (key_b.clone(), all.clone())
    );
    let listed = models(&server).await;
    assert_eq!(listed[0]["state"], "RETIRED", "{listed:?}");
    assert_eq!(listed[1]["state"], "ACTIVE", "{listed:?}");
    // The library's files say which model embedded them.
    let files = server
        .query(
            "{ files(first: 50) { edges { node { modelId status } } } }",
            json!({}),
        )
        .await;
    for edge in files["files"]["edges"].as_array().unwrap() {
        assert_eq!(edge["node"]["status"], "INDEXED");
        let model_id = edge["node"]["modelId"].as_str().unwrap();
        assert!(model_id.ends_with("tiny-b"), "{edge:#}");
    }
    // New files go to the new index.
    let newest = upload_all(&server, samples(8).split_off(7)).await;
    let (model, found) = search(&server, "a bright tone").await;
    assert_eq!(model, key_b);
    assert!(found.contains(&newest[0]), "{found:?}");

    // The active index cannot be dropped; the retired one can, and its vectors go.
    let refused = server
        .post(
            "mutation($k: String!) { dropModel(key: $k) }",
            json!({ "k": key_b }),
        )
        .await;
    assert!(refused["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("active"));
    assert!(data.join("index").is_dir());
    let dropped = server
        .query(
            "mutation($k: String!) { dropModel(key: $k) }",
            json!({ "k": key_a }),
        )
        .await;
    assert_eq!(dropped["dropModel"], true);
    assert!(
        !data.join("index").exists(),
        "the retired index's files are removed"
    );
    assert_eq!(models(&server).await.len(), 1);
    server.stop().await;

    // Restarted with the new model: it is the library's model now, nothing is reindexed.
    let server = Server::start_with(&data, Options::default().model(support::tiny_model_b())).await;
    let h = health(&server).await;
    assert_eq!(h["model"]["key"], key_b.as_str());
    assert!(h["reindex"].is_null(), "{h:#}");
    assert_eq!(search(&server, "a bright tone").await.1.len(), 8);
    assert_eq!(embedded_windows(&server).await, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reindex_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data).await;
    let ids = sorted(upload_all(&server, samples(8)).await);
    let key_a = health(&server).await["model"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    server.stop().await;

    // The reindex dies (abort, as kill -9) after 3 files; one file at a time, so exactly 3
    // are in the new index.
    let crashing = Options::default()
        .model(support::tiny_model_b())
        .arg("--workers")
        .arg("1")
        .env("TRAUM_TEST_ABORT_REINDEX_AFTER", "3");
    let (status, log) = Server::run_to_exit(&data, crashing, Duration::from_secs(120)).await;
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(log.contains("TRAUM_TEST_ABORT_REINDEX_AFTER"), "{log}");

    // Restarted: the 3 files are not embedded again; the others are, then it switches by
    // itself (--switch auto).
    let options = Options::default()
        .model(support::tiny_model_b())
        .arg("--workers")
        .arg("1");
    let server = Server::start_with(&data, options).await;
    let switched = wait_health(&server, "the switch to tiny-b", |h| {
        h["model"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("tiny-b@"))
    })
    .await;
    assert_eq!(switched["reindex"]["state"], "ACTIVE", "{switched:#}");
    assert_eq!(switched["reindex"]["filesDone"], 8, "{switched:#}");
    assert_eq!(switched["model"]["embeddingDim"], 20);
    assert_eq!(
        embedded_windows(&server).await,
        5.0,
        "only the 5 files the crashed run had not done are embedded"
    );
    let (model, found) = search(&server, "noise").await;
    assert_eq!(model, switched["model"]["key"].as_str().unwrap());
    assert_eq!(found, ids);
    let listed = models(&server).await;
    let old = listed.iter().find(|m| m["key"] == key_a.as_str()).unwrap();
    assert_eq!(old["state"], "RETIRED");
    assert_eq!(old["loaded"], false);
    server.stop().await;
    assert!(Path::new(&data.join("indexes")).is_dir());
}
