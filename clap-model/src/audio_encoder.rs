//! HTSAT, CLAP's audio tower: a Swin transformer over the log-mel spectrogram
//! folded into a square image (transformers' `ClapAudioEncoder`).
//!
//! Weight names follow the HF `model.safetensors` under
//! `audio_model.audio_encoder.` and `audio_projection.`. Shapes (stage widths,
//! resolutions, windows) all come from [`ClapAudioConfig`].
//!
//! Two deliberate departures from the reference's *code* (not its numbers):
//! the shift/partition of shifted windows is one precomputed gather instead of
//! `roll` + `permute`, and the bicubic time resize is a precomputed sparse
//! matrix applied as a matmul. Both are exact rearrangements of the same sums.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

use crate::config::{Activation, ClapAudioConfig};
use crate::kernels::{self, layer_norm_f32, AttentionBias, Epilogue, LayerNormF32};

/// PyTorch's default `nn.LayerNorm` eps, used by the patch-embed, merge and final norms.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;
/// BatchNorm eps of the mel normalisation.
const BATCH_NORM_EPS: f64 = 1e-5;
/// Value the reference adds between tokens of different regions in a shifted window.
const SHIFT_MASK_VALUE: f32 = -100.0;

/// The mel BatchNorm (eval mode) folded into a per-bin affine map.
struct MelBatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl MelBatchNorm {
    fn load(n_mels: usize, vb: VarBuilder) -> Result<Self> {
        // Folded in f32 whatever the model dtype: the inputs are dB values
        // around −100..+30 and the statistics must not lose precision.
        let get = |name| vb.get(n_mels, name)?.to_dtype(DType::F32);
        let (weight, bias) = (get("weight")?, get("bias")?);
        let (mean, var) = (get("running_mean")?, get("running_var")?);
        let scale = weight.broadcast_div(&(var + BATCH_NORM_EPS)?.sqrt()?)?;
        let shift = (bias - mean.mul(&scale)?)?;
        Ok(Self { scale, shift })
    }

    /// `x`: `(B, C, T, n_mels)`, normalised per mel bin.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// Weights of `torch.nn.functional.interpolate(mode="bicubic", align_corners=True)`
/// along one axis, as an `(n_out, n_in)` matrix.
///
/// Source coordinates are computed in f32 as PyTorch does; with f64 they
/// differ by up to ~3e-4 on unit-variance input.
pub fn bicubic_align_corners_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = if n_out > 1 {
        (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
    } else {
        0.0
    };
    let mut m = vec![0f32; n_out * n_in];
    for i in 0..n_out {
        let src = scale * i as f32;
        let i0 = src.floor();
        let t = src - i0;
        let weights = [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)];
        for (k, w) in weights.into_iter().enumerate() {
            let j = (i0 as i64 + k as i64 - 1).clamp(0, n_in as i64 - 1) as usize;
            m[i * n_in + j] += w;
        }
    }
    m
}

/// Patch embedding plus its LayerNorm (`ClapAudioPatchEmbed`, unfused).
///
/// The reference's convolution has stride = kernel, so every patch is read
/// once: it is a reshape of the image into patch rows and one matmul with
/// the kernel as a `(C0, C_in·p·p)` matrix.
struct PatchEmbed {
    proj: Linear,
    patch: usize,
    in_channels: usize,
    norm: Option<LayerNormF32>,
}

impl PatchEmbed {
    fn load(cfg: &ClapAudioConfig, vb: VarBuilder) -> Result<Self> {
        let [sh, sw] = cfg.patch_stride.0;
        if sh != sw || sh != cfg.patch_size {
            candle_core::bail!(
                "patch_stride {:?} with patch_size {} is not supported: only square, non-overlapping \
                 patches (stride = patch size) as in every released CLAP checkpoint",
                cfg.patch_stride.0,
                cfg.patch_size
            );
        }
        let (c0, cin, p) = (
            cfg.patch_embeds_hidden_size,
            cfg.patch_embed_input_channels,
            cfg.patch_size,
        );
        let pvb = vb.pp("proj");
        let weight = pvb
            .get((c0, cin, p, p), "weight")?
            .reshape((c0, cin * p * p))?;
        let proj = Linear::new(weight, Some(pvb.get(c0, "bias")?));
        let norm = if cfg.enable_patch_layer_norm {
            Some(layer_norm_f32(c0, TORCH_LAYER_NORM_EPS, vb.pp("norm"))?)
        } else {
            None
        };
        Ok(Self {
            proj,
            patch: p,
            in_channels: cin,
            norm,
        })
    }

