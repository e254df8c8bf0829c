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
pub use model::ClapModel;
pub use source::{ModelFiles, DEFAULT_MODEL};
pub use tokenizer::{ClapTokenizer, TokenBatch};
