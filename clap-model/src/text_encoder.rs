//! RoBERTa, CLAP's text tower (transformers' `ClapTextModel`), with its pooler.
//!
//! Weight names follow the HF `model.safetensors` under `text_model.`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use crate::config::{Activation, ClapTextConfig};
use crate::kernels::attention::{self, ScoreBias, Sequences};
use crate::kernels::sgemm::{self, Lhs, Residual};
use crate::kernels::{self, layer_norm_f32, uninit_vec, Dense, Epilogue, Kernels, LayerNormF32};

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Tensor,
    norm: LayerNormF32,
}

struct SelfAttention {
    /// q, k and v as one projection.
    qkv: Dense,
    output: Dense,
    norm: LayerNormF32,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// `x`: `(B, L, H)`, `mask`: additive `(B, 1, 1, L)` (candle's path).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x, Epilogue::Act(None))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (b, l, h3) = qkv.dims3()?;
        let h = h3 / 3;
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
        let ctx = kernels::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((b, l, h))?;
        self.norm
            .forward(&self.output.forward(&ctx, Epilogue::Residual(x))?)
    }
}

/// The tokens of a batch on the CPU kernels' path.
enum Tokens<'a> {
    /// Real tokens only, texts of these lengths one after another.
    Packed(&'a [usize]),
    /// `count` texts of `len` tokens, padding included; the additive mask
    /// per key, `(count, len)`.
    Padded {
        count: usize,
        len: usize,
        mask: &'a [f32],
    },
}

struct Layer {
    attention: SelfAttention,
    intermediate: Dense,
    output: Dense,
    norm: LayerNormF32,
    act: Activation,
}