    /// `(B, C_in, S, S)` → `(B, (S/p)², C0)`, tokens in row-major order.
    fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = img.dims4()?;
        let p = self.patch;
        if cin != self.in_channels || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
            candle_core::bail!(
                "patch embedding: image {:?} with patches of {p}",
                img.dims()
            );
        }
        let (gh, gw) = (h / p, w / p);
        // (B, C, gh, p, gw, p) → (B, gh, gw, C, p, p): one row per patch,
        // in the (C, kh, kw) order of the kernel's weights.
        let patches = img
            .reshape((b, cin, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, cin * p * p))?;
        let x = kernels::linear(&self.proj, &patches, Epilogue::Act(None))?;
        match &self.norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}

/// Window self-attention with relative position bias (`ClapAudioAttention` +
/// `ClapAudioSelfOutput`). q, k and v are one projection (their weights
/// concatenated at load), so one matmul reads the tokens once.
struct WindowAttention {
    qkv: Linear,
    output: Linear,
    num_heads: usize,
    head_dim: usize,
    /// Relative position bias plus the shift mask: `(1, nW or 1, heads, N, N)`.
    bias: Tensor,
}

impl WindowAttention {
    /// `x`: `(B·nW, N, C)` windows in batch-major order.
    fn forward(&self, x: &Tensor, n_windows: usize) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let qkv = kernels::linear(&self.qkv, x, Epilogue::Act(None))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if kernels::fused(&qkv) {
            let ctx = kernels::attention(
                &qkv,
                &self.bias,
                self.num_heads,
                scale,
                AttentionBias::PerWindow {
                    n_bias: self.bias.dim(1)?,
                },
            )?;
            return kernels::linear(&self.output, &ctx, Epilogue::Act(None));
        }
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((bw, n, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        // (q·kᵀ)/√d as the reference, not q·(1/√d)·kᵀ as LAION's original.
        let scores = (kernels::matmul(&q, &k.t()?)? * scale)?;
        let scores = scores
            .reshape((bw / n_windows, n_windows, self.num_heads, n, n))?
            .broadcast_add(&self.bias)?
            .reshape((bw, self.num_heads, n, n))?;
        let probs = kernels::softmax_f32(&scores)?;
        let ctx = kernels::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((bw, n, c))?;
        kernels::linear(&self.output, &ctx, Epilogue::Act(None))
    }
}

/// The gather from token order to (shifted) window order and its inverse, as
/// tensors for candle's `index_select` and as indices for the fused kernels.
struct WindowOrder {
    order_t: Tensor,
    inverse_t: Tensor,
    order: Arc<[u32]>,
    inverse: Arc<[u32]>,
}

/// One Swin block (`ClapAudioLayer`) at a fixed resolution.
struct SwinBlock {
    layernorm_before: LayerNormF32,
    attention: WindowAttention,
    layernorm_after: LayerNormF32,
    intermediate: Linear,
    output: Linear,
    act: Activation,
    /// Token order → (shifted) window order; and back.
    to_windows: Option<WindowOrder>,
    n_windows: usize,
    window_tokens: usize,
}

impl SwinBlock {
    #[allow(clippy::too_many_arguments)]
    fn load(
        cfg: &ClapAudioConfig,
        dim: usize,
        (height, width): (usize, usize),
        num_heads: usize,
        shift_requested: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let config_window = cfg.window_size;
        // The reference stops shifting and uses one window over the whole map
        // once the map is no larger than a window (`set_shift_and_window_size`).
        let (window, shift) = if height.min(width) <= config_window {
            (height.min(width), 0)
        } else {
            (config_window, shift_requested)
        };
        if window != config_window {
            candle_core::bail!(
                "audio stage at {height}x{width} is smaller than window_size {config_window}; \
                 the reference's relative-position table would not fit either"
            );
        }
        if !height.is_multiple_of(window) || !width.is_multiple_of(window) {
            candle_core::bail!(
                "audio stage resolution {height}x{width} is not a multiple of window_size {window} \
                 (padded windows are not supported; no released checkpoint needs them)"
            );
        }
        let device = vb.device().clone();
        let n = window * window;
        let n_windows = (height / window) * (width / window);
        let head_dim = dim / num_heads;

        let att = vb.pp("attention");
        let table = att.pp("self").get(
            ((2 * window - 1) * (2 * window - 1), num_heads),
            "relative_position_bias_table",
        )?;
        let rel_index = Tensor::from_vec(relative_position_index(window), n * n, &device)?;
        let rel_bias = table
            .index_select(&rel_index, 0)?
            .reshape((n, n, num_heads))?
            .permute((2, 0, 1))?
            .contiguous()?; // (heads, N, N)
        let bias = if shift > 0 {
            let mask = Tensor::from_vec(
                shift_mask(height, width, window, shift),
                (n_windows, 1, n, n),
                &device,
            )?
            .to_dtype(rel_bias.dtype())?;
            rel_bias.unsqueeze(0)?.broadcast_add(&mask)?.unsqueeze(0)? // (1, nW, heads, N, N)
        } else {
            rel_bias.unsqueeze(0)?.unsqueeze(0)? // (1, 1, heads, N, N)
        };
        let n_windows_bias = if shift > 0 { n_windows } else { 1 };
        debug_assert_eq!(bias.dim(1)?, n_windows_bias);

        let attention = WindowAttention {
            qkv: kernels::fused_qkv(&att.pp("self"), dim, dim, cfg.qkv_bias)?,
            output: linear(dim, dim, att.pp("output").pp("dense"))?,
            num_heads,
            head_dim,
            bias,
        };
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        let to_windows = if n_windows > 1 || shift > 0 {
            let order = window_order(height, width, window, shift);
            let mut inverse = vec![0u32; order.len()];
            for (p, &q) in order.iter().enumerate() {
                inverse[q as usize] = p as u32;
            }
            let len = order.len();
            Some(WindowOrder {
                order_t: Tensor::from_vec(order.clone(), len, &device)?,
                inverse_t: Tensor::from_vec(inverse.clone(), len, &device)?,
                order: order.into(),
                inverse: inverse.into(),
            })
        } else {
            None
        };
        Ok(Self {
            layernorm_before: layer_norm_f32(dim, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            attention,
            layernorm_after: layer_norm_f32(dim, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            intermediate: linear(dim, hidden, vb.pp("intermediate").pp("dense"))?,
            output: linear(hidden, dim, vb.pp("output").pp("dense"))?,
            act: cfg.hidden_act,
            to_windows,
            n_windows,
            window_tokens: n,
        })
    }

    /// `x`: `(B, H·W, C)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let fused = kernels::fused(x);
        let h = self.layernorm_before.forward(x)?;
        let h = match &self.to_windows {
            Some(w) if fused => kernels::gather_rows(&h, &w.order)?,
            Some(w) => h.index_select(&w.order_t, 1)?,
            None => h,
        };
        let h = h.reshape((b * self.n_windows, self.window_tokens, c))?;
        let h = self
            .attention
            .forward(&h, self.n_windows)?
            .reshape((b, l, c))?;
        let x = match &self.to_windows {
            Some(w) if fused => kernels::add_gathered_rows(x, &h, &w.inverse)?,
            Some(w) => (x + h.index_select(&w.inverse_t, 1)?)?,
            None => (x + h)?,
        };
        let m = self.layernorm_after.forward(&x)?;
        let m = kernels::linear(&self.intermediate, &m, Epilogue::Act(Some(self.act)))?;
        kernels::linear(&self.output, &m, Epilogue::Residual(&x))
    }
}

/// `relative_position_index` of a `w×w` window: `(dy + w−1)·(2w−1) + (dx + w−1)`.
fn relative_position_index(w: usize) -> Vec<u32> {
    let n = w * w;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = (i / w, i % w);
        for j in 0..n {
            let (yj, xj) = (j / w, j % w);
            let dy = yi + w - 1 - yj;
            let dx = xi + w - 1 - xj;
            idx.push((dy * (2 * w - 1) + dx) as u32);
        }
    }
    idx
}

/// For each position of the windowed sequence (batch-major windows, then
/// window row, window column, then row-major inside the window), the token
/// of the *unshifted* map it reads. This is `window_partition(roll(x, −shift))`
/// as one gather; its inverse is `roll(window_reverse(·), +shift)`.
fn window_order(height: usize, width: usize, window: usize, shift: usize) -> Vec<u32> {
    let mut order = Vec::with_capacity(height * width);
    for wy in 0..height / window {
        for wx in 0..width / window {
            for iy in 0..window {
                for ix in 0..window {
                    let y = (wy * window + iy + shift) % height;
                    let x = (wx * window + ix + shift) % width;
                    order.push((y * width + x) as u32);
                }
            }
        }
    }
    order
}

/// The reference's shifted-window mask, `(nW, N, N)` flattened: 0 between
/// tokens of the same region of the rolled map, −100 otherwise.
fn shift_mask(height: usize, width: usize, window: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize, size: usize| -> usize {
        usize::from(i >= size - window) + usize::from(i >= size - shift)
    };
    let n = window * window;
    let mut mask = Vec::with_capacity(height * width / n * n * n);
    for wy in 0..height / window {
        for wx in 0..width / window {
            let labels: Vec<usize> = (0..n)
                .map(|t| {
                    let (y, x) = (wy * window + t / window, wx * window + t % window);
                    3 * region(y, height) + region(x, width)
                })
                .collect();
            for &li in &labels {
                for &lj in &labels {
                    mask.push(if li == lj { 0.0 } else { SHIFT_MASK_VALUE });
                }
            }
        }
    }
    mask
}

/// `ClapAudioPatchMerging`: 2×2 neighbours concatenated, normalised, reduced to 2C.
struct PatchMerging {
    norm: LayerNormF32,
    reduction: Linear,
    height: usize,
    width: usize,
}

impl PatchMerging {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let (h2, w2) = (self.height / 2, self.width / 2);
        // (B, H/2, r, W/2, c, C) → (B, H/2, W/2, c, r, C): the reference
        // concatenates [(r0,c0), (r1,c0), (r0,c1), (r1,c1)], row offset fastest.
        let x = x
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))?;
        kernels::linear(
            &self.reduction,
            &self.norm.forward(&x)?,
            Epilogue::Act(None),
        )
    }
}

