//! The batched embedding API: audio windows and texts in, L2-normalised
//! vectors out. Owns the model, its tokenizer and its mel front end, so a
//! caller never mixes a front end with the wrong checkpoint.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{ClapError, Result};
use crate::features::{DeviceMelFrontEnd, FeatureExtractorConfig, MelFrontEnd};
use crate::model::ClapModel;
use crate::source::ModelFiles;
use crate::tokenizer::ClapTokenizer;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when this build has CUDA and a GPU is present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => Device::new_cuda(i).map_err(|e| {
                ClapError::Device(format!(
                    "cannot open CUDA device {i}: {e}. Build with `--features cuda` and check the driver, \
                     or use --device cpu"
                ))
            }),
            Self::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        }
    }
}

/// Numeric precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere for now: it is the precision the parity tests cover.
    /// Half precision on a GPU is opt-in until its parity has been measured
    /// on one.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype `{s}`: use auto, f32, f16 or bf16")),
        }
    }
}

impl Precision {
    /// The dtype this precision means on `device` (half types are refused on the CPU).
    pub fn resolve(self, device: &Device) -> Result<DType> {
        match (self, device.is_cpu()) {
            (Self::Auto | Self::F32, _) => Ok(DType::F32),
            (Self::F16, false) => Ok(DType::F16),
            (Self::Bf16, false) => Ok(DType::BF16),
            // candle's CPU kernels for half types are slow and not what the
            // parity tests cover; refuse rather than run a surprising path.
            (Self::F16 | Self::Bf16, true) => Err(ClapError::Device(
                "f16/bf16 are for GPUs; on CPU use f32".into(),
            )),
        }
    }
}

/// How to load an [`ClapEmbedder`].
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Local directory or hub id.
    pub model: String,
    pub device: DeviceSpec,
    pub precision: Precision,
    /// Most windows or texts per forward pass; larger inputs are split.
    pub max_batch: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            model: crate::source::DEFAULT_MODEL.to_string(),
            device: DeviceSpec::Auto,
            precision: Precision::Auto,
            max_batch: 16,
        }
    }
}

/// What is loaded, for logs and the API.
#[derive(Debug, Clone)]
pub struct EmbedderInfo {
    pub model_id: String,
    pub device: String,
    pub dtype: String,
    pub embedding_dim: usize,
    pub sample_rate: u32,
    pub window_samples: usize,
}

/// CLAP ready to embed: model + tokenizer + mel front end on one device.
pub struct ClapEmbedder {
    model: ClapModel,
    tokenizer: ClapTokenizer,
    front_end: MelFrontEnd,
    /// The front end on the model's device, where that is not the CPU.
    device_front_end: Option<DeviceMelFrontEnd>,
    device: Device,
    max_batch: usize,
    info: EmbedderInfo,
}

impl ClapEmbedder {
    /// Resolves the model, opens the device and loads everything.
    pub fn load(options: &EmbedderOptions) -> Result<Self> {
        let files = ModelFiles::resolve(&options.model)?;
        let device = options.device.open()?;
        let dtype = options.precision.resolve(&device)?;
        Self::from_files(&files, device, dtype, options.max_batch)
    }

    /// Loads from already-resolved files.
    pub fn from_files(
        files: &ModelFiles,
        device: Device,
        dtype: DType,
        max_batch: usize,
    ) -> Result<Self> {
        let model = ClapModel::load(files, &device, dtype)?;
        let cfg = model.config();
        let tokenizer = ClapTokenizer::from_dir(
            &files.dir,
            cfg.max_text_tokens(),
            cfg.text_config.pad_token_id,
        )?;
        let fe_config = match &files.preprocessor {
            Some(path) => FeatureExtractorConfig::from_file(path)?,
            None => FeatureExtractorConfig::default(),
        };
        if fe_config.feature_size != cfg.audio_config.num_mel_bins {
            return Err(ClapError::UnsupportedConfig {
                path: files.config.clone(),
                detail: format!(
                    "preprocessor makes {} mel bins but the audio tower expects {}",
                    fe_config.feature_size, cfg.audio_config.num_mel_bins
                ),
            });
        }
        let front_end = MelFrontEnd::new(fe_config)?;
        // On a GPU the features are computed there too.
        let device_front_end = if device.is_cpu() {
            None
        } else {
            Some(front_end.on_device(&device)?)
        };
        let info = EmbedderInfo {
            model_id: files.id.clone(),
            device: describe_device(&device),
            dtype: format!("{dtype:?}").to_lowercase(),
            embedding_dim: cfg.projection_dim,
            sample_rate: front_end.sample_rate(),
            window_samples: front_end.max_samples(),
        };
        tracing::info!(model = %info.model_id, device = %info.device, dtype = %info.dtype, "CLAP loaded");
        Ok(Self {
            model,
            tokenizer,
            front_end,
            device_front_end,
            device,
            max_batch: max_batch.max(1),
            info,
        })
    }

