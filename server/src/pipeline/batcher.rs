//! The one way to the model: a batcher that packs audio windows from every
//! file being processed (and texts from every search) into forward passes.
//!
//! As in text-embeddings-inference's router: requests wait in bounded queues
//! (a full queue makes senders wait: back-pressure, not memory growth); the
//! batcher takes the first waiting request, then whatever else arrives within
//! `max_wait` up to `max_batch`, and runs one forward pass on a blocking
//! thread. Texts go first: a search is waiting for them, ingestion is not.
//!
//! Audio arrives as log-mel features, computed by the sender on its own
//! thread ([`Embedder::window_features`], in the decoder's thread for files):
//! the front end then runs beside the forward pass, not before it on the
//! batcher's thread, and a queued window is 1001 × 64 values, not 480 000.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap_model::{ClapEmbedder, EmbedderInfo};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How the batcher packs requests.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Most windows (or texts) per forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Requests that may wait per queue before senders block.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            queue_capacity: 64,
        }
    }
}

/// Why an embedding did not come back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Model(Arc<str>),
    /// This input (and only this one) cannot be embedded.
    #[error("{0}")]
    Input(Arc<str>),
    #[error("the model is not running (the server is shutting down)")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Vec<f32>, EmbedError>>;

struct Job<T> {
    input: T,
    reply: Reply,
}

