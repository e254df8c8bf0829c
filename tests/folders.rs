//! Folders as library sources, on real folders the tests make: a scan makes the library
//! equal to the folder (same files, one entry per content, nothing embedded twice), the
//! watcher keeps it so while files are added, changed, renamed, moved and deleted, a scan
//! killed midway resumes at the next start, and what changed while the server was down is
//! found when it starts.
//!
//! "Equal" is checked the same way after every step: the paths the library records in the
//! folder are exactly the audio files on disk, every file is INDEXED, and the windows the
//! model embedded (the `embed_batch_size` histogram's sum) grew by exactly the new content.
//! Every wait is for a state the server reaches by itself, with a deadline; none is a
//! guess at how long something takes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{tone, wav_i16, Options, Server};

/// A short WAV whose content differs for every `i` (one 10 s window each).
fn sample(i: usize) -> Vec<u8> {
    wav_i16(8_000, &tone(150.0 + i as f32 * 3.0, 0.25, 0.5))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// What the library says is in the folder: path → (file id, status), over every page.
async fn library_paths(server: &Server, folder: &Path) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    let prefix = folder.to_string_lossy().into_owned();
    loop {
        let res = server
            .query(
                "query($folder: String, $after: String) { files(first: 200, after: $after, folder: $folder) { pageInfo { hasNextPage endCursor } edges { node { id status locations { path exists } } } } }",
                json!({ "folder": prefix, "after": after }),
            )
            .await;
        let files = &res["files"];
        for edge in files["edges"].as_array().unwrap() {
            let node = &edge["node"];
            for location in node["locations"].as_array().unwrap() {
                let path = location["path"].as_str().unwrap();
                if path.starts_with(&prefix) {
                    out.insert(
                        path.to_owned(),
                        (
                            node["id"].as_str().unwrap().to_owned(),
                            node["status"].as_str().unwrap().to_owned(),
                        ),
                    );
                }
            }
        }
        if files["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = files["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

/// Windows embedded so far.
async fn embedded(server: &Server) -> f64 {
    server
        .metric("traum_embed_batch_size_sum{kind=\"audio\"}")
        .await
        .unwrap_or(0.0)
}

/// Waits until the library's paths in `folder` are `expected`, all INDEXED, and no scan
/// runs; returns the path → file id map.
async fn wait_equal(
    server: &Server,
    folder: &Path,
    expected: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    wait_equal_and(server, folder, expected, |_| true).await
}

/// [`wait_equal`], and also until `and` holds of the path → file id map (for changes
/// that leave the paths as they were).
async fn wait_equal_and(
    server: &Server,
    folder: &Path,
    expected: &BTreeSet<String>,
    and: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = library_paths(server, folder).await;
        let paths: BTreeSet<String> = got.keys().cloned().collect();
        let ids: BTreeMap<String, String> = got
            .iter()
            .map(|(p, (id, _))| (p.clone(), id.clone()))
            .collect();
        let all_indexed = got.values().all(|(_, status)| status == "INDEXED") && and(&ids);
        let sources = server.query("{ sources { path state } }", json!({})).await;
        let scanning = sources["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "SCANNING");
        if &paths == expected && all_indexed && !scanning {
            return got.into_iter().map(|(p, (id, _))| (p, id)).collect();
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.difference(&paths).take(5).collect();
            let extra: Vec<_> = paths.difference(expected).take(5).collect();
            let pending: Vec<_> = got
                .iter()
                .filter(|(_, (_, s))| s != "INDEXED")
                .take(5)
                .collect();
            panic!(
                "the library did not come to equal the folder: {} paths, want {}; missing {missing:?}, \
                 extra {extra:?}, not indexed {pending:?}, scanning {scanning}\nlog:\n{}",
                paths.len(),
                expected.len(),
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The folder's one source.
async fn folder_source(server: &Server, folder: &Path) -> Value {
    let res = server
        .query(
            "{ sources { id kind path state fileCount scan { found new changed moved gone failed error } } }",
            json!({}),
        )
        .await;
    let folder = folder.to_string_lossy().into_owned();
    res["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == folder.as_str())
        .unwrap_or_else(|| panic!("no source for {folder}: {res:#}"))
        .clone()
}

fn abs(root: &Path, rel: &str) -> String {
    root.join(rel).to_string_lossy().into_owned()
}

/// A folder of nested sample packs with everything real folders hold besides audio.
struct Pack {
    root: PathBuf,
    expected: BTreeSet<String>,
    /// Distinct contents among the expected files.
    distinct: usize,
}

/// Contents of [`make_pack`]'s archive: files the steps of the tests leave alone, each
/// found once among the first files (not a copy, not in the subfolder that moves).
const ARCHIVED: [usize; 6] = [40, 41, 42, 44, 45, 48];

/// `files` samples in nested packs (every `copies_every`-th a copy of the one before), the
/// odd entries a real folder holds, and `archive` more files, each a copy of one of the
/// [`ARCHIVED`] contents, in nested folders of their own.
fn make_pack(base: &Path, files: usize, copies_every: usize, archive: usize) -> Pack {
    let root = base.join("Samples");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let mut expected = BTreeSet::new();
    let mut distinct = 0;
    for i in 0..files {
        let rel = format!("pack{}/kit{}/s{i:05}.wav", i % 7, i % 3);
        // Every `copies_every`-th file repeats an earlier content (the same sample in
        // two packs): one library entry, two locations.
        let content = if copies_every > 0 && i % copies_every == copies_every - 1 {
            i - 1
        } else {
            distinct += 1;
            i
        };
        write(&root.join(&rel), &sample(content));
        expected.insert(abs(&root, &rel));
    }
    assert!(
        archive == 0 || files > 48,
        "the archived contents are among the files"
    );
    for k in 0..archive {
        let rel = format!("archive/d{}/e{}/a{k:05}.wav", k % 4, k % 10);
        write(&root.join(&rel), &sample(ARCHIVED[k % ARCHIVED.len()]));
        expected.insert(abs(&root, &rel));
    }
    // Audio without an audio extension is found by content.
    write(&root.join("pack0/untitled"), &sample(100_000));
    expected.insert(abs(&root, "pack0/untitled"));
    distinct += 1;
    // Not audio: ignored (cover art, notes), or reported (a text file named .wav).
    write(
        &root.join("pack1/cover.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    );
    write(&root.join("pack1/readme.txt"), b"royalty free");
    write(&root.join("pack2/broken.wav"), b"this is not audio");
    // Hidden: macOS resource forks beside samples, .DS_Store.
    write(
        &root.join("pack2/._s00002.wav"),
        b"\0\x05\x16\x07 AppleDouble",
    );
    write(&root.join(".DS_Store"), b"Bud1");
    // A link to a folder outside (followed), a loop back to the root (reported), a
    // dangling link (reported), and a named pipe (skipped: opening it would block).
    let outside = base.join("elsewhere");
    write(&outside.join("far.wav"), &sample(200_000));
    distinct += 1;
    std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
    expected.insert(abs(&root, "linked/far.wav"));
    std::os::unix::fs::symlink(&root, root.join("pack3/loop")).unwrap_or_else(|_| {
        std::fs::create_dir_all(root.join("pack3")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("pack3/loop")).unwrap()
    });
    std::os::unix::fs::symlink(base.join("nowhere.wav"), root.join("pack4/gone.wav"))
        .unwrap_or_else(|_| {
            std::fs::create_dir_all(root.join("pack4")).unwrap();
            std::os::unix::fs::symlink(base.join("nowhere.wav"), root.join("pack4/gone.wav"))
                .unwrap()
        });
    let fifo =
        std::ffi::CString::new(root.join("pack5/pipe.wav").to_string_lossy().as_bytes()).unwrap();
    std::fs::create_dir_all(root.join("pack5")).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    Pack {
        root,
        expected,
        distinct,
    }
}

/// Scan, then every kind of change while the server runs; after each the library equals
/// the folder and only new content was embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_folder_and_the_library_stay_equal() {
    let dir = tempfile::tempdir().unwrap();
    // 600 samples and 2 400 archived copies: thousands of small files, 452 contents.
    let mut pack = make_pack(dir.path(), 600, 4, 2400);
    let root = pack.root.clone();
    let server = Server::start_with(
        &dir.path().join("data"),
        Options::default()
            .arg("--folder")
            .arg(root.to_string_lossy())
            .arg("--watch-settle-ms")
            .arg("300"),
    )
    .await;

    // The first scan.
    let ids = wait_equal(&server, &root, &pack.expected).await;
    let distinct: BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), pack.distinct, "one entry per content");
    let mut windows = embedded(&server).await;
    assert_eq!(windows, pack.distinct as f64, "each content embedded once");
    let source = folder_source(&server, &root).await;
    assert_eq!(source["kind"], "FOLDER");
    assert_eq!(source["state"], "IDLE");
    assert_eq!(source["fileCount"], pack.distinct);
    let scan = &source["scan"];
    assert_eq!(scan["found"], pack.expected.len(), "{source:#}");
    assert_eq!(scan["new"], pack.expected.len(), "{source:#}");
    // broken.wav, the loop, the dangling link.
    assert_eq!(scan["failed"], 3, "{source:#}");
    let error = scan["error"].as_str().unwrap_or_default();
    assert!(error.contains("loop"), "{error}");
    assert!(error.contains("broken symbolic link"), "{error}");
    // A file is played from its folder.
    let some = pack.expected.iter().next().unwrap().clone();
    let id = &ids[&some];
    let bytes = server
        .http()
        .get(server.url(&format!("/files/{id}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), std::fs::read(&some).unwrap().as_slice());

    // A new file: embedded once.
    let added = root.join("pack0/new/fresh.wav");
    write(&added, &sample(300_000));
    pack.expected.insert(added.to_string_lossy().into_owned());
    wait_equal(&server, &root, &pack.expected).await;
    windows += 1.0;
    assert_eq!(embedded(&server).await, windows, "the new file, once");

    // Changed content at the same path: the new content is embedded, the old one (found
    // nowhere else) leaves the library.
    let changed = root.join("pack1/kit1/s00001.wav");
    let old_id = ids[&changed.to_string_lossy().into_owned()].clone();
    write(&changed, &sample(400_000));
    let changed_path = changed.to_string_lossy().into_owned();
    let ids = wait_equal_and(&server, &root, &pack.expected, |ids| {
        ids.get(&changed_path) != Some(&old_id)
    })
    .await;
    assert_ne!(ids[&changed_path], old_id);
    windows += 1.0;
    assert_eq!(embedded(&server).await, windows, "the changed file, once");
    let gone = server
        .query(
            "query($id: ID!) { file(id: $id) { id } }",
            json!({ "id": old_id }),
        )
        .await;
    assert!(gone["file"].is_null(), "{gone:#}");

    // A rename, a move to another folder, a whole folder moved: nothing embedded again,
    // and the entries keep their ids.
    let before = wait_equal(&server, &root, &pack.expected).await;
    let renamed_from = root.join("pack2/kit2/s00002.wav");
    let renamed_to = root.join("pack2/kit2/kick hard.wav");
    std::fs::rename(&renamed_from, &renamed_to).unwrap();
    let moved_from = root.join("pack3/kit0/s00003.wav");
    let moved_to = root.join("pack6/kit0/s00003.wav");
    std::fs::rename(&moved_from, &moved_to).unwrap();
    let folder_from = root.join("pack4/kit1");
    let folder_to = root.join("pack0/kit1-old");
    std::fs::rename(&folder_from, &folder_to).unwrap();
    let mut expected = BTreeSet::new();
    let mut moved = BTreeMap::new();
    for path in &pack.expected {
        let p = PathBuf::from(path);
        let to = if p == renamed_from {
            renamed_to.clone()
        } else if p == moved_from {
            moved_to.clone()
        } else if let Ok(rest) = p.strip_prefix(&folder_from) {
            folder_to.join(rest)
        } else {
            p.clone()
        };
        let to = to.to_string_lossy().into_owned();
        if &to != path {
            moved.insert(to.clone(), path.clone());
        }
        expected.insert(to);
    }
    pack.expected = expected;
    let after = wait_equal(&server, &root, &pack.expected).await;
    assert!(
        moved.len() > 10,
        "the moved folder held files: {}",
        moved.len()
    );
    for (to, from) in &moved {
        assert_eq!(after[to], before[from], "{from} -> {to} kept its entry");
    }
    assert_eq!(embedded(&server).await, windows, "moves embed nothing");

    // Deleted: one copy of a duplicated content (the entry stays with its other
    // location), and a file found only here (the entry leaves).
    // (Among files the steps above left where they were, and not behind the link: the
    // watcher sees the folder, not what a link inside points to.)
    let stayed = |p: &String| !moved.contains_key(p) && !p.contains("/linked/");
    let by_id: BTreeMap<&String, Vec<&String>> =
        after
            .iter()
            .filter(|(p, _)| stayed(p))
            .fold(BTreeMap::new(), |mut m, (p, id)| {
                m.entry(id).or_default().push(p);
                m
            });
    let pair = by_id
        .values()
        .find(|ps| ps.len() == 2)
        .expect("a duplicated content");
    let (dup_a, dup_b) = (pair[0].clone(), pair[1].clone());
    let only = by_id
        .iter()
        .find(|(id, ps)| ps.len() == 1 && after.values().filter(|i| i == *id).count() == 1)
        .map(|(id, ps)| (ps[0].clone(), (*id).clone()))
        .expect("a content found once");
    std::fs::remove_file(&dup_a).unwrap();
    std::fs::remove_file(&only.0).unwrap();
    pack.expected.remove(&dup_a);
    pack.expected.remove(&only.0);
    let ids = wait_equal(&server, &root, &pack.expected).await;
    assert_eq!(ids[&dup_b], after[&dup_b], "the other copy keeps the entry");
    let left = server
        .query(
            "query($id: ID!) { file(id: $id) { id } }",
            json!({ "id": only.1 }),
        )
        .await;
    assert!(left["file"].is_null(), "{left:#}");
    assert_eq!(embedded(&server).await, windows);

    // Removing the folder with its files kept: still there; without: gone, folder intact.
    let source_id = folder_source(&server, &root).await["id"].clone();
    let res = server
        .query(
            "mutation($id: ID!) { removeFolder(id: $id, keepFiles: true) }",
            json!({ "id": source_id }),
        )
        .await;
    assert_eq!(res["removeFolder"], source_id);
    assert_eq!(
        library_paths(&server, &root).await.len(),
        pack.expected.len()
    );
    let res = server
        .query(
            "mutation($path: String!) { addFolder(path: $path) { id state } }",
            json!({ "path": root.to_string_lossy() }),
        )
        .await;
    assert_eq!(
        res["addFolder"]["id"], source_id,
        "the same folder, the same source"
    );
    wait_equal(&server, &root, &pack.expected).await;
    assert_eq!(embedded(&server).await, windows, "re-adding embeds nothing");
    server
        .query(
            "mutation($id: ID!) { removeFolder(id: $id) }",
            json!({ "id": source_id }),
        )
        .await;
    assert!(library_paths(&server, &root).await.is_empty());
    let total = server.query("{ files { totalCount } }", json!({})).await;
    assert_eq!(total["files"]["totalCount"], 0, "{total:#}");
    for path in &pack.expected {
        assert!(
            Path::new(path).exists(),
            "{path} was deleted from the folder"
        );
    }
    server.stop().await;
}

/// A scan killed midway (the debug-build hook aborts the process, as kill -9 would) is
/// resumed at the next start and ends in the same state as an uninterrupted one; changes
/// made while the server is down are found when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_scan_resumes_and_offline_changes_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut pack = make_pack(dir.path(), 400, 0, 0);
    let root = pack.root.clone();
    let data = dir.path().join("data");
    let (status, log) = Server::run_to_exit(
        &data,
        Options::default()
            .arg("--folder")
            .arg(root.to_string_lossy())
            .env("TRAUM_TEST_ABORT_SCAN_AFTER", "150"),
        Duration::from_secs(180),
    )
    .await;
    assert!(!status.success(), "the hook aborted the scan; log:\n{log}");
    assert!(log.contains("TRAUM_TEST_ABORT_SCAN_AFTER"), "{log}");

    let server = Server::start(&data).await;
    let ids = wait_equal(&server, &root, &pack.expected).await;
    let distinct: BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), pack.distinct);
    // Files whose embedding the abort cut short are embedded again; none twice over.
    let windows = embedded(&server).await;
    assert!(
        windows <= pack.distinct as f64,
        "{windows} windows for {} files",
        pack.distinct
    );
    server.stop().await;

    // While it is down: one file added, one deleted, one renamed.
    write(&root.join("pack0/offline.wav"), &sample(500_000));
    pack.expected.insert(abs(&root, "pack0/offline.wav"));
    let deleted = pack
        .expected
        .iter()
        .find(|p| p.ends_with("s00010.wav"))
        .unwrap()
        .clone();
    std::fs::remove_file(&deleted).unwrap();
    pack.expected.remove(&deleted);
    let from = pack
        .expected
        .iter()
        .find(|p| p.ends_with("s00011.wav"))
        .unwrap()
        .clone();
    let to = from.replace("s00011.wav", "renamed.wav");
    std::fs::rename(&from, &to).unwrap();
    pack.expected.remove(&from);
    pack.expected.insert(to.clone());

    // No --folder this time: the source is remembered.
    let server = Server::start(&data).await;
    let after = wait_equal(&server, &root, &pack.expected).await;
    assert_eq!(after[&to], ids[&from], "the rename kept its entry");
    assert_eq!(
        embedded(&server).await,
        1.0,
        "only the added file was embedded"
    );
    let source = folder_source(&server, &root).await;
    assert_eq!(source["scan"]["new"], 1, "{source:#}");
    assert_eq!(source["scan"]["moved"], 1, "{source:#}");
    assert_eq!(source["scan"]["gone"], 1, "{source:#}");
    server.stop().await;
}

/// A folder that vanishes (an unplugged disk) is UNAVAILABLE and its files stay; when it
/// is back it is scanned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_folder_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let pack = make_pack(dir.path(), 20, 0, 0);
    let root = pack.root.clone();
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        Options::default()
            .arg("--folder")
            .arg(root.to_string_lossy()),
    )
    .await;
    wait_equal(&server, &root, &pack.expected).await;
    server.stop().await;

    let unplugged = dir.path().join("unplugged");
    std::fs::rename(&root, &unplugged).unwrap();
    let server = Server::start(&data).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let source = loop {
        let source = folder_source(&server, &root).await;
        if source["state"] == "UNAVAILABLE" {
            break source;
        }
        assert!(Instant::now() < deadline, "{source:#}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        source["scan"]["error"]
            .as_str()
            .unwrap()
            .contains("stay in the library"),
        "{source:#}"
    );
    assert_eq!(
        library_paths(&server, &root).await.len(),
        pack.expected.len()
    );
    // Back: a rescan finds it all as it was.
    std::fs::rename(&unplugged, &root).unwrap();
    let res = server
        .query(
            "mutation($id: ID!) { rescanFolder(id: $id) { id } }",
            json!({ "id": source["id"] }),
        )
        .await;
    assert_eq!(res["rescanFolder"]["id"], source["id"]);
    wait_equal(&server, &root, &pack.expected).await;
    assert_eq!(folder_source(&server, &root).await["state"], "IDLE");
    assert_eq!(embedded(&server).await, 0.0, "nothing embedded again");
    server.stop().await;
}