struct Stage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
}

/// HTSAT encoder: mel spectrogram in, pooled `(B, num_features)` out
/// (transformers' `ClapAudioModel.pooler_output`).
pub struct ClapAudioEncoder {
    batch_norm: MelBatchNorm,
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    norm: LayerNormF32,
    freq_ratio: usize,
    spec_width: usize,
    num_mel_bins: usize,
    dtype: DType,
    device: Device,
    /// Bicubic time-resize matrices keyed by input frame count (1001 in practice).
    resize_cache: Mutex<Vec<(usize, Tensor)>>,
}

impl ClapAudioEncoder {
    /// Loads from `audio_model.audio_encoder`.
    pub fn load(cfg: &ClapAudioConfig, vb: VarBuilder) -> Result<Self> {
        let batch_norm = MelBatchNorm::load(cfg.num_mel_bins, vb.pp("batch_norm"))?;
        let patch_embed = PatchEmbed::load(cfg, vb.pp("patch_embed"))?;
        let grid = cfg.spec_size / cfg.patch_stride.0[0];
        let n_stages = cfg.depths.len();
        let mut stages = Vec::with_capacity(n_stages);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_attention_heads).enumerate() {
            let dim = cfg.patch_embeds_hidden_size << i;
            let res = (grid >> i, grid >> i);
            let svb = vb.pp("layers").pp(i);
            let blocks = (0..depth)
                .map(|j| {
                    let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                    SwinBlock::load(cfg, dim, res, heads, shift, svb.pp("blocks").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n_stages {
                if !res.0.is_multiple_of(2) || !res.1.is_multiple_of(2) {
                    candle_core::bail!("audio stage {i} resolution {res:?} cannot be merged 2x2");
                }
                let dvb = svb.pp("downsample");
                Some(PatchMerging {
                    norm: layer_norm_f32(4 * dim, TORCH_LAYER_NORM_EPS, dvb.pp("norm"))?,
                    reduction: linear_no_bias(4 * dim, 2 * dim, dvb.pp("reduction"))?,
                    height: res.0,
                    width: res.1,
                })
            } else {
                None
            };
            stages.push(Stage { blocks, downsample });
        }
        let num_features = cfg.patch_embeds_hidden_size << (n_stages - 1);
        let freq_ratio = cfg.spec_size / cfg.num_mel_bins;
        Ok(Self {
            batch_norm,
            patch_embed,
            stages,
            norm: layer_norm_f32(num_features, TORCH_LAYER_NORM_EPS, vb.pp("norm"))?,
            freq_ratio,
            spec_width: cfg.spec_size * freq_ratio,
            num_mel_bins: cfg.num_mel_bins,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            resize_cache: Mutex::new(Vec::new()),
        })
    }

    fn resize_matrix(&self, n_frames: usize) -> Result<Tensor> {
        let mut cache = self.resize_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = cache.iter().find(|(n, _)| *n == n_frames) {
            return Ok(m.clone());
        }
        let m = Tensor::from_vec(
            bicubic_align_corners_matrix(n_frames, self.spec_width),
            (self.spec_width, n_frames),
            &self.device,
        )?;
        cache.push((n_frames, m.clone()));
        Ok(m)
    }

    /// Normalised, resized and folded mel image `(B, C, S, S)` (`reshape_mel2img`).
    fn mel_to_image(&self, features: &Tensor) -> Result<Tensor> {
        let (b, c, t, f) = features.dims4()?;
        if f != self.num_mel_bins || t > self.spec_width {
            candle_core::bail!(
                "audio features are {t} frames × {f} mel bins; this model takes at most {} frames × {} bins",
                self.spec_width,
                self.num_mel_bins
            );
        }
        let x = self.batch_norm.forward(&features.to_dtype(DType::F32)?)?;
        let x = if t < self.spec_width {
            let m = self.resize_matrix(t)?;
            m.broadcast_matmul(&x.reshape((b * c, t, f))?)?
        } else {
            x.reshape((b * c, t, f))?
        };
        let r = self.freq_ratio;
        let t = self.spec_width;
        // img[b, c, q·F + f, τ] = mel[b, c, q·(T/r) + τ, f]
        x.reshape((b, c * r, t / r, f))?
            .permute((0, 1, 3, 2))?
            .reshape((b, c, f * r, t / r))
    }

    /// `features`: `(B, 1, T, n_mels)` log-mel in dB. Returns `(B, num_features)`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let img = self.mel_to_image(features)?.to_dtype(self.dtype)?;
        let mut x = self.patch_embed.forward(&img)?;
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(&x)?;
            }
            if let Some(merge) = &stage.downsample {
                x = merge.forward(&x)?;
            }
        }
        // The reference regroups tokens before an average pool over all of
        // them, which is the plain mean over tokens.
        self.norm.forward(&x)?.mean(1)
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// `ClapProjectionLayer`: `linear2(act(linear1(x)))`.
pub struct ClapProjection {
    linear1: Linear,
    linear2: Linear,
    act: Activation,
}

impl ClapProjection {
    pub fn load(in_dim: usize, out_dim: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear1: linear(in_dim, out_dim, vb.pp("linear1"))?,
            linear2: linear(out_dim, out_dim, vb.pp("linear2"))?,
            act,
        })
    }
}

