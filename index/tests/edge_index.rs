//! `EdgeIndex` against a real qdrant-edge store in a temporary directory: the conformance
//! suite every backend passes, then what only the in-process store has (its directory,
//! WAL, `optimize`).

mod conformance;

use std::sync::Arc;

use conformance::*;
use traum_index::{
    point_id, EdgeIndex, FileVectors, IndexConfig, IndexCounts, IndexError, SearchParams, Uuid,
    VectorIndex,
};

/// The in-process backend: a new store in a temp dir per case.
struct Edge;

impl Backend for Edge {
    fn fresh(&self, _case: &'static str) -> FreshFuture<'_> {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let index = open(&dir);
            Fresh {
                index: Arc::new(index),
                keep: Some(dir),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_the_edge_backend() {
    run_all(Arc::new(Edge)).await;
}

fn open(dir: &tempfile::TempDir) -> EdgeIndex {
    EdgeIndex::open(IndexConfig::new(dir.path().join("index"), DIM)).expect("open index")
}

#[tokio::test]
async fn tiny_search_rounds_still_fill_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = IndexConfig::new(dir.path().join("index"), DIM);
    // Tiny rounds, so that grouping needs several of them.
    config.oversample = 1;
    config.max_candidates = 16;
    let index = EdgeIndex::open(config).unwrap();
    many_matching_windows_fill_the_limit(&index).await;
}

#[tokio::test]
async fn reopen_from_disk_finds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    {
        let index = open(&dir);
        four_files(&index).await;
        index.delete_file(Uuid::from_u128(0xD)).await.unwrap();
        index
            .upsert_file(file(0xA, vec![axis(0), axis(1)]))
            .await
            .unwrap();
    } // dropped: closed

    let index = EdgeIndex::open(IndexConfig::new(&path, DIM)).unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 3,
            windows: 6
        }
    );
    let hits = index
        .search(&axis(0), SearchParams::with_limit(10))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA, 0xB, 0xC]);
    assert_eq!(
        hits[1].best_window.as_ref().map(|w| (w.index, w.start_s)),
        Some((1, 10.0))
    );
    assert!(index
        .file_vector(Uuid::from_u128(0xB))
        .await
        .unwrap()
        .is_some());

    // Writes after reopening persist too.
    index.upsert_file(file(0xE, vec![axis(9)])).await.unwrap();
    drop(index);
    let index = EdgeIndex::open(IndexConfig::new(&path, DIM)).unwrap();
    assert_eq!(index.count().await.unwrap().files, 4);
}

