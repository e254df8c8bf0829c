//! The `VectorIndex` conformance suite: the same assertions for every backend (the
//! in-process edge index, a Qdrant node, a Qdrant cluster). A backend makes an empty index
//! per case ([`Backend::fresh`]); [`run_all`] runs every case and names those that failed.

#![allow(dead_code)] // each test binary uses part of the helpers

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use traum_index::{
    FileHit, FileVectors, IndexCounts, IndexError, SearchFilter, SearchParams, Uuid, VectorIndex,
    WindowVector,
};

pub const DIM: usize = 24;

/// An empty index for one case, and whatever must live as long as it (a temp dir).
pub struct Fresh {
    pub index: Arc<dyn VectorIndex>,
    pub keep: Option<tempfile::TempDir>,
}

pub type FreshFuture<'a> = Pin<Box<dyn Future<Output = Fresh> + Send + 'a>>;

/// A deployment the suite runs on.
pub trait Backend: Send + Sync + 'static {
    /// An empty index of [`DIM`]-d vectors; `case` names it (e.g. in collection names).
    fn fresh(&self, case: &'static str) -> FreshFuture<'_>;
}

type Case = fn(Arc<dyn Backend>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        /// Every case, by name.
        pub fn cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($case), |b| Box::pin($case(b, stringify!($case))) as _)),*]
        }
    };
}

cases!(
    ranks_files_by_best_window_one_hit_per_file,
    limit_and_score_threshold,
    filters_on_duration_format_and_creation_time,
    exclude_file,
    file_vector_round_trips,
    reupsert_with_fewer_windows_leaves_no_stale_points,
    batch_upsert_last_occurrence_wins,
    delete_file_removes_all_its_points,
    file_without_windows_is_ranked_by_its_file_vector,
    files_with_many_matching_windows_still_fill_the_limit,
    invalid_vectors_are_refused_and_nothing_is_stored,
    concurrent_searches_and_writes,
    status_names_the_backend_and_both_collections,
);

/// Runs every case (each in its own task, so one failure does not hide the others) and
/// panics naming the cases that failed.
pub async fn run_all(backend: Arc<dyn Backend>) {
    let mut failed = Vec::new();
    for (name, case) in cases() {
        let started = std::time::Instant::now();
        match tokio::spawn(case(Arc::clone(&backend))).await {
            Ok(()) => eprintln!(
                "conformance: {name} ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("conformance: {name} FAILED: {e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "conformance cases failed: {failed:?}");
}

/// Unit vector along axis `i`.
pub fn axis(i: usize) -> Vec<f32> {
    mix(&[(i, 1.0)])
}

/// Normalised weighted sum of axes.
pub fn mix(parts: &[(usize, f32)]) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for &(i, w) in parts {
        v[i] += w;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

pub fn mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for w in vectors {
        v.iter_mut().zip(w).for_each(|(a, b)| *a += b);
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A file whose window `i` has vector `windows[i]` and spans `[10 i, 10 i + 10)` s.
pub fn file(id: u128, windows: Vec<Vec<f32>>) -> FileVectors {
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

pub fn ids(hits: &[FileHit]) -> Vec<u128> {
    hits.iter().map(|h| h.file_id.as_u128()).collect()
}

/// Scores agree to 1e-4 (exact search; int8 quantization is rescored with the originals).
pub fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-4
}

/// A: windows along 0, 1, 2. B: 0 with some 3, 4. C: 5 and 1 with some 0. D: 6 only.
pub async fn four_files(index: &dyn VectorIndex) {
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

async fn ranks_files_by_best_window_one_hit_per_file(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;

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

async fn limit_and_score_threshold(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;

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

async fn filters_on_duration_format_and_creation_time(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
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

async fn exclude_file(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
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

async fn file_vector_round_trips(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
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

async fn reupsert_with_fewer_windows_leaves_no_stale_points(
    b: Arc<dyn Backend>,
    case: &'static str,
) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
    let counts = |files, windows| IndexCounts { files, windows };
    assert_eq!(index.count().await.unwrap(), counts(4, 8));

    // Same file again, same content: nothing changes.
    index
        .upsert_file(file(0xA, vec![axis(0), axis(1), axis(2)]))
        .await
        .unwrap();
    assert_eq!(index.count().await.unwrap(), counts(4, 8));

    // A now has one window, along 7. Its old windows along 0, 1, 2 must be gone.
    index.upsert_file(file(0xA, vec![axis(7)])).await.unwrap();
    assert_eq!(index.count().await.unwrap(), counts(4, 6));
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
    assert_eq!(index.count().await.unwrap(), counts(4, 10));
}

async fn batch_upsert_last_occurrence_wins(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
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

async fn delete_file_removes_all_its_points(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
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

async fn file_without_windows_is_ranked_by_its_file_vector(
    b: Arc<dyn Backend>,
    case: &'static str,
) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
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

async fn files_with_many_matching_windows_still_fill_the_limit(
    b: Arc<dyn Backend>,
    case: &'static str,
) {
    let fresh = b.fresh(case).await;
    many_matching_windows_fill_the_limit(&*fresh.index).await;
}

/// Files whose many windows all match better than another file's only window still leave
/// room for that file: grouping returns `limit` files, each by its best window.
pub async fn many_matching_windows_fill_the_limit(index: &dyn VectorIndex) {
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

async fn invalid_vectors_are_refused_and_nothing_is_stored(
    b: Arc<dyn Backend>,
    case: &'static str,
) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
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
    // A bad file in a batch refuses the whole batch before anything is written.
    let mut late = file(3, vec![axis(2)]);
    late.duration_s = -1.0;
    let err = index
        .upsert_files(vec![file(2, vec![axis(1)]), late])
        .await
        .unwrap_err();
    assert!(matches!(err, IndexError::InvalidArgument(_)), "{err}");
    assert_eq!(index.count().await.unwrap(), IndexCounts::default());
}

async fn concurrent_searches_and_writes(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = Arc::clone(&fresh.index);
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
    // Writers at the same time: files that never match the queries above, one of them
    // re-writing the same files (idempotent upserts racing each other).
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let index = Arc::clone(&index);
            tokio::spawn(async move {
                for i in 100u128..130 {
                    let id = if w == 0 { i } else { 100 + (i % 10) };
                    index
                        .upsert_file(file(id, vec![axis(23); 3]))
                        .await
                        .unwrap();
                    if i % 10 == 0 {
                        index.flush().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        index.count().await.unwrap(),
        IndexCounts {
            files: 50,
            windows: 130
        }
    );
}

async fn status_names_the_backend_and_both_collections(b: Arc<dyn Backend>, case: &'static str) {
    let fresh = b.fresh(case).await;
    let index = &*fresh.index;
    four_files(index).await;
    let status = index.status().await.unwrap();
    assert!(["edge", "qdrant"].contains(&status.backend), "{status:?}");
    assert_eq!(status.collections.len(), 2, "{status:?}");
    assert!(status.nodes.iter().all(|n| n.reachable), "{status:?}");
    assert!(
        status.collections[0].name.contains("window")
            && status.collections[1].name.contains("file"),
        "{status:?}"
    );
}
