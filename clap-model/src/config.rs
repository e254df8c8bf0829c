//! Configuration structs that deserialize the Hugging Face `config.json` of a
//! `ClapModel` checkpoint.
//!
//! Every default equals the default of transformers' `ClapTextConfig` /
//! `ClapAudioConfig` / `ClapConfig`: the hub `config.json` files of the LAION
//! checkpoints list only the fields that differ from those defaults, so a
//! missing field must mean exactly what it means to transformers.

use serde::Deserialize;

/// Activation functions that CLAP configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, what transformers calls `"gelu"`.
    Gelu,
    /// tanh-approximated GELU.
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    Tanh,
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Self::Gelu => xs.gelu_erf(),
            Self::GeluNew => xs.gelu(),
            Self::Relu => xs.relu(),
            Self::Tanh => xs.tanh(),
            Self::Silu => candle_nn::ops::silu(xs),
        }
    }
}

/// The RoBERTa text tower (`ClapTextConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClapTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub projection_hidden_act: Activation,
    pub projection_dim: usize,
}

impl Default for ClapTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50265,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
            projection_hidden_act: Activation::Relu,
            projection_dim: 512,
        }
    }
}

/// The HTSAT audio tower (`ClapAudioConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClapAudioConfig {
    pub window_size: usize,
    pub num_mel_bins: usize,
    pub spec_size: usize,
    pub hidden_act: Activation,
    pub patch_size: usize,
    pub patch_stride: PatchStride,
    /// Width of the final stage, the input of the audio projection.
    pub hidden_size: usize,
    pub projection_dim: usize,
    pub depths: Vec<usize>,
    pub num_attention_heads: Vec<usize>,
    pub enable_fusion: bool,
    pub patch_embed_input_channels: usize,
    pub flatten_patch_embeds: bool,
    pub patch_embeds_hidden_size: usize,
    pub enable_patch_layer_norm: bool,
    pub qkv_bias: bool,
    pub mlp_ratio: f64,
    pub projection_hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClapAudioConfig {
    fn default() -> Self {
        Self {
            window_size: 8,
            num_mel_bins: 64,
            spec_size: 256,
            hidden_act: Activation::Gelu,
            patch_size: 4,
            patch_stride: PatchStride([4, 4]),
            hidden_size: 768,
            projection_dim: 512,
            depths: vec![2, 2, 6, 2],
            num_attention_heads: vec![4, 8, 16, 32],
            enable_fusion: false,
            patch_embed_input_channels: 1,
            flatten_patch_embeds: true,
            patch_embeds_hidden_size: 96,
            enable_patch_layer_norm: true,
            qkv_bias: true,
            mlp_ratio: 4.0,
            projection_hidden_act: Activation::Relu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// `patch_stride` is written either as one number or as `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchStride(pub [usize; 2]);

impl<'de> Deserialize<'de> for PatchStride {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(usize),
            Two([usize; 2]),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => Self([s, s]),
            Raw::Two(s) => Self(s),
        })
    }
}

/// The whole model (`ClapConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClapConfig {
    pub text_config: ClapTextConfig,
    pub audio_config: ClapAudioConfig,
    pub projection_dim: usize,
    pub projection_hidden_act: Activation,
    pub logit_scale_init_value: f64,
    pub hidden_size: usize,
}

impl Default for ClapConfig {
    fn default() -> Self {
        Self {
            text_config: ClapTextConfig::default(),
            audio_config: ClapAudioConfig::default(),
            projection_dim: 512,
            projection_hidden_act: Activation::Relu,
            logit_scale_init_value: 1.0 / 0.07,
            hidden_size: 768,
        }
    }
}

impl ClapConfig {
    /// Parses a `config.json` and applies what `ClapConfig.__init__` does:
    /// the top-level projection settings override the sub-configs'.
    pub fn from_json(json: &str) -> serde_json::Result<Self> {
        let mut cfg: Self = serde_json::from_str(json)?;
        cfg.text_config.projection_dim = cfg.projection_dim;
        cfg.text_config.projection_hidden_act = cfg.projection_hidden_act;
        cfg.audio_config.projection_dim = cfg.projection_dim;
        cfg.audio_config.projection_hidden_act = cfg.projection_hidden_act;
        Ok(cfg)
    }