/// A cheap, cloneable handle to the batcher.
#[derive(Clone)]
pub struct Embedder {
    /// Features of one window each.
    windows: mpsc::Sender<Job<Vec<f32>>>,
    texts: mpsc::Sender<Job<String>>,
    info: Arc<EmbedderInfo>,
    /// For the front end, which runs on the senders' threads.
    model: Arc<ClapEmbedder>,
    waiting: Arc<AtomicUsize>,
    /// Results sent by the batcher and not yet taken by their callers.
    delivering: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Embedder {
    /// Starts the batcher task. It ends when every handle is dropped.
    pub fn start(
        model: Arc<ClapEmbedder>,
        config: BatcherConfig,
        metrics: Metrics,
    ) -> (Self, JoinHandle<()>) {
        let (windows_tx, windows_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (texts_tx, texts_rx) = mpsc::channel(config.queue_capacity.max(1));
        let info = Arc::new(model.info().clone());
        let waiting = Arc::new(AtomicUsize::new(0));
        let delivering = Arc::new(AtomicUsize::new(0));
        let batcher = Batcher {
            model: model.clone(),
            config: BatcherConfig {
                max_batch: config.max_batch.max(1),
                ..config
            },
            windows: windows_rx,
            texts: texts_rx,
            delivering: delivering.clone(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(batcher.run());
        (
            Self {
                windows: windows_tx,
                texts: texts_tx,
                info,
                model,
                waiting,
                delivering,
                metrics,
            },
            task,
        )
    }

    pub fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    /// Windows and texts sent and not yet embedded.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Results of finished forward passes not yet taken by their callers: the files of a
    /// pass that are about to commit (see `pipeline::commit`).
    pub fn delivering(&self) -> usize {
        self.delivering.load(Ordering::Acquire)
    }

    /// Log-mel features of one window (mono, model rate, at most one window
    /// long), computed on the calling thread: blocking, for decoder threads.
    /// Errors belong to this window alone.
    pub fn window_features(&self, samples: &[f32]) -> Result<Vec<f32>, EmbedError> {
        // NaN or infinity would poison the features (and a batch's statistics).
        if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
            return Err(EmbedError::Input(
                format!("the audio window holds a non-finite sample (NaN or infinity) at {i}")
                    .into(),
            ));
        }
        self.model
            .window_features(samples)
            .map_err(|e| EmbedError::Input(e.to_string().into()))
    }

    /// The embedding of one window's features (from [`window_features`](Self::window_features)).
    pub async fn embed_features(&self, features: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        self.submit(&self.windows, features).await
    }

    /// The embedding of one window: its features on a blocking thread, then
    /// the batcher.
    pub async fn embed_window(&self, samples: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        let this = self.clone();
        let features = tokio::task::spawn_blocking(move || this.window_features(&samples))
            .await
            .map_err(|e| EmbedError::Model(format!("front end task failed: {e}").into()))??;
        self.embed_features(features).await
    }

    /// The embedding of one text.
    pub async fn embed_text(&self, text: String) -> Result<Vec<f32>, EmbedError> {
        self.submit(&self.texts, text).await
    }

    async fn submit<T>(
        &self,
        queue: &mpsc::Sender<Job<T>>,
        input: T,
    ) -> Result<Vec<f32>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.metrics.embed_queue.inc();
        let _count = Waiting(&self.waiting, &self.metrics);
        queue
            .send(Job { input, reply })
            .await
            .map_err(|_| EmbedError::Stopped)?;
        let mut delivery = Delivery {
            rx,
            delivering: &self.delivering,
        };
        let result = (&mut delivery.rx).await;
        if result.is_ok() {
            self.delivering.fetch_sub(1, Ordering::AcqRel);
        }
        result.map_err(|_| EmbedError::Stopped)?
    }
}

/// Sends a result and counts it in `delivering` until its caller takes it.
fn deliver(delivering: &AtomicUsize, reply: Reply, result: Result<Vec<f32>, EmbedError>) {
    delivering.fetch_add(1, Ordering::AcqRel);
    if reply.send(result).is_err() {
        // Its caller is gone: nobody will take it.
        delivering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A caller's end of a reply. Dropped unanswered (the caller cancelled), it closes the
/// channel, so a later send fails (and [`deliver`] uncounts it), and uncounts a result that
/// arrived first and was never taken.
struct Delivery<'a> {
    rx: oneshot::Receiver<Result<Vec<f32>, EmbedError>>,
    delivering: &'a AtomicUsize,
}

impl Drop for Delivery<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.delivering.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Decrements the waiting count however the request ends.
struct Waiting<'a>(&'a AtomicUsize, &'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.embed_queue.dec();
    }
}

struct Batcher {
    model: Arc<ClapEmbedder>,
    config: BatcherConfig,
    windows: mpsc::Receiver<Job<Vec<f32>>>,
    texts: mpsc::Receiver<Job<String>>,
    delivering: Arc<AtomicUsize>,
    metrics: Metrics,
}

enum First {
    Text(Job<String>),
    Window(Job<Vec<f32>>),
}

impl Batcher {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                Some(job) = self.texts.recv() => First::Text(job),
                Some(job) = self.windows.recv() => First::Window(job),
                else => break,
            };
            match first {
                First::Text(job) => {
                    let batch = gather(&mut self.texts, job, &self.config).await;
                    let model = self.model.clone();
                    self.run_batch("text", batch, check_text, move |inputs| {
                        let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
                        model.embed_texts(&texts)
                    })
                    .await;
                }
                First::Window(job) => {
                    let batch = gather(&mut self.windows, job, &self.config).await;
                    let model = self.model.clone();
                    let check = check_features(self.model.features_len());
                    self.run_batch("audio", batch, check, move |inputs| {
                        let features: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
                        model.embed_features(&features)
                    })
                    .await;
                }
            }
        }
        tracing::debug!("embedding batcher stopped");
    }

    /// One forward pass over a batch. Errors stay with the input that caused them: an input
    /// that fails its check is answered alone before the pass, and if the pass fails as a
    /// whole, each input is run again on its own so only the culprit gets the error. Jobs
    /// whose caller has gone (a cancelled or deleted file) are dropped unembedded.
    async fn run_batch<T: Send + 'static>(
        &self,
        kind: &'static str,
        batch: Vec<Job<T>>,
        check: impl Fn(&T) -> Result<(), String>,
        forward: impl Fn(&[T]) -> clap_model::Result<Vec<Vec<f32>>> + Send + 'static,
    ) {
        let mut inputs = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            if job.reply.is_closed() {
                self.metrics.embed_skipped.with_label_values(&[kind]).inc();
                continue;
            }
            if let Err(why) = check(&job.input) {
                deliver(
                    &self.delivering,
                    job.reply,
                    Err(EmbedError::Input(why.into())),
                );
                continue;
            }
            inputs.push(job.input);
            replies.push(job.reply);
        }
        let n = inputs.len();
        if n == 0 {
            return;
        }
        self.metrics
            .batch_size
            .with_label_values(&[kind])
            .observe(n as f64);
        let started = Instant::now();
        let results = tokio::task::spawn_blocking(move || forward_isolated(&forward, &inputs))
            .await
            .unwrap_or_else(|e| {
                let message: Arc<str> = format!("forward pass failed: {e}").into();
                vec![Err(EmbedError::Model(message)); n]
            });
        self.metrics
            .forward_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        tracing::trace!(
            kind,
            n,
            ms = started.elapsed().as_millis() as u64,
            "forward pass"
        );
        for (reply, result) in replies.into_iter().zip(results) {
            deliver(&self.delivering, reply, result);
        }
    }
}

