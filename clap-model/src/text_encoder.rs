//! RoBERTa, CLAP's text tower (transformers' `ClapTextModel`), with its pooler.
//!
//! Weight names follow the HF `model.safetensors` under `text_model.`.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};

use crate::config::{Activation, ClapTextConfig};
use crate::kernels::{self, layer_norm_f32, AttentionBias, Epilogue, LayerNormF32};

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Tensor,
    norm: LayerNormF32,
}

struct SelfAttention {
    /// q, k and v as one projection.
    qkv: Linear,
    output: Linear,
    norm: LayerNormF32,
    num_heads: usize,
    head_dim: usize,
}

/// Which keys each token attends to.
#[derive(Clone)]
enum Keys {
    /// `x` is `(B, L, H)`, padded; the additive mask is `(B, 1, 1, L)`.
    Mask(Tensor),
    /// `x` is `(1, T, H)`: the real tokens of sequences of these lengths,
    /// packed (fused kernels only).
    Packed(Arc<[usize]>),
}

impl SelfAttention {
    fn forward(&self, x: &Tensor, keys: &Keys) -> Result<Tensor> {
        let qkv = kernels::linear(&self.qkv, x, Epilogue::Act(None))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ctx = match keys {
            Keys::Packed(lens) => kernels::packed_attention(&qkv, lens, self.num_heads, scale)?,
            Keys::Mask(mask) => self.masked_attention(&qkv, mask, scale)?,
        };
        self.norm
            .forward(&kernels::linear(&self.output, &ctx, Epilogue::Residual(x))?)
    }