    /// Checks the relations between sizes that the model code relies on, so a
    /// bad config fails with a sentence rather than a shape error deep inside.
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.audio_config;
        let t = &self.text_config;
        if a.enable_fusion {
            return Err(
                "this checkpoint enables feature fusion (clap-htsat-fused); only unfused \
                 checkpoints are supported (laion/larger_clap_music_and_speech, \
                 laion/larger_clap_general, laion/clap-htsat-unfused)"
                    .into(),
            );
        }
        if a.depths.is_empty() || a.depths.len() != a.num_attention_heads.len() {
            return Err(format!(
                "audio_config.depths ({:?}) and num_attention_heads ({:?}) must be non-empty and of equal length",
                a.depths, a.num_attention_heads
            ));
        }
        if a.num_mel_bins == 0 || !a.spec_size.is_multiple_of(a.num_mel_bins) {
            return Err(format!(
                "audio_config.spec_size {} must be a multiple of num_mel_bins {}",
                a.spec_size, a.num_mel_bins
            ));
        }
        for (i, &heads) in a.num_attention_heads.iter().enumerate() {
            let dim = a.patch_embeds_hidden_size << i;
            if heads == 0 || !dim.is_multiple_of(heads) {
                return Err(format!(
                    "audio stage {i}: width {dim} is not divisible by {heads} attention heads"
                ));
            }
        }
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if t.max_position_embeddings <= t.pad_token_id as usize + 1 {
            return Err("text_config.max_position_embeddings leaves no room for tokens".into());
        }
        Ok(())
    }

    /// Width of the last audio stage (`embed_dim · 2^(stages−1)`).
    pub fn audio_num_features(&self) -> usize {
        let a = &self.audio_config;
        a.patch_embeds_hidden_size << (a.depths.len() - 1)
    }

    /// The longest token sequence the text tower accepts: positions start
    /// after the padding index, so `max_position_embeddings − pad − 1`.
    pub fn max_text_tokens(&self) -> usize {
        let t = &self.text_config;
        t.max_position_embeddings - t.pad_token_id as usize - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larger_clap_hub_config_fills_defaults() {
        // The config.json of laion/larger_clap_music_and_speech, abridged as on the hub.
        let json = r#"{"architectures":["ClapModel"],
            "audio_config":{"depths":[2,2,12,2],"hidden_size":1024,"model_type":"clap_audio_model",
                            "patch_embeds_hidden_size":128},
            "hidden_size":768,"logit_scale_init_value":14.285714285714285,"model_type":"clap",
            "num_hidden_layers":16,"projection_dim":512,"projection_hidden_act":"relu",
            "text_config":{"model_type":"clap_text_model"},"torch_dtype":"float32"}"#;
        let cfg = ClapConfig::from_json(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.audio_config.depths, vec![2, 2, 12, 2]);
        assert_eq!(cfg.audio_config.num_attention_heads, vec![4, 8, 16, 32]);
        assert_eq!(cfg.audio_num_features(), 1024);
        assert_eq!(cfg.text_config.layer_norm_eps, 1e-12);
        assert_eq!(cfg.text_config.vocab_size, 50265);
        assert_eq!(cfg.max_text_tokens(), 512);
        assert_eq!(cfg.audio_config.patch_stride, PatchStride([4, 4]));
    }

    #[test]
    fn fused_checkpoints_are_refused_with_a_reason() {
        let cfg = ClapConfig::from_json(r#"{"audio_config":{"enable_fusion":true}}"#).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("fusion"), "{err}");
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let cfg = ClapConfig::from_json(
            r#"{"audio_config":{"patch_embeds_hidden_size":10,"num_attention_heads":[3,3,3,3]}}"#,
        )
        .unwrap();
        assert!(cfg.validate().unwrap_err().contains("not divisible"));
    }
}