impl Module for ClapProjection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = kernels::linear(&self.linear1, x, Epilogue::Act(Some(self.act)))?;
        kernels::linear(&self.linear2, &h, Epilogue::Act(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_identity_when_sizes_match() {
        let m = bicubic_align_corners_matrix(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn bicubic_rows_sum_to_one_and_hit_endpoints() {
        let (n_in, n_out) = (1001, 1024);
        let m = bicubic_align_corners_matrix(n_in, n_out);
        for i in 0..n_out {
            let s: f32 = m[i * n_in..(i + 1) * n_in].iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row {i} sums to {s}");
        }
        assert!((m[0] - 1.0).abs() < 1e-6);
        assert!((m[(n_out - 1) * n_in + n_in - 1] - 1.0).abs() < 1e-4);
    }

    #[test]
    fn window_order_is_a_permutation_and_roll_matches() {
        let (h, w, win, shift) = (16, 16, 8, 4);
        let order = window_order(h, w, win, shift);
        let mut seen = vec![false; h * w];
        for &o in &order {
            assert!(!seen[o as usize]);
            seen[o as usize] = true;
        }
        // First token of the first shifted window reads (4, 4) of the original map.
        assert_eq!(order[0], (4 * w + 4) as u32);
        // Last token of the last window wraps around to (3, 3).
        assert_eq!(*order.last().unwrap(), (3 * w + 3) as u32);
    }

    #[test]
    fn shift_mask_separates_wrapped_regions() {
        let (h, w, win, shift) = (16, 16, 8, 4);
        let n = win * win;
        let mask = shift_mask(h, w, win, shift);
        assert_eq!(mask.len(), 4 * n * n);
        // Window 0 holds one region only: no masking.
        assert!(mask[..n * n].iter().all(|&v| v == 0.0));
        // Window 3 (bottom right) mixes 4 regions: token 0 and token 63 differ.
        let w3 = &mask[3 * n * n..];
        assert_eq!(w3[n - 1], SHIFT_MASK_VALUE);
        assert_eq!(w3[0], 0.0);
    }

    #[test]
    fn relative_index_centre_and_corners() {
        let idx = relative_position_index(8);
        assert_eq!(idx[0], (7 * 15 + 7) as u32); // same token
        assert_eq!(idx[63], 0); // (0,0) vs (7,7): dy = dx = −7
        assert_eq!(idx[63 * 64], 224); // (7,7) vs (0,0)
    }
}
