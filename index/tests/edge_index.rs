//! `EdgeIndex` against a real qdrant-edge store in a temporary directory.

use std::sync::Arc;

use traum_index::{
    point_id, EdgeIndex, FileHit, FileVectors, IndexConfig, IndexCounts, IndexError, SearchFilter,
    SearchParams, Uuid, VectorIndex, WindowVector,
};

const DIM: usize = 24;

/// Unit vector along axis `i`.
fn axis(i: usize) -> Vec<f32> {
    mix(&[(i, 1.0)])
}

/// Normalised weighted sum of axes.
fn mix(parts: &[(usize, f32)]) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for &(i, w) in parts {
        v[i] += w;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for w in vectors {
        v.iter_mut().zip(w).for_each(|(a, b)| *a += b);
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A file whose window `i` has vector `windows[i]` and spans `[10 i, 10 i + 10)` s.
fn file(id: u128, windows: Vec<Vec<f32>>) -> FileVectors {
    let n = windows.len();
    FileVectors {
        file_id: Uuid::from_u128(id),
        duration_s: 10.0 * n as f64,
        format: "wav".into(),
        created_at: 1_700_000_000,
        vector: mean(&windows),
        windows: windows
            .into_iter()
            .enumerate()
            .map(|(i, vector)| WindowVector {
                start_s: 10.0 * i as f64,
                end_s: 10.0 * i as f64 + 10.0,
                vector,
            })
            .collect(),
    }
}

fn open(dir: &tempfile::TempDir) -> EdgeIndex {
    EdgeIndex::open(IndexConfig::new(dir.path().join("index"), DIM)).expect("open index")
}

fn ids(hits: &[FileHit]) -> Vec<u128> {
    hits.iter().map(|h| h.file_id.as_u128()).collect()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-4
}

/// A: windows along 0, 1, 2. B: 0 with some 3, 4. C: 5 and 1 with some 0. D: 6 only.
async fn four_files(index: &EdgeIndex) {
    index
        .upsert_files(vec![
            file(0xA, vec![axis(0), axis(1), axis(2)]),
            file(0xB, vec![axis(4), mix(&[(0, 0.8), (3, 0.6)])]),
            file(0xC, vec![axis(5), mix(&[(1, 0.6), (0, 0.3)])]),
            file(0xD, vec![axis(6)]),
        ])
        .await
        .unwrap();
}

#[tokio::test]
async fn ranks_files_by_best_window_one_hit_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;

    let hits = index
        .search(&axis(0), SearchParams::with_limit(10))
        .await
        .unwrap();
    // D is orthogonal to the query (score 0) but still a file: every file appears once.
    assert_eq!(ids(&hits), vec![0xA, 0xB, 0xC, 0xD], "{hits:#?}");

    let a = &hits[0];
    assert!(close(a.score, 1.0), "{a:?}");
    let w = a.best_window.as_ref().unwrap();
    assert_eq!((w.index, w.start_s, w.end_s), (0, 0.0, 10.0));
    assert!(close(w.score, a.score));

    let b = &hits[1];
    assert!(close(b.score, 0.8), "{b:?}");
    let w = b.best_window.as_ref().unwrap();
    assert_eq!((w.index, w.start_s, w.end_s), (1, 10.0, 20.0));

    let c = &hits[2];
    let expected = 0.3 / (0.6f32 * 0.6 + 0.3 * 0.3).sqrt();
    assert!(close(c.score, expected), "{c:?}");
    assert_eq!(c.best_window.as_ref().unwrap().index, 1);

    // Another query: the best window moves.
    let hits = index
        .search(&axis(2), SearchParams::with_limit(1))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA]);
    let w = hits[0].best_window.as_ref().unwrap();
    assert_eq!((w.index, w.start_s, w.end_s), (2, 20.0, 30.0));
}

#[tokio::test]
async fn limit_and_score_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;

    let hits = index
        .search(&axis(0), SearchParams::with_limit(2))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA, 0xB]);

    let none = index
        .search(&axis(0), SearchParams::with_limit(0))
        .await
        .unwrap();
    assert!(none.is_empty());

    let params = SearchParams {
        score_threshold: Some(0.75),
        ..SearchParams::with_limit(10)
    };
    let hits = index.search(&axis(0), params).await.unwrap();
    assert_eq!(ids(&hits), vec![0xA, 0xB]);
    assert!(hits.iter().all(|h| h.score >= 0.75));

    let params = SearchParams {
        score_threshold: Some(0.999),
        ..SearchParams::with_limit(10)
    };
    assert_eq!(
        ids(&index.search(&axis(0), params).await.unwrap()),
        vec![0xA]
    );
}