#[tokio::test]
async fn flushed_writes_survive_without_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let index = open(&dir);
    four_files(&index).await;
    // Copy the directory while the index is open (as a crash would leave it): every
    // upsert was flushed before it returned.
    let copy = dir.path().join("copy");
    copy_dir(&path, &copy);
    let reopened = EdgeIndex::open(IndexConfig::new(&copy, DIM)).unwrap();
    assert_eq!(
        reopened.count().await.unwrap(),
        IndexCounts {
            files: 4,
            windows: 8
        }
    );
    let hits = reopened
        .search(&axis(2), SearchParams::with_limit(1))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn dimension_mismatch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    drop(open(&dir));

    let err = EdgeIndex::open(IndexConfig::new(&path, 512)).unwrap_err();
    assert!(
        matches!(
            err,
            IndexError::DimensionMismatch {
                stored: DIM,
                expected: 512,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("holds 24-d vectors but the model produces 512-d")
            && message.contains("reindex or use a new data dir")
            && message.contains(&path.display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn opening_an_open_index_again_fails() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let err = EdgeIndex::open(IndexConfig::new(dir.path().join("index"), DIM)).unwrap_err();
    assert!(matches!(err, IndexError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(index);
    open(&dir);
}

#[tokio::test]
async fn point_ids_are_deterministic_and_distinct() {
    let a = Uuid::from_u128(1);
    let b = Uuid::from_u128(2);
    assert_eq!(point_id::file(a), point_id::file(a));
    assert_eq!(point_id::window(a, 3), point_id::window(a, 3));
    let all = [
        point_id::file(a),
        point_id::file(b),
        point_id::window(a, 0),
        point_id::window(a, 1),
        point_id::window(b, 0),
    ];
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
}

/// Pseudo-random unit vectors (xorshift), the same for the same seed.
fn random_unit_vectors(mut seed: u64) -> impl FnMut() -> Vec<f32> {
    move || {
        let v: Vec<f32> = (0..DIM)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

#[tokio::test]
async fn optimize_builds_hnsw_and_search_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let mut config = IndexConfig::new(&path, DIM);
    // ~100 B per 24-d vector: 50 KiB is ~500 vectors, so 2 000 points get an HNSW index.
    config.indexing_threshold_kb = Some(50);
    config.flush_on_write = false;
    let index = EdgeIndex::open(config.clone()).unwrap();
    // 400 files × 4 windows of pseudo-random vectors, plus one known file.
    let mut random = random_unit_vectors(0x2545_f491_4f6c_dd1d);
    let files: Vec<FileVectors> = (0u128..400)
        .map(|i| file(1000 + i, (0..4).map(|_| random()).collect()))
        .collect();
    index.upsert_files(files).await.unwrap();
    let target = random();
    index
        .upsert_file(file(7, vec![random(), target.clone(), random()]))
        .await
        .unwrap();
    index.flush().await.unwrap();
    assert_eq!(index.stats().windows.indexed_vectors, 0);
    index.optimize().await.unwrap();
    let stats = index.stats();
    assert!(stats.windows.indexed_vectors >= 1603, "{stats:?}");
    assert_eq!(stats.windows.points, 1603);
    assert_eq!(stats.files.points, 401);

    let check = |index: EdgeIndex| {
        let target = target.clone();
        async move {
            let hits = index
                .search(&target, SearchParams::with_limit(5))
                .await
                .unwrap();
            assert_eq!(hits.len(), 5);
            assert_eq!(hits[0].file_id, Uuid::from_u128(7));
            assert!(close(hits[0].score, 1.0));
            assert_eq!(hits[0].best_window.as_ref().unwrap().index, 1);
            assert_eq!(
                index.count().await.unwrap(),
                IndexCounts {
                    files: 401,
                    windows: 1603
                }
            );
        }
    };
    check(index.clone()).await;
    drop(index);
    check(EdgeIndex::open(config).unwrap()).await;
}

/// Deleted points stay in their segment until `optimize` vacuums it: a library that keeps
/// adding and deleting files must not keep every vector it ever held.
#[tokio::test]
async fn optimize_vacuums_deleted_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = IndexConfig::new(dir.path().join("index"), DIM);
    config.flush_on_write = false;
    let index = EdgeIndex::open(config).unwrap();
    let mut random = random_unit_vectors(0x9e37_79b9_7f4a_7c15);
    // Rounds of churn, as when files are uploaded and deleted: 5 × 300 files × 4 windows.
    for round in 0u128..5 {
        let files: Vec<FileVectors> = (0..300)
            .map(|i| file(round * 1000 + i, (0..4).map(|_| random()).collect()))
            .collect();
        index.upsert_files(files).await.unwrap();
        for i in 0..300 {
            index
                .delete_file(Uuid::from_u128(round * 1000 + i))
                .await
                .unwrap();
        }
    }
    let kept = random();
    index
        .upsert_file(file(7, vec![random(), kept.clone()]))
        .await
        .unwrap();
    index.flush().await.unwrap();
    let before = index.stats();
    index.optimize().await.unwrap();
    let after = index.stats();
    // Measured: 3.7 MB → 0.25 MB of window segments (6 000 deleted points, 2 live).
    assert!(
        after.windows.segment_bytes * 4 < before.windows.segment_bytes,
        "before {before:?}, after {after:?}"
    );
    assert!(
        after.files.segment_bytes * 2 < before.files.segment_bytes,
        "before {before:?}, after {after:?}"
    );
    assert_eq!(after.windows.points, 2, "{after:?}");
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 1,
            windows: 2
        }
    );
    let hits = index
        .search(&kept, SearchParams::with_limit(5))
        .await
        .unwrap();
    assert_eq!(ids(&hits), [7]);
}

/// 400 files × 4 windows in 20 upserts, into a store with 64 KiB WAL files.
async fn fill_small_wal_store(dir: &tempfile::TempDir) -> (IndexConfig, EdgeIndex) {
    let mut config = IndexConfig::new(dir.path().join("index"), DIM);
    config.wal_segment_bytes = 64 * 1024;
    let index = EdgeIndex::open(config.clone()).unwrap();
    let mut random = random_unit_vectors(0x51_7cc1_b727_220a);
    for chunk in 0u128..20 {
        let files: Vec<FileVectors> = (0..20)
            .map(|i| file(chunk * 20 + i, (0..4).map(|_| random()).collect()))
            .collect();
        index.upsert_files(files).await.unwrap();
    }
    (config, index)
}

/// After the WAL was cut: delete half the files, replace one, and check the result, then
/// again after reopening. Operations numbered below a point's version would be ignored, so
/// this fails if the WAL's numbering restarted.
async fn later_writes_apply(config: IndexConfig, index: EdgeIndex) {
    for i in 0..200 {
        index.delete_file(Uuid::from_u128(i)).await.unwrap();
    }
    // File 300 again, with one window instead of four.
    let target = random_unit_vectors(7)();
    index
        .upsert_file(file(300, vec![target.clone()]))
        .await
        .unwrap();
    let check = |index: EdgeIndex| {
        let target = target.clone();
        async move {
            assert_eq!(
                index.count().await.unwrap(),
                IndexCounts {
                    files: 200,
                    windows: 797
                }
            );
            let hits = index
                .search(&target, SearchParams::with_limit(3))
                .await
                .unwrap();
            assert_eq!(hits[0].file_id, Uuid::from_u128(300));
            assert!(close(hits[0].score, 1.0));
            assert!(hits.iter().all(|h| h.file_id.as_u128() >= 200), "{hits:?}");
        }
    };
    check(index.clone()).await;
    drop(index);
    check(EdgeIndex::open(config).unwrap()).await;
}

/// qdrant-edge never truncates its write-ahead log; opening a store drops the closed WAL
/// files but the newest, and the operations written after that still apply to the points
/// from before (operation numbers continue).
#[tokio::test]
async fn reopening_drops_old_wal_files_and_keeps_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let (config, index) = fill_small_wal_store(&dir).await;
    let wal_before = index.stats().windows.wal_bytes;
    drop(index);

    let index = EdgeIndex::open(config.clone()).unwrap();
    let wal_after = index.stats().windows.wal_bytes;
    assert!(
        wal_after * 2 < wal_before,
        "WAL {wal_before} B before reopening, {wal_after} B after"
    );
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 400,
            windows: 1600
        }
    );
    later_writes_apply(config, index).await;
}

