//! Errors of the CLAP crate. Each names the cause and, where there is one,
//! the remedy.

use std::path::PathBuf;

/// Anything that can go wrong loading or running CLAP.
#[derive(Debug, thiserror::Error)]
pub enum ClapError {
    /// The model is neither a local directory nor in the Hugging Face cache,
    /// and could not be downloaded.
    #[error(
        "model `{model}` is not a local directory and not in the Hugging Face cache ({cache}){reason}. \
         On a machine that can reach the hub run `huggingface-cli download {model} --local-dir models/{short}` \
         (or `git clone https://huggingface.co/{model}`), copy the folder here and pass --model models/{short}; \
         or copy a populated HF cache into $HF_HOME/hub"
    )]
    ModelNotFound {
        model: String,
        short: String,
        cache: String,
        reason: String,
    },
    /// A model directory lacks a file the model needs.
    #[error("model directory {dir} has no {what}; expected {expected}")]
    MissingFile {
        dir: PathBuf,
        what: &'static str,
        expected: String,
    },
    /// `config.json` or another JSON file could not be read or parsed.
    #[error("cannot read {path}: {detail}")]
    BadFile { path: PathBuf, detail: String },
    /// The configuration describes something this port does not support.
    #[error("unsupported model configuration in {path}: {detail}")]
    UnsupportedConfig { path: PathBuf, detail: String },
    /// The tokenizer could not be built or failed to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Weights missing, wrongly shaped, or a tensor operation failed.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// The mel front end refused its input.
    #[error(transparent)]
    Features(#[from] crate::features::FeaturesError),
    /// Precomputed features of the wrong size for this model.
    #[error("window {index} has {got} feature values; this model takes {frames} frames × {mels} mel bins")]
    FeatureShape {
        index: usize,
        got: usize,
        frames: usize,
        mels: usize,
    },
    /// A device or dtype that this build or machine cannot provide.
    #[error("device: {0}")]
    Device(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ClapError>;
