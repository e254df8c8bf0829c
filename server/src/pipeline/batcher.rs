//! The one way to the model: a batcher that packs audio windows from every
//! file being processed (and texts from every search) into forward passes.
//!
//! As in text-embeddings-inference's router: requests wait in bounded queues
//! (a full queue makes senders wait: back-pressure, not memory growth); the
//! batcher takes the first waiting request, then whatever else arrives within
//! `max_wait` up to `max_batch`, and runs one forward pass on a blocking
//! thread. Texts go first: a search is waiting for them, ingestion is not.

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
    windows: mpsc::Sender<Job<Vec<f32>>>,
    texts: mpsc::Sender<Job<String>>,
    info: Arc<EmbedderInfo>,
    waiting: Arc<AtomicUsize>,
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
        let batcher = Batcher {
            model,
            config: BatcherConfig {
                max_batch: config.max_batch.max(1),
                ..config
            },
            windows: windows_rx,
            texts: texts_rx,
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(batcher.run());
        (
            Self {
                windows: windows_tx,
                texts: texts_tx,
                info,
                waiting,
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

    /// The embedding of one window (mono, model rate, at most one window long).
    pub async fn embed_window(&self, samples: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        self.submit(&self.windows, samples).await
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
        rx.await.map_err(|_| EmbedError::Stopped)?
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
                    self.run_batch("text", batch, move |inputs| {
                        let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
                        model.embed_texts(&texts)
                    })
                    .await;
                }
                First::Window(job) => {
                    let batch = gather(&mut self.windows, job, &self.config).await;
                    let model = self.model.clone();
                    self.run_batch("audio", batch, move |inputs| {
                        let windows: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
                        model.embed_windows(&windows)
                    })
                    .await;
                }
            }
        }
        tracing::debug!("embedding batcher stopped");
    }

    async fn run_batch<T: Send + 'static>(
        &self,
        kind: &'static str,
        batch: Vec<Job<T>>,
        forward: impl FnOnce(&[T]) -> clap_model::Result<Vec<Vec<f32>>> + Send + 'static,
    ) {
        let (inputs, replies): (Vec<T>, Vec<Reply>) =
            batch.into_iter().map(|j| (j.input, j.reply)).unzip();
        let n = inputs.len();
        self.metrics
            .batch_size
            .with_label_values(&[kind])
            .observe(n as f64);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || forward(&inputs)).await;
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
        match result {
            Ok(Ok(vectors)) if vectors.len() == n => {
                for (reply, v) in replies.into_iter().zip(vectors) {
                    let _ = reply.send(Ok(v));
                }
            }
            Ok(Ok(vectors)) => fail_all(
                replies,
                format!("model returned {} vectors for {n} inputs", vectors.len()),
            ),
            Ok(Err(e)) => fail_all(replies, e.to_string()),
            Err(e) => fail_all(replies, format!("forward pass panicked: {e}")),
        }
    }
}

fn fail_all(replies: Vec<Reply>, message: String) {
    tracing::error!(%message, "forward pass failed");
    let message: Arc<str> = message.into();
    for reply in replies {
        let _ = reply.send(Err(EmbedError::Model(message.clone())));
    }
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
        // Texts take the same road.
        let t = embedder.embed_text("a soft pad".into()).await.unwrap();
        assert_eq!(t.len(), embedder.info().embedding_dim);
    }

    /// A model error reaches every caller of the batch; the batcher lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_reach_callers() {
        let (embedder, _task) = Embedder::start(tiny(4), BatcherConfig::default(), Metrics::new());
        // Longer than one model window: the front end refuses it.
        let err = embedder.embed_window(vec![0.1; 480_001]).await.unwrap_err();
        assert!(matches!(err, EmbedError::Model(_)), "{err}");
        assert!(embedder.embed_window(window(1)).await.is_ok());
    }
}