    /// `qkv`: `(B, L, 3H)`, `mask`: additive `(B, 1, 1, L)`. Returns `(B, L, H)`.
    fn masked_attention(&self, qkv: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, l, h3) = qkv.dims3()?;
        let h = h3 / 3;
        if kernels::fused(qkv) {
            let mask = mask.reshape((b, l))?;
            return kernels::attention(qkv, &mask, self.num_heads, scale, AttentionBias::PerKey);
        }
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * h, h)?
                .reshape((b, l, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let scores = (kernels::matmul(&q, &k.t()?)? * scale)?.broadcast_add(mask)?;
        // Softmax in f32 as the reference's eager path does, whatever the dtype.
        let probs = kernels::softmax_f32(&scores)?;
        kernels::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((b, l, h))
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNormF32,
    act: Activation,
}

impl Layer {
    fn load(cfg: &ClapTextConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let attention = SelfAttention {
            qkv: kernels::fused_qkv(&att.pp("self"), h, h, true)?,
            output: linear(h, h, att.pp("output").pp("dense"))?,
            norm: layer_norm_f32(h, cfg.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        };
        Ok(Self {
            attention,
            intermediate: linear(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            norm: layer_norm_f32(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, keys: &Keys) -> Result<Tensor> {
        let x = self.attention.forward(x, keys)?;
        let m = kernels::linear(&self.intermediate, &x, Epilogue::Act(Some(self.act)))?;
        self.norm
            .forward(&kernels::linear(&self.output, &m, Epilogue::Residual(&x))?)
    }
}

/// RoBERTa encoder + pooler: token ids in, `tanh(dense(h[<s>]))` out.
pub struct ClapTextEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Linear,
    pad_token_id: u32,
    max_positions: usize,
    dtype: DType,
    device: Device,
}

impl ClapTextEncoder {
    /// Loads from `text_model`.
    pub fn load(cfg: &ClapTextConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let evb = vb.pp("embeddings");
        let token_type = evb
            .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let embeddings = Embeddings {
            word: embedding(cfg.vocab_size, h, evb.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                h,
                evb.pp("position_embeddings"),
            )?,
            token_type,
            norm: layer_norm_f32(h, cfg.layer_norm_eps, evb.pp("LayerNorm"))?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            pooler: linear(h, h, vb.pp("pooler").pp("dense"))?,
            pad_token_id: cfg.pad_token_id,
            max_positions: cfg.max_position_embeddings,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// `input_ids`: one row per text, right-padded with the pad token, all rows
    /// the same length. `attention_mask`: 1 for real tokens, 0 for padding.
    /// Returns the pooled `(B, hidden)`.
    pub fn forward(&self, input_ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<Tensor> {
        let b = input_ids.len();
        let l = input_ids.first().map_or(0, Vec::len);
        if b == 0 || l == 0 || attention_mask.len() != b {
            candle_core::bail!(
                "text batch must hold at least one non-empty sequence with its mask"
            );
        }
        // Positions count real tokens from padding_idx + 1; pads sit at padding_idx.
        let mut ids = Vec::with_capacity(b * l);
        let mut positions = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        for (row, row_mask) in input_ids.iter().zip(attention_mask) {
            if row.len() != l || row_mask.len() != l {
                candle_core::bail!("text batch rows differ in length; pad them first");
            }
            let mut seen = 0u32;
            for (&id, &m) in row.iter().zip(row_mask) {
                let real = id != self.pad_token_id;
                seen += u32::from(real);
                ids.push(id);
                positions.push(if real {
                    seen + self.pad_token_id
                } else {
                    self.pad_token_id
                });
                mask.push(if m != 0 { 0f32 } else { 1f32 });
            }
        }
        if positions.iter().any(|&p| p as usize >= self.max_positions) {
            candle_core::bail!(
                "text of {l} tokens exceeds the model's {} positions; truncate it",
                self.max_positions - self.pad_token_id as usize - 1
            );
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let positions = Tensor::from_vec(positions, (b, l), &self.device)?;
        let e = &self.embeddings;
        let x = e
            .word
            .forward(&ids)?
            .broadcast_add(&e.token_type)?
            .add(&e.position.forward(&positions)?)?;
        let x = e.norm.forward(&x)?;

        // With the fused kernels, padding is dropped: every layer but the
        // attention is per token, so only real tokens go through them, and
        // each text attends to its own (what the mask does, at no cost for
        // the pads). Right-padded batches only; others take the mask.
        let lens: Vec<usize> = attention_mask
            .iter()
            .map(|m| m.iter().take_while(|&&v| v != 0).count())
            .collect();
        let right_padded = lens
            .iter()
            .zip(attention_mask)
            .all(|(&n, m)| n > 0 && m[n..].iter().all(|&v| v == 0));
        if kernels::fused(&x) && right_padded {
            let real: Vec<u32> = lens
                .iter()
                .enumerate()
                .flat_map(|(r, &n)| (0..n).map(move |t| (r * l + t) as u32))
                .collect();
            let n_real = real.len();
            let index = Tensor::from_vec(real, n_real, &self.device)?;
            let mut x = x
                .reshape((b * l, x.dim(2)?))?
                .index_select(&index, 0)?
                .unsqueeze(0)?;
            let keys = Keys::Packed(lens.clone().into());
            for layer in &self.layers {
                x = layer.forward(&x, &keys)?;
            }
            // Each text's first token (<s>) opens its stretch of the packing.
            let firsts: Vec<u32> = lens
                .iter()
                .scan(0usize, |at, &n| {
                    let first = *at;
                    *at += n;
                    Some(first as u32)
                })
                .collect();
            let firsts = Tensor::from_vec(firsts, b, &self.device)?;
            let first = x.squeeze(0)?.index_select(&firsts, 0)?;
            return kernels::linear(&self.pooler, &first, Epilogue::Act(Some(Activation::Tanh)));
        }

        // The reference adds finfo(dtype).min to masked keys; f32::MIN would
        // overflow to −inf in f16/bf16, so use the dtype's own minimum.
        let min = match self.dtype {
            DType::F16 => f64::from(half_min_f16()),
            DType::BF16 => -3.389_531_4e38,
            _ => f64::from(f32::MIN),
        };
        let mask =
            (Tensor::from_vec(mask, (b, 1, 1, l), &self.device)? * min)?.to_dtype(self.dtype)?;
        let keys = Keys::Mask(mask);
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, &keys)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        kernels::linear(&self.pooler, &first, Epilogue::Act(Some(Activation::Tanh)))
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Hidden width of the pooled output.
    pub fn hidden_size(&self) -> usize {
        self.pooler.weight().dim(D::Minus1).unwrap_or(0)
    }
}

/// Smallest finite f16, `-65504`.
fn half_min_f16() -> f32 {
    -65504.0
}
