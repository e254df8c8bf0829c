//! Where a model comes from: a local directory, or a Hugging Face hub id
//! resolved through the local HF cache and, when allowed, a download with
//! `hf-hub` (as text-embeddings-inference does).

use std::path::{Path, PathBuf};

use crate::error::{ClapError, Result};

/// The checkpoint used when none is named.
pub const DEFAULT_MODEL: &str = "laion/larger_clap_music_and_speech";

/// Weight files in order of preference. `larger_clap_music_and_speech` has
/// only `pytorch_model.bin` on its main branch.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The files of one checkpoint, all on local disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user asked for (directory or hub id), for logs and reports.
    pub id: String,
    /// Directory holding the tokenizer files (the snapshot directory for hub models).
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `preprocessor_config.json`; the LAION defaults apply when absent.
    pub preprocessor: Option<PathBuf>,
}

impl ModelFiles {
    /// Resolves `spec`: an existing directory is used as it is; anything else
    /// is taken as a hub id. Hub ids are looked up in the HF cache
    /// (`$HF_HOME/hub`, or `$HF_HUB_CACHE`) first, then downloaded unless
    /// `HF_HUB_OFFLINE=1`.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path, spec);
        }
        if path.exists()
            || spec.starts_with('.')
            || spec.starts_with('/')
            || spec.split('/').count() != 2
        {
            return Err(ClapError::MissingFile {
                dir: path.to_path_buf(),
                what: "model directory",
                expected: format!(
                    "a directory with config.json, model.safetensors or pytorch_model.bin and the tokenizer files, \
                     or a hub id such as {DEFAULT_MODEL}"
                ),
            });
        }
        Self::from_hub(spec)
    }

    /// Uses a local directory laid out like a hub repository.
    pub fn from_dir(dir: &Path, id: &str) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ClapError::MissingFile {
                dir: dir.to_path_buf(),
                what: "config.json",
                expected: "the ClapModel config.json of the checkpoint".into(),
            });
        }
        let weights = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| ClapError::MissingFile {
                dir: dir.to_path_buf(),
                what: "weights",
                expected: WEIGHT_FILES.join(" or "),
            })?;
        let preprocessor = Some(dir.join("preprocessor_config.json")).filter(|p| p.is_file());
        Ok(Self {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            config,
            weights,
            preprocessor,
        })
    }

    fn from_hub(id: &str) -> Result<Self> {
        let cache = hub_cache();
        let not_found = |reason: String| ClapError::ModelNotFound {
            model: id.to_string(),
            short: id.rsplit('/').next().unwrap_or(id).to_string(),
            cache: cache.path().display().to_string(),
            reason,
        };
        let cached = cache.model(id.to_string());
        if let Some(config) = cached.get("config.json") {
            if let Some(dir) = config.parent() {
                // A snapshot directory holds symlinks to the blobs: it is a model directory.
                if WEIGHT_FILES.iter().any(|f| cached.get(f).is_some()) {
                    tracing::info!(model = id, dir = %dir.display(), "using cached model");
                    return Self::from_dir(dir, id);
                }
            }
        }
        if offline() {
            return Err(not_found(
                " and HF_HUB_OFFLINE is set, so nothing was downloaded".into(),
            ));
        }
        tracing::info!(model = id, "downloading from the Hugging Face hub");
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone());
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder
            .with_progress(false)
            .build()
            .map_err(|e| not_found(format!("; the hub client could not start: {e}")))?;
        let repo = api.model(id.to_string());
        let config = repo
            .get("config.json")
            .map_err(|e| not_found(format!("; download failed: {e}")))?;
        let mut weights_err = String::new();
        let mut have_weights = false;
        for f in WEIGHT_FILES {
            match repo.get(f) {
                Ok(_) => {
                    have_weights = true;
                    break;
                }
                Err(e) => weights_err = e.to_string(),
            }
        }
        if !have_weights {
            return Err(not_found(format!(
                "; no weights could be downloaded: {weights_err}"
            )));
        }
        for f in TOKENIZER_FILES
            .iter()
            .chain(std::iter::once(&"preprocessor_config.json"))
        {
            // Optional files: a repo has tokenizer.json or vocab.json + merges.txt.
            let _ = repo.get(f);
        }
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_dir(&dir, id)
    }
}

/// The hub cache as huggingface_hub finds it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => hf_hub::Cache::new(dir.into()),
        _ => hf_hub::Cache::from_env(),
    }
}

/// `HF_HUB_OFFLINE` set to a true value, as huggingface_hub reads it.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}