/// Runs `forward` over all inputs; if that fails (or panics) and there is more than one,
/// runs each half on its own, and so on down: one bad input cannot fail its neighbours
/// (it is found in log₂ n passes), and a batch too large for the device (out of memory)
/// goes through as smaller ones instead of failing its files.
fn forward_isolated<T>(
    forward: &impl Fn(&[T]) -> clap_model::Result<Vec<Vec<f32>>>,
    inputs: &[T],
) -> Vec<Result<Vec<f32>, EmbedError>> {
    let run = |inputs: &[T]| -> Result<Vec<Vec<f32>>, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward(inputs))) {
            Ok(Ok(v)) if v.len() == inputs.len() => Ok(v),
            Ok(Ok(v)) => Err(format!(
                "model returned {} vectors for {} inputs",
                v.len(),
                inputs.len()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the forward pass panicked".to_string()),
        }
    };
    match run(inputs) {
        Ok(vectors) => vectors.into_iter().map(Ok).collect(),
        Err(message) if inputs.len() == 1 => {
            tracing::warn!(%message, "forward pass failed");
            vec![Err(EmbedError::Model(message.into()))]
        }
        Err(message) => {
            tracing::warn!(%message, n = inputs.len(), "batch failed; embedding it in two halves");
            let (left, right) = inputs.split_at(inputs.len() / 2);
            let mut out = forward_isolated(forward, left);
            out.extend(forward_isolated(forward, right));
            out
        }
    }
}

/// A window's features must be the model's size (the front end makes them so).
fn check_features(len: usize) -> impl Fn(&Vec<f32>) -> Result<(), String> {
    move |features| {
        if features.len() == len {
            Ok(())
        } else {
            Err(format!(
                "{} feature values for a window; this model takes {len}",
                features.len()
            ))
        }
    }
}

fn check_text(_: &String) -> Result<(), String> {
    Ok(())
}