impl Layer {
    fn load(cfg: &ClapTextConfig, packed: bool, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let attention = SelfAttention {
            qkv: Dense::new(kernels::fused_qkv(&att.pp("self"), h, h, true)?, packed)?,
            output: Dense::load(att.pp("output").pp("dense"), h, h, true, packed)?,
            norm: layer_norm_f32(h, cfg.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        };
        let inter = cfg.intermediate_size;
        Ok(Self {
            attention,
            intermediate: Dense::load(vb.pp("intermediate").pp("dense"), h, inter, true, packed)?,
            output: Dense::load(vb.pp("output").pp("dense"), inter, h, true, packed)?,
            norm: layer_norm_f32(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = self.attention.forward(x, mask)?;
        let m = self
            .intermediate
            .forward(&x, Epilogue::Act(Some(self.act)))?;
        self.norm
            .forward(&self.output.forward(&m, Epilogue::Residual(&x))?)
    }

    /// The layer on the CPU kernels: `x` holds rows of `H`. With `keep`,
    /// only those rows go on after the attention (the last layer, whose
    /// other tokens the pooler never reads) and only they are returned.
    fn forward_packed(
        &self,
        x: &[f32],
        tokens: &Tokens,
        keep: Option<&[usize]>,
    ) -> Result<Vec<f32>> {
        let att = &self.attention;
        let h = att.num_heads * att.head_dim;
        let m = x.len() / h;
        let qkv = att.qkv.gemm_new(&Lhs::rows(x, h), m, Default::default())?;
        let mut ctx = uninit_vec(m * h);
        let scale = 1.0 / (att.head_dim as f32).sqrt();
        match tokens {
            Tokens::Packed(lens) => attention::attention(
                &qkv,
                h,
                att.num_heads,
                scale,
                Sequences::Packed(lens),
                |_, _| ScoreBias::None,
                &mut ctx,
            )?,
            Tokens::Padded { count, len, mask } => attention::attention(
                &qkv,
                h,
                att.num_heads,
                scale,
                Sequences::Uniform {
                    count: *count,
                    len: *len,
                },
                |s, _| ScoreBias::PerKey(&mask[s * len..(s + 1) * len]),
                &mut ctx,
            )?,
        }
        drop(qkv);
        let kept;
        let (ctx, x, m) = match keep {
            Some(rows) => {
                let pick = |v: &[f32]| -> Vec<f32> {
                    rows.iter()
                        .flat_map(|&r| v[r * h..(r + 1) * h].iter().copied())
                        .collect()
                };
                kept = (pick(&ctx), pick(x));
                (kept.0.as_slice(), kept.1.as_slice(), rows.len())
            }
            None => (ctx.as_slice(), x, m),
        };
        let mut y = att.output.gemm_new(
            &Lhs::rows(ctx, h),
            m,
            sgemm::Epilogue {
                residual: Some(Residual::rows(x)),
                ..Default::default()
            },
        )?;
        att.norm.apply(&mut y);
        let inter = self.intermediate.gemm_new(
            &Lhs::rows(&y, h),
            m,
            sgemm::Epilogue {
                act: Some(self.act),
                ..Default::default()
            },
        )?;
        let mut z = self.output.gemm_new(
            &Lhs::rows(&inter, inter.len() / m),
            m,
            sgemm::Epilogue {
                residual: Some(Residual::rows(&y)),
                ..Default::default()
            },
        )?;
        self.norm.apply(&mut z);
        Ok(z)
    }
}

/// RoBERTa encoder + pooler: token ids in, `tanh(dense(h[<s>]))` out.
pub struct ClapTextEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Dense,
    hidden_size: usize,
    pad_token_id: u32,
    max_positions: usize,
    dtype: DType,
    device: Device,
    /// Whether the layers are packed for the CPU kernels.
    packed: bool,
}

impl ClapTextEncoder {
    /// Loads from `text_model`.
    pub fn load(cfg: &ClapTextConfig, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let packed = kernels.packed(vb.device(), vb.dtype());
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
            .map(|i| Layer::load(cfg, packed, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            pooler: Dense::load(vb.pp("pooler").pp("dense"), h, h, true, packed)?,
            hidden_size: h,
            pad_token_id: cfg.pad_token_id,
            max_positions: cfg.max_position_embeddings,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            packed,
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
        if self.packed {
            return self.forward_packed(&x, attention_mask, &mask);
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
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.pooler
            .forward(&first, Epilogue::Act(Some(Activation::Tanh)))
    }

    /// The layers and the pooler on the CPU kernels, from the embeddings
    /// `x` `(B, L, H)`; `padding` is 1 at each pad, row by row.
    fn forward_packed(
        &self,
        x: &Tensor,
        attention_mask: &[Vec<u32>],
        padding: &[f32],
    ) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        // Right-padded batches drop their padding: every layer but the
        // attention is per token, so only real tokens go through them, and
        // each text attends to its own (what the mask does, at no cost for
        // the pads). Others keep it and take the mask.
        let lens: Vec<usize> = attention_mask
            .iter()
            .map(|m| m.iter().take_while(|&&v| v != 0).count())
            .collect();
        let right_padded = lens
            .iter()
            .zip(attention_mask)
            .all(|(&n, m)| n > 0 && m[n..].iter().all(|&v| v == 0));
        let min_mask: Vec<f32>;
        let (mut x, tokens, firsts) = if right_padded {
            let real: Vec<f32> = lens
                .iter()
                .enumerate()
                .flat_map(|(r, &n)| values[r * l * h..(r * l + n) * h].iter().copied())
                .collect();
            // Each text's first token (<s>) opens its stretch of the packing.
            let firsts: Vec<usize> = lens
                .iter()
                .scan(0, |at, &n| {
                    let first = *at;
                    *at += n;
                    Some(first)
                })
                .collect();
            (real, Tokens::Packed(&lens), firsts)
        } else {
            min_mask = padding.iter().map(|&p| p * f32::MIN).collect();
            let tokens = Tokens::Padded {
                count: b,
                len: l,
                mask: &min_mask,
            };
            (values, tokens, (0..b).map(|r| r * l).collect())
        };
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            // The pooler reads each text's first token only: past the last
            // layer's attention, only those rows are computed.
            let keep = (i == last).then_some(firsts.as_slice());
            x = layer.forward_packed(&x, &tokens, keep)?;
        }
        if self.layers.is_empty() {
            x = firsts
                .iter()
                .flat_map(|&r| x[r * h..(r + 1) * h].iter().copied())
                .collect();
        }
        let pooled = self.pooler.gemm_new(
            &Lhs::rows(&x, h),
            b,
            sgemm::Epilogue {
                act: Some(Activation::Tanh),
                ..Default::default()
            },
        )?;
        Tensor::from_vec(pooled, (b, h), &self.device)
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Hidden width of the pooled output.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }
}

/// Smallest finite f16, `-65504`.
fn half_min_f16() -> f32 {
    -65504.0
}