    /// What is loaded.
    pub fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    /// The model itself (for logits and the pre-projection outputs).
    pub fn model(&self) -> &ClapModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClapTokenizer {
        &self.tokenizer
    }

    /// The mel front end.
    pub fn front_end(&self) -> &MelFrontEnd {
        &self.front_end
    }

    /// Most windows or texts per forward pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One embedding per window. Each window is mono audio at the model's
    /// rate, at most one model window long (shorter ones are repeat-padded
    /// as the reference does).
    pub fn embed_windows(&self, windows: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(windows.len());
        for chunk in windows.chunks(self.max_batch) {
            let features = match &self.device_front_end {
                Some(on_device) => on_device.batch(&self.front_end, chunk)?,
                None => self.front_end.batch(chunk, &self.device)?,
            };
            let emb = self.model.audio_embeddings(&features)?;
            out.extend(emb.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Log-mel features of one window ([`MelFrontEnd::features`]), on the
    /// caller's thread: what [`embed_features`](Self::embed_features) takes.
    /// Callers that decode audio on threads of their own compute them there,
    /// so the features overlap the forward pass instead of preceding it.
    pub fn window_features(&self, samples: &[f32]) -> Result<Vec<f32>> {
        Ok(self.front_end.features(samples)?)
    }

    /// Values of one window's features (`n_frames × n_mels`).
    pub fn features_len(&self) -> usize {
        self.front_end.n_frames() * self.front_end.n_mels()
    }

    /// One embedding per window of features, as [`window_features`](Self::window_features)
    /// makes them.
    pub fn embed_features(&self, features: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let per = self.features_len();
        if let Some(i) = features.iter().position(|f| f.len() != per) {
            return Err(ClapError::FeatureShape {
                index: i,
                got: features[i].len(),
                frames: self.front_end.n_frames(),
                mels: self.front_end.n_mels(),
            });
        }
        let mut out = Vec::with_capacity(features.len());
        for chunk in features.chunks(self.max_batch) {
            let data = chunk.concat();
            let shape = (
                chunk.len(),
                1,
                self.front_end.n_frames(),
                self.front_end.n_mels(),
            );
            let batch = Tensor::from_vec(data, shape, &self.device)?;
            let emb = self.model.audio_embeddings(&batch)?;
            out.extend(emb.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// One embedding per text.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.max_batch) {
            let batch = self.tokenizer.encode_batch(chunk)?;
            let emb = self
                .model
                .text_embeddings(&batch.input_ids, &batch.attention_mask)?;
            out.extend(emb.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

/// The L2-normalised mean of window embeddings: a file's single vector.
pub fn mean_embedding<V: AsRef<[f32]>>(vectors: &[V]) -> Option<Vec<f32>> {
    let dim = vectors.first()?.as_ref().len();
    let mut sum = vec![0f64; dim];
    for v in vectors {
        for (s, &x) in sum.iter_mut().zip(v.as_ref()) {
            *s += f64::from(x);
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    Some(sum.into_iter().map(|x| (x / norm) as f32).collect())
}

fn describe_device(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_precision_parse() {
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!(Precision::F16.resolve(&Device::Cpu).is_err());
        assert_eq!(Precision::Auto.resolve(&Device::Cpu).unwrap(), DType::F32);
    }

    #[test]
    fn mean_embedding_is_unit_length() {
        let m = mean_embedding(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        assert!((m[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((m[0] * m[0] + m[1] * m[1] - 1.0).abs() < 1e-6);
        assert!(mean_embedding::<Vec<f32>>(&[]).is_none());
    }
}