/// The same while the store stays open: `optimize` closes and reopens it, with searches
/// running meanwhile (they wait, none fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_drops_old_wal_files_while_searches_run() {
    let dir = tempfile::tempdir().unwrap();
    let (config, index) = fill_small_wal_store(&dir).await;
    let wal_before = index.stats().windows.wal_bytes;
    let searcher = {
        let index = index.clone();
        tokio::spawn(async move {
            let mut random = random_unit_vectors(99);
            for _ in 0..200 {
                let hits = index
                    .search(&random(), SearchParams::with_limit(3))
                    .await
                    .expect("a search during compaction");
                assert_eq!(hits.len(), 3);
            }
        })
    };
    index.optimize().await.unwrap();
    searcher.await.unwrap();
    let wal_after = index.stats().windows.wal_bytes;
    assert!(
        wal_after * 2 < wal_before,
        "WAL {wal_before} B before optimize, {wal_after} B after"
    );
    assert!(!index.compact_wal().unwrap(), "nothing left to drop");
    later_writes_apply(config, index).await;
}

/// The edge backend with search options: each case's new store gets `adjust` applied to
/// its config.
struct EdgeWith(fn(&mut IndexConfig));

impl Backend for EdgeWith {
    fn fresh(&self, _case: &'static str) -> FreshFuture<'_> {
        let adjust = self.0;
        Box::pin(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut config = IndexConfig::new(dir.path().join("index"), DIM);
            adjust(&mut config);
            Fresh {
                index: Arc::new(EdgeIndex::open(config).expect("open index")),
                keep: Some(dir),
            }
        })
    }
}

/// The whole suite again with int8 quantization and exact rescoring of the files found,
/// file-vector candidates included: the options change how candidates are found, never
/// what a search means.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_with_int8_and_file_rescoring() {
    run_all(Arc::new(EdgeWith(|config| {
        config.int8 = true;
        config.rescore_files = true;
        config.file_candidates = 8;
    })))
    .await;
}

/// The whole suite again with file-vector candidates alone (no full rescoring): files the
/// window graph did not rank are scored exactly and merged in, never changing what a search
/// means.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_with_file_candidates() {
    run_all(Arc::new(EdgeWith(|config| config.file_candidates = 8))).await;
}

