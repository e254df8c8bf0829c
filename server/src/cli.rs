//! Command-line arguments. Every option also reads an environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_model::{DeviceSpec, Precision, DEFAULT_MODEL};

/// Search your own audio by what it sounds like.
#[derive(Debug, Parser)]
#[command(name = "traum", version, about)]
pub struct Cli {
    /// Log as JSON lines (to stderr).
    #[arg(long, env = "TRAUM_LOG_JSON", global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print CLAP embeddings of audio files and texts, one JSON object per line.
    Embed(EmbedArgs),
}

/// Which model, where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory or Hugging Face hub id (looked up in the HF cache;
    /// downloaded unless HF_HUB_OFFLINE=1).
    #[arg(long, env = "TRAUM_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "TRAUM_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32, the precision the parity tests cover), f32, or on a GPU f16 or bf16.
    #[arg(long, env = "TRAUM_DTYPE", default_value = "auto")]
    pub dtype: Precision,
    /// Most audio windows or texts per forward pass.
    #[arg(long, env = "TRAUM_BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A text to embed; repeat for several.
    #[arg(long = "text", short = 't')]
    pub texts: Vec<String>,
    /// Seconds between the starts of consecutive 10 s windows of long audio
    /// (at most 10; smaller overlaps the windows).
    #[arg(long, env = "TRAUM_WINDOW_HOP_S", default_value_t = 10.0)]
    pub hop_s: f64,
    /// Audio files (wav, flac, mp3, ogg/vorbis, m4a/aac).
    pub files: Vec<PathBuf>,
}