#[tokio::test]
async fn filters_on_duration_format_and_creation_time() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    let q = axis(0);
    // Five files, all matching the query, differing in metadata; score decreases with id.
    let files: Vec<FileVectors> = (1u128..=5)
        .map(|i| {
            let mut f = file(i, vec![mix(&[(0, 1.0), (1, 0.1 * i as f32)])]);
            f.duration_s = i as f64; // 1 … 5 s
            f.format = ["wav", "FLAC", "mp3", "m4a/aac", "wav"][i as usize - 1].into();
            f.created_at = 1000 * i as i64; // 1000 … 5000
            f
        })
        .collect();
    index.upsert_files(files).await.unwrap();

    let search = |filter: SearchFilter| {
        let index = index.clone();
        let q = q.clone();
        async move {
            ids(&index
                .search(
                    &q,
                    SearchParams {
                        filter,
                        ..SearchParams::with_limit(10)
                    },
                )
                .await
                .unwrap())
        }
    };

    assert_eq!(search(SearchFilter::default()).await, vec![1, 2, 3, 4, 5]);
    let duration = SearchFilter {
        min_duration_s: Some(2.0),
        max_duration_s: Some(4.0),
        ..SearchFilter::default()
    };
    assert_eq!(search(duration).await, vec![2, 3, 4]);
    let min_only = SearchFilter {
        min_duration_s: Some(4.5),
        ..SearchFilter::default()
    };
    assert_eq!(search(min_only).await, vec![5]);
    let formats = SearchFilter {
        formats: vec!["WAV".into(), "flac".into()],
        ..SearchFilter::default()
    };
    assert_eq!(search(formats).await, vec![1, 2, 5]);
    let aac = SearchFilter {
        formats: vec!["m4a/aac".into()],
        ..SearchFilter::default()
    };
    assert_eq!(search(aac).await, vec![4]);
    let created = SearchFilter {
        created_after: Some(2000),
        created_before: Some(5000),
        ..SearchFilter::default()
    };
    assert_eq!(search(created).await, vec![3, 4]);
    let before = SearchFilter {
        created_before: Some(2001),
        ..SearchFilter::default()
    };
    assert_eq!(search(before).await, vec![1, 2]);
    let all = SearchFilter {
        min_duration_s: Some(1.0),
        formats: vec!["wav".into()],
        created_after: Some(1000),
        ..SearchFilter::default()
    };
    assert_eq!(search(all).await, vec![5]);
    let nothing = SearchFilter {
        formats: vec!["ogg".into()],
        ..SearchFilter::default()
    };
    assert!(search(nothing).await.is_empty());
}

#[tokio::test]
async fn exclude_file() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;
    let a = Uuid::from_u128(0xA);
    // "Similar to A": its own file vector, without A itself.
    let query = index.file_vector(a).await.unwrap().unwrap();
    let params = SearchParams {
        exclude_file: Some(a),
        ..SearchParams::with_limit(3)
    };
    let hits = index.search(&query, params).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert!(!ids(&hits).contains(&0xA), "{hits:#?}");
    assert_eq!(hits[0].file_id, Uuid::from_u128(0xC)); // C's window 1 is along 1 and 0
}

#[tokio::test]
async fn file_vector_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;
    let expected = mean(&[axis(0), axis(1), axis(2)]);
    let got = index
        .file_vector(Uuid::from_u128(0xA))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), DIM);
    assert!(got.iter().zip(&expected).all(|(a, b)| close(*a, *b)));
    assert_eq!(index.file_vector(Uuid::from_u128(0xE)).await.unwrap(), None);
}

#[tokio::test]
async fn reupsert_with_fewer_windows_leaves_no_stale_points() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 4,
            windows: 8
        }
    );

    // Same file again, same content: nothing changes.
    index
        .upsert_file(file(0xA, vec![axis(0), axis(1), axis(2)]))
        .await
        .unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 4,
            windows: 8
        }
    );

    // A now has one window, along 7. Its old windows along 0, 1, 2 must be gone.
    index.upsert_file(file(0xA, vec![axis(7)])).await.unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 4,
            windows: 6
        }
    );
    let hits = index
        .search(&axis(2), SearchParams::with_limit(10))
        .await
        .unwrap();
    let a = hits.iter().find(|h| h.file_id.as_u128() == 0xA).unwrap();
    assert!(close(a.score, 0.0), "stale window of A still found: {a:?}");
    let hits = index
        .search(&axis(7), SearchParams::with_limit(1))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA]);
    assert_eq!(hits[0].best_window.as_ref().unwrap().index, 0);

    // And back to more windows than before.
    index
        .upsert_file(file(0xA, vec![axis(8); 5]))
        .await
        .unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 4,
            windows: 10
        }
    );
}

#[tokio::test]
async fn batch_upsert_last_occurrence_wins() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    index
        .upsert_files(vec![
            file(1, vec![axis(0); 4]),
            file(2, vec![axis(1)]),
            file(1, vec![axis(3); 2]),
        ])
        .await
        .unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 2,
            windows: 3
        }
    );
    let hits = index
        .search(&axis(3), SearchParams::with_limit(1))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![1]);
    assert!(close(hits[0].score, 1.0));
    index.upsert_files(Vec::new()).await.unwrap();
}