/// An int8 store, optimised (graph and quantized vectors built), answers like an exact f32
/// store: the same best file, with the original vectors' score (int8 scores are off by
/// ~1e-2 on these vectors; rescoring makes them exact to f32 rounding).
#[tokio::test]
async fn int8_search_after_optimize_rescores_with_the_original_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = IndexConfig::new(dir.path().join("int8"), DIM);
    config.indexing_threshold_kb = Some(50);
    config.int8 = true;
    config.rescore_files = true;
    let quantized = EdgeIndex::open(config).unwrap();
    let exact = EdgeIndex::open(IndexConfig::new(dir.path().join("exact"), DIM)).unwrap();
    let mut random = random_unit_vectors(0x9e37_79b9_7f4a_7c15);
    let files: Vec<FileVectors> = (0u128..400)
        .map(|i| file(1000 + i, (0..4).map(|_| random()).collect()))
        .collect();
    quantized.upsert_files(files.clone()).await.unwrap();
    exact.upsert_files(files.clone()).await.unwrap();
    quantized.optimize().await.unwrap();
    assert!(quantized.stats().windows.indexed_vectors >= 1600);
    let edge_config =
        std::fs::read_to_string(dir.path().join("int8/windows/edge_config.json")).unwrap();
    assert!(edge_config.contains("scalar"), "{edge_config}");

    for (i, f) in files.iter().enumerate().step_by(20) {
        // Near one stored window: a clear best file.
        let noise = random();
        let query: Vec<f32> = f.windows[i % 4]
            .vector
            .iter()
            .zip(&noise)
            .map(|(w, n)| w + 0.3 * n)
            .collect();
        let got = quantized
            .search(&query, SearchParams::with_limit(5))
            .await
            .unwrap();
        let want = exact
            .search(&query, SearchParams::with_limit(5))
            .await
            .unwrap();
        assert_eq!(got[0].file_id, f.file_id);
        assert_eq!(got[0].file_id, want[0].file_id);
        assert!(
            (got[0].score - want[0].score).abs() < 1e-4,
            "rescored {} vs exact {}",
            got[0].score,
            want[0].score
        );
        assert_eq!(
            got[0].best_window.as_ref().map(|w| w.index),
            want[0].best_window.as_ref().map(|w| w.index)
        );
    }
}

/// `preload` reads every segment file of both shards (what a search may touch), and the
/// background preload of `open` does not keep a dropped store open: it holds the path only.
#[tokio::test]
async fn preload_reads_the_segments_and_never_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = IndexConfig::new(dir.path().join("index"), DIM);
    let index = EdgeIndex::open(config.clone()).unwrap();
    let mut random = random_unit_vectors(11);
    let files: Vec<FileVectors> = (0u128..50)
        .map(|i| file(i, (0..4).map(|_| random()).collect()))
        .collect();
    index.upsert_files(files).await.unwrap();
    index.flush().await.unwrap();

    let bytes = index.preload();
    // At least the vectors themselves: 250 points of DIM f32s.
    assert!(bytes >= (250 * DIM * 4) as u64, "preloaded {bytes} bytes");
    let segment_files: u64 = ["windows", "files"]
        .iter()
        .map(|shard| file_lengths(&dir.path().join("index").join(shard).join("segments")))
        .sum();
    assert_eq!(
        bytes, segment_files,
        "every byte of every segment file, once"
    );

    // Reopening at once works while a background preload may still be reading.
    drop(index);
    for _ in 0..5 {
        drop(EdgeIndex::open(config.clone()).expect("reopen right after a drop"));
    }
    let again = EdgeIndex::open(config).expect("reopen right after a drop");
    assert_eq!(again.count().await.unwrap().windows, 200);
}

fn file_lengths(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => file_lengths(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// File candidates reach files the window search left out: with one round of `limit`
/// window hits, file A's five near windows crowd out B and C; the file view finds them by
/// their file vectors and scores their windows exactly (best window and score included).
#[tokio::test]
async fn file_candidates_reach_files_the_window_search_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = IndexConfig::new(dir.path().join("index"), DIM);
    config.oversample = 1;
    config.max_rounds = 1;
    let query = axis(0);
    let a = file(0xA, (1..6).map(|k| mix(&[(0, 8.0), (k, 1.0)])).collect());
    // B's best window is its second; C's its first.
    let b = file(
        0xB,
        vec![mix(&[(0, 1.0), (7, 2.0)]), mix(&[(0, 3.0), (8, 1.0)])],
    );
    let c = file(
        0xC,
        vec![mix(&[(0, 2.0), (9, 1.0)]), mix(&[(0, 1.0), (10, 3.0)])],
    );
    let unrelated = file(0xD, vec![axis(11), axis(12)]);
    let files = [a, b.clone(), c.clone(), unrelated];

    let window_view = EdgeIndex::open(config.clone()).unwrap();
    window_view.upsert_files(files.to_vec()).await.unwrap();
    let hits = window_view
        .search(&query, SearchParams::with_limit(3))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA], "one round of 3 window hits: all A's");
    drop(window_view);

    config.file_candidates = 3;
    let both_views = EdgeIndex::open(config).unwrap();
    let hits = both_views
        .search(&query, SearchParams::with_limit(3))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA, 0xB, 0xC]);
    let cosine = |v: &[f32]| v.iter().zip(&query).map(|(x, y)| x * y).sum::<f32>();
    for (hit, (f, best)) in hits[1..].iter().zip([(&b, 1), (&c, 0)]) {
        let window = hit.best_window.as_ref().expect("a best window");
        assert_eq!(window.index, best);
        assert_eq!(window.start_s, 10.0 * best as f64);
        assert!((hit.score - cosine(&f.windows[best as usize].vector)).abs() < 1e-4);
    }
}