/// The first job plus whatever else arrives within `max_wait`, up to `max_batch`.
async fn gather<T>(
    rx: &mut mpsc::Receiver<Job<T>>,
    first: Job<T>,
    config: &BatcherConfig,
) -> Vec<Job<T>> {
    let mut batch = Vec::with_capacity(config.max_batch);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + config.max_wait;
    while batch.len() < config.max_batch {
        // Take what is already waiting without a timer.
        match rx.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(job)) => batch.push(job),
            _ => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap_model::{DeviceSpec, EmbedderOptions, Precision};

    fn tiny(max_batch: usize) -> Arc<ClapEmbedder> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/clap/models/tiny-a"
        );
        Arc::new(
            ClapEmbedder::load(&EmbedderOptions {
                model: dir.into(),
                device: DeviceSpec::Cpu,
                precision: Precision::F32,
                max_batch,
            })
            .unwrap(),
        )
    }

    fn window(seed: u32) -> Vec<f32> {
        (0..48_000u32)
            .map(|i| ((i * (seed + 3)) as f32 * 0.001).sin() * 0.5)
            .collect()
    }

    /// Windows sent concurrently by many callers share forward passes, and
    /// every caller gets the vector of its own window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packs_concurrent_requests_into_batches() {
        let model = tiny(8);
        let metrics = Metrics::new();
        let config = BatcherConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(50),
            queue_capacity: 64,
        };
        let (embedder, _task) = Embedder::start(model.clone(), config, metrics.clone());
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let e = embedder.clone();
                tokio::spawn(async move { e.embed_window(window(i)).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for c in calls {
            got.push(c.await.unwrap());
        }
        let batches = metrics.batch_size.with_label_values(&["audio"]);
        assert_eq!(batches.get_sample_sum(), 20.0, "every window embedded once");
        assert!(
            batches.get_sample_count() <= 5,
            "20 concurrent windows took {} forward passes",
            batches.get_sample_count()
        );
        // Same vectors as embedding each window alone.
        for (i, v) in got.iter().enumerate() {
            let alone = model.embed_windows(&[&window(i as u32)]).unwrap().remove(0);
            let cos: f32 = v.iter().zip(&alone).map(|(a, b)| a * b).sum();
            assert!(cos > 0.99999, "window {i}: cosine {cos}");
        }
        assert_eq!(embedder.queue_depth(), 0);
        assert_eq!(embedder.delivering(), 0, "every result taken");
        // Texts take the same road.
        let t = embedder.embed_text("a soft pad".into()).await.unwrap();
        assert_eq!(t.len(), embedder.info().embedding_dim);
        assert_eq!(embedder.delivering(), 0);
    }

    /// A result counts as delivering from its send until its caller takes it; a caller that
    /// gives up before the send, or after it without taking the result, leaves no count
    /// behind (a count left behind would hold every commit group for its full linger).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_left_untaken_are_not_counted() {
        let config = BatcherConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(1),
            queue_capacity: 64,
        };
        let (embedder, _task) = Embedder::start(tiny(8), config, Metrics::new());
        let features = |i| embedder.window_features(&window(i)).unwrap();

        // Sent, answered, never taken: counted until the caller's end is dropped.
        let mut waiting = Box::pin(embedder.embed_features(features(1)));
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        let deadline = Instant::now() + Duration::from_secs(60);
        while embedder.delivering() == 0 {
            assert!(Instant::now() < deadline, "the batcher never answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(embedder.delivering(), 1);
        drop(waiting);
        assert_eq!(embedder.delivering(), 0);

        // Given up while queued: skipped or refused at the send, never counted. The
        // queue is first in, first out: once the next caller has its result, the
        // batcher is past the abandoned one.
        let mut waiting = Box::pin(embedder.embed_features(features(2)));
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(waiting);
        embedder.embed_features(features(3)).await.unwrap();
        assert_eq!(embedder.delivering(), 0);
    }

    /// One bad input among many concurrent callers fails that caller alone: a NaN window is
    /// refused by its own front end, and so is a window the model cannot take (too long);
    /// features of the wrong size are refused before the forward pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_input_fails_only_its_caller() {
        let metrics = Metrics::new();
        let config = BatcherConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(200),
            queue_capacity: 64,
        };
        let (embedder, _task) = Embedder::start(tiny(8), config, metrics.clone());
        let mut nan = window(5);
        nan[1234] = f32::NAN;
        let mut inf = window(6);
        inf[7] = f32::INFINITY;
        let inputs: Vec<(&str, Vec<f32>)> = vec![
            ("good", window(1)),
            ("nan", nan),
            ("good", window(2)),
            ("too long", vec![0.1; 480_001]),
            ("good", window(3)),
            ("inf", inf),
            ("good", window(4)),
        ];
        let calls: Vec<_> = inputs
            .into_iter()
            .map(|(what, w)| {
                let e = embedder.clone();
                (what, tokio::spawn(async move { e.embed_window(w).await }))
            })
            .collect();
        for (what, call) in calls {
            let got = call.await.unwrap();
            match what {
                "good" => assert!(got.is_ok(), "a good window failed: {got:?}"),
                "nan" | "inf" => assert!(
                    matches!(&got, Err(EmbedError::Input(m)) if m.contains("non-finite")),
                    "{what}: {got:?}"
                ),
                _ => assert!(
                    matches!(&got, Err(EmbedError::Input(m)) if m.contains("longer") || m.contains("at most")),
                    "{what}: {got:?}"
                ),
            }
        }
        // Only good windows reached the model, in shared passes.
        let batches = metrics.batch_size.with_label_values(&["audio"]);
        assert_eq!(batches.get_sample_sum(), 4.0);
        assert!(
            batches.get_sample_count() <= 4,
            "{}",
            batches.get_sample_count()
        );
        // Features of another size are answered alone, before the pass.
        let err = embedder.embed_features(vec![0.0; 100]).await.unwrap_err();
        assert!(
            matches!(&err, EmbedError::Input(m) if m.contains("feature values")),
            "{err}"
        );
    }

    /// Windows whose caller has gone (its file was cancelled or deleted) are not embedded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_windows_are_skipped() {
        let metrics = Metrics::new();
        let model = tiny(8);
        let (_w, windows) = mpsc::channel(1);
        let (_t, texts) = mpsc::channel(1);
        let batcher = Batcher {
            model: model.clone(),
            config: BatcherConfig::default(),
            windows,
            texts,
            delivering: Default::default(),
            metrics: metrics.clone(),
        };
        let mut jobs = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..6 {
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                input: model.window_features(&window(i)).unwrap(),
                reply,
            });
            // Every other caller has gone away (its receiver is dropped).
            if i % 2 == 0 {
                waiting.push(rx);
            }
        }
        let check = check_features(model.features_len());
        batcher
            .run_batch("audio", jobs, check, move |inputs| {
                let features: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
                model.embed_features(&features)
            })
            .await;
        for rx in waiting {
            assert!(rx.await.unwrap().is_ok());
        }
        let batches = metrics.batch_size.with_label_values(&["audio"]);
        assert_eq!(
            batches.get_sample_sum(),
            3.0,
            "only live callers' windows embedded"
        );
        assert_eq!(metrics.embed_skipped.with_label_values(&["audio"]).get(), 3);
    }

    /// A failed pass is split in halves: a batch the device cannot hold goes
    /// through in smaller passes, and only an input that fails alone fails.
    #[test]
    fn failed_passes_split_until_they_fit() {
        let passes = std::sync::Mutex::new(Vec::new());
        let forward = |inputs: &[u32]| -> clap_model::Result<Vec<Vec<f32>>> {
            passes.lock().unwrap().push(inputs.len());
            if inputs.len() > 3 {
                return Err(clap_model::ClapError::Device(
                    "CUDA_ERROR_OUT_OF_MEMORY".into(),
                ));
            }
            if inputs.contains(&7) {
                return Err(clap_model::ClapError::Device("input 7 is bad".into()));
            }
            Ok(inputs.iter().map(|&i| vec![i as f32]).collect())
        };
        let inputs: Vec<u32> = (0..12).collect();
        let out = forward_isolated(&forward, &inputs);
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (7, Err(EmbedError::Model(m))) => assert!(m.contains("input 7"), "{m}"),
                (7, other) => panic!("input 7: {other:?}"),
                (i, Ok(v)) => assert_eq!(v, &vec![i as f32]),
                (i, Err(e)) => panic!("input {i} failed: {e}"),
            }
        }
        // 12 → 6 + 6 → four passes of 3, then 6..9 (holding 7) split to 1 + 2, then 1 + 1.
        let passes = passes.into_inner().unwrap();
        assert!(
            passes.iter().filter(|&&n| n == 3).count() >= 3,
            "{passes:?}"
        );
        assert!(passes.len() <= 12, "{passes:?}");
    }

    /// An error reaches the caller; the batcher lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_reach_callers() {
        let (embedder, _task) = Embedder::start(tiny(4), BatcherConfig::default(), Metrics::new());
        // Longer than one model window: the front end refuses it.
        let err = embedder.embed_window(vec![0.1; 480_001]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Input(_)), "{err}");
        assert!(embedder.embed_window(window(1)).await.is_ok());
    }
}