#[tokio::test]
async fn delete_file_removes_all_its_points() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;
    index.delete_file(Uuid::from_u128(0xA)).await.unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 3,
            windows: 5
        }
    );
    assert_eq!(index.file_vector(Uuid::from_u128(0xA)).await.unwrap(), None);
    let hits = index
        .search(&axis(0), SearchParams::with_limit(10))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xB, 0xC, 0xD]);
    // Deleting what is not there is fine.
    index.delete_file(Uuid::from_u128(0xA)).await.unwrap();
    index.delete_file(Uuid::from_u128(0xEE)).await.unwrap();
    assert_eq!(index.count().await.unwrap().files, 3);
}

#[tokio::test]
async fn file_without_windows_is_ranked_by_its_file_vector() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(&dir);
    four_files(&index).await;
    let mut bare = file(0xF, Vec::new());
    bare.vector = mix(&[(0, 0.9), (9, 0.1)]);
    index.upsert_file(bare).await.unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 5,
            windows: 8
        }
    );
    let hits = index
        .search(&axis(0), SearchParams::with_limit(3))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA, 0xF, 0xB], "{hits:#?}");
    assert_eq!(hits[1].best_window, None);
    // Files with windows never rank by their file vector: for 0+2, A's mean (along 0, 1,
    // 2) would score 0.816, but A ranks by its windows (0.707).
    let hits = index
        .search(&mean(&[axis(0), axis(2)]), SearchParams::with_limit(1))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![0xA]);
    assert!(close(hits[0].score, 0.5f32.sqrt()), "{hits:#?}");
    assert!(hits[0].best_window.is_some());
}

#[tokio::test]
async fn files_with_many_matching_windows_still_fill_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = IndexConfig::new(dir.path().join("index"), DIM);
    // Tiny rounds, so that grouping needs several of them.
    config.oversample = 1;
    config.max_candidates = 16;
    let index = EdgeIndex::open(config).unwrap();
    // Files 1..=4 have 50 windows each, all closer to the query than file 5's only window.
    let mut files: Vec<FileVectors> = (1u128..=4)
        .map(|i| {
            let windows = (0..50)
                .map(|w| mix(&[(0, 1.0), (1, 0.1 * i as f32 + 0.001 * w as f32)]))
                .collect();
            file(i, windows)
        })
        .collect();
    files.push(file(5, vec![mix(&[(0, 1.0), (1, 1.0)])]));
    index.upsert_files(files).await.unwrap();

    let hits = index
        .search(&axis(0), SearchParams::with_limit(5))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec![1, 2, 3, 4, 5], "{hits:#?}");
    for h in &hits[..4] {
        assert_eq!(h.best_window.as_ref().unwrap().index, 0, "{h:?}");
    }
    assert!(hits.windows(2).all(|p| p[0].score >= p[1].score));
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

    // Vectors of the wrong size are refused, not stored.
    let index = open(&dir);
    let err = index
        .search(&[1.0; 512], SearchParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IndexError::VectorDimension {
                got: 512,
                expected: DIM,
                ..
            }
        ),
        "{err}"
    );
    let mut bad = file(1, vec![axis(0), vec![0.5; DIM + 1]]);
    let err = index.upsert_file(bad.clone()).await.unwrap_err();
    assert!(err.to_string().contains("window 1 of"), "{err}");
    bad.windows.truncate(1);
    bad.vector[3] = f32::NAN;
    let err = index.upsert_file(bad).await.unwrap_err();
    assert!(matches!(err, IndexError::NonFiniteVector { .. }), "{err}");
    assert_eq!(index.count().await.unwrap(), IndexCounts::default());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn VectorIndex> = Arc::new(open(&dir));
    // 20 files, file i's windows along axes i % 12 and 12 + i % 12.
    let files: Vec<FileVectors> = (0u128..20)
        .map(|i| {
            let k = i as usize % 12;
            file(i, vec![axis(k), axis(12 + k)])
        })
        .collect();
    index.upsert_files(files).await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..8usize {
        let index = Arc::clone(&index);
        tasks.push(tokio::spawn(async move {
            for round in 0..25usize {
                let k = (t + round) % 12;
                let hits = index
                    .search(&axis(k), SearchParams::with_limit(2))
                    .await
                    .unwrap();
                // Files k and k + 12 (if < 20) match with score 1, all others score 0.
                let expected: Vec<u128> = [k as u128, k as u128 + 12]
                    .into_iter()
                    .filter(|&i| i < 20)
                    .collect();
                let mut got = ids(&hits[..expected.len()]);
                got.sort_unstable();
                assert_eq!(got, expected, "{hits:?}");
                assert!(close(hits[0].score, 1.0));
            }
        }));
    }
    // A writer at the same time: files that never match the queries above.
    let writer = {
        let index = Arc::clone(&index);
        tokio::spawn(async move {
            for i in 100u128..130 {
                index.upsert_file(file(i, vec![axis(23); 3])).await.unwrap();
                if i % 10 == 0 {
                    index.flush().await.unwrap();
                }
            }
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 50,
            windows: 130
        }
    );
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
