//! LAION CLAP (Contrastive Language-Audio Pretraining) on candle.
//!
//! Loads the Hugging Face `ClapModel` checkpoints (HTSAT audio tower +
//! RoBERTa text tower) and reproduces transformers' embeddings. The modules
//! follow the data: [`features`] turns 48 kHz audio into the log-mel input,
//! [`audio_encoder`] and [`text_encoder`] are the towers, [`model`] joins
//! them with their projections, [`embedder`] is the batched API on top, and
//! [`source`] finds the checkpoint on disk or in the HF cache.

pub mod audio_encoder;
pub mod config;
pub mod embedder;
pub mod error;
pub mod features;
pub mod kernels;
pub mod model;
pub mod source;
pub mod text_encoder;
pub mod tokenizer;

pub use config::{ClapAudioConfig, ClapConfig, ClapTextConfig};
pub use embedder::{
    mean_embedding, ClapEmbedder, DeviceSpec, EmbedderInfo, EmbedderOptions, Precision,
};
pub use error::{ClapError, Result};
pub use features::{FeatureExtractorConfig, MelFrontEnd};
pub use kernels::Kernels;
pub use model::ClapModel;
pub use source::{ModelFiles, DEFAULT_MODEL};
pub use tokenizer::{ClapTokenizer, TokenBatch};

/// Tunes glibc's allocator for tensor work: freed buffers stay in the heap
/// for the next forward pass instead of going back to the kernel.
///
/// glibc serves every allocation above 32 MiB (a batch's activations) with a
/// fresh `mmap` and unmaps it on free, so each op of each forward pass pays
/// page faults and the kernel's zeroing of every page again (measured: ~9 %
/// of a batch-8 audio pass). This makes the heap serve them and keeps up to
/// 1 GiB of freed memory; the process's RSS stays at its peak instead of
/// falling back between batches. Call it once at start, before threads that
/// allocate; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
