//! HTSAT, CLAP's audio tower: a Swin transformer over the log-mel spectrogram
//! folded into a square image (transformers' `ClapAudioEncoder`).
//!
//! Weight names follow the HF `model.safetensors` under
//! `audio_model.audio_encoder.` and `audio_projection.`. Shapes (stage widths,
//! resolutions, windows) all come from [`ClapAudioConfig`].
//!
//! Two deliberate departures from the reference's *code* (not its numbers):
//! the shift/partition of shifted windows is one precomputed gather instead of
//! `roll` + `permute`, and the bicubic time resize is four precomputed taps an
//! output row (a sparse matrix, applied as a matmul off the CPU). Both are
//! exact rearrangements of the same sums.
//!
//! Loaded for f32 on the CPU, every layer keeps only its packed weights and
//! the towers run on [`crate::kernels`]: the LayerNorms and window orders
//! happen inside the matmuls, and each thread takes whole windows through a
//! Swin block (`forward_packed`, `by_windows`). Anywhere else, candle's ops.

use std::sync::Mutex;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;

use crate::config::{Activation, ClapAudioConfig};
use crate::kernels::attention::{self, ScoreBias, Sequences, SHIFT_MASK_VALUE};
use crate::kernels::sgemm::{self, Lhs, Residual, RowMap, Scatter};
use crate::kernels::{self, layer_norm_f32, uninit_vec, Dense, Epilogue, Kernels, LayerNormF32};

/// PyTorch's default `nn.LayerNorm` eps, used by the patch-embed, merge and final norms.
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;
/// BatchNorm eps of the mel normalisation.
const BATCH_NORM_EPS: f64 = 1e-5;

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
/// along one axis: for each of the `n_out` outputs, the first input it reads
/// and the weights of that input and the next three (inputs past either end
/// are clamped to it, as the reference does, so their weights add up there;
/// a weight is 0 where a row reads fewer than four inputs).
///
/// Source coordinates are computed in f32 as PyTorch does; with f64 they
/// differ by up to ~3e-4 on unit-variance input.
pub fn bicubic_align_corners_taps(n_in: usize, n_out: usize) -> Vec<(usize, [f32; 4])> {
    const A: f32 = -0.75;
    let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = if n_out > 1 {
        (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
    } else {
        0.0
    };
    let clamp = |j: i64| j.clamp(0, n_in as i64 - 1) as usize;
    (0..n_out)
        .map(|i| {
            let src = scale * i as f32;
            let i0 = src.floor();
            let t = src - i0;
            let weights = [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)];
            let first = clamp(i0 as i64 - 1);
            let mut taps = [0f32; 4];
            for (k, w) in weights.into_iter().enumerate() {
                taps[clamp(i0 as i64 + k as i64 - 1) - first] += w;
            }
            (first, taps)
        })
        .collect()
}

/// [`bicubic_align_corners_taps`] as an `(n_out, n_in)` matrix (candle's
/// path off the CPU applies it as a matmul).
pub fn bicubic_align_corners_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for (row, (first, taps)) in m
        .chunks_exact_mut(n_in)
        .zip(bicubic_align_corners_taps(n_in, n_out))
    {
        for (w, dst) in taps.into_iter().zip(&mut row[first..]) {
            *dst = w;
        }
    }
    m
}

/// Resizes one `(n_in, width)` map along its rows to `(taps.len(), width)`:
/// four products an output value where the matrix would take `n_in`.
fn resize_rows(taps: &[(usize, [f32; 4])], src: &[f32], width: usize, dst: &mut [f32]) {
    for (out, &(first, w)) in dst.chunks_exact_mut(width).zip(taps) {
        out.fill(0.0);
        for (k, &wk) in w.iter().enumerate() {
            // Taps past the input's end are 0 (a row clamped at the end reads
            // fewer than four inputs).
            let Some(row) = src.get((first + k) * width..(first + k + 1) * width) else {
                break;
            };
            for (o, &v) in out.iter_mut().zip(row) {
                *o += wk * v;
            }
        }
    }
}

/// Patch embedding plus its LayerNorm (`ClapAudioPatchEmbed`, unfused).
///
/// The reference's convolution has stride = kernel, so every patch is read
/// once: it is a reshape of the image into patch rows and one matmul with
/// the kernel as a `(C0, C_in·p·p)` matrix.
struct PatchEmbed {
    proj: Dense,
    patch: usize,
    in_channels: usize,
    norm: Option<LayerNormF32>,
}

impl PatchEmbed {
    fn load(cfg: &ClapAudioConfig, packed: bool, vb: VarBuilder) -> Result<Self> {
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
        let proj = Dense::new(Linear::new(weight, Some(pvb.get(c0, "bias")?)), packed)?;
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

    /// `(B, C_in, S, S)` → `(B·(S/p)², C_in·p·p)`: one row per patch, in
    /// the (C, kh, kw) order of the kernel's weights, tokens row-major.
    fn patches(&self, img: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = img.dims4()?;
        let p = self.patch;
        if cin != self.in_channels || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
            candle_core::bail!(
                "patch embedding: image {:?} with patches of {p}",
                img.dims()
            );
        }
        let (gh, gw) = (h / p, w / p);
        img.reshape((b, cin, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, cin * p * p))
    }

    /// `(B, C_in, S, S)` → `(B, (S/p)², C0)`.
    fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let x = self
            .proj
            .forward(&self.patches(img)?, Epilogue::Act(None))?;
        match &self.norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// As [`Self::forward`], on the CPU kernels: `(B·(S/p)², C0)` values.
    fn forward_packed(&self, img: &Tensor) -> Result<Vec<f32>> {
        let patches = self.patches(img)?;
        let (b, l, k) = patches.dims3()?;
        let values = patches.flatten_all()?.to_vec1::<f32>()?;
        let mut x = self
            .proj
            .gemm_new(&Lhs::rows(&values, k), b * l, Default::default())?;
        if let Some(norm) = &self.norm {
            norm.apply(&mut x);
        }
        Ok(x)
    }
}

/// Window self-attention with relative position bias (`ClapAudioAttention` +
/// `ClapAudioSelfOutput`). q, k and v are one projection (their weights
/// concatenated at load), so one matmul reads the tokens once.
struct WindowAttention {
    qkv: Dense,
    output: Dense,
    num_heads: usize,
    head_dim: usize,
    bias: WindowBias,
}

/// The additive attention bias of a block's windows.
enum WindowBias {
    /// candle's path: relative position bias plus the shift mask,
    /// `(1, nW or 1, heads, N, N)`.
    Tensor(Tensor),
    /// The CPU kernels' path: the relative position bias `(heads, N, N)`
    /// and, for shifted windows, each token's region `(nW, N)`.
    Table {
        table: Vec<f32>,
        labels: Option<Vec<u8>>,
    },
}

impl WindowAttention {
    /// `x`: `(B·nW, N, C)` windows in batch-major order (candle's path).
    fn forward(&self, x: &Tensor, n_windows: usize) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let WindowBias::Tensor(bias) = &self.bias else {
            candle_core::bail!("window attention: packed weights on candle's path");
        };
        let qkv = self.qkv.forward(x, Epilogue::Act(None))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
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
            .broadcast_add(bias)?
            .reshape((bw, self.num_heads, n, n))?;
        let probs = kernels::softmax_f32(&scores)?;
        let ctx = kernels::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((bw, n, c))?;
        self.output.forward(&ctx, Epilogue::Act(None))
    }

    /// Attention of `qkv` (rows of 3C for `windows` windows of `n` tokens,
    /// window-ordered) into rows of C (the CPU kernels' path).
    fn attend(&self, qkv: &[f32], windows: usize, n: usize, n_windows: usize) -> Result<Vec<f32>> {
        let WindowBias::Table { table, labels } = &self.bias else {
            candle_core::bail!("window attention: candle weights on the CPU kernels' path");
        };
        let c = self.num_heads * self.head_dim;
        let mut ctx = uninit_vec(windows * n * c);
        let nn = n * n;
        attention::attention(
            qkv,
            c,
            self.num_heads,
            1.0 / (self.head_dim as f32).sqrt(),
            Sequences::Uniform {
                count: windows,
                len: n,
            },
            |s, h| ScoreBias::Table {
                table: &table[h * nn..(h + 1) * nn],
                labels: labels.as_deref().map(|l| {
                    let w = s % n_windows;
                    &l[w * n..(w + 1) * n]
                }),
            },
            &mut ctx,
        )?;
        Ok(ctx)
    }
}

/// The gather from token order to (shifted) window order and its inverse.
enum WindowOrder {
    /// As tensors for candle's `index_select`.
    Tensors { order: Tensor, inverse: Tensor },
    /// As indices for the CPU kernels (the matmuls read and write through it).
    Indices(Vec<u32>),
}

/// One Swin block (`ClapAudioLayer`) at a fixed resolution.
struct SwinBlock {
    layernorm_before: LayerNormF32,
    attention: WindowAttention,
    layernorm_after: LayerNormF32,
    intermediate: Dense,
    output: Dense,
    act: Activation,
    /// Token order → (shifted) window order; and back.
    to_windows: Option<WindowOrder>,
    n_windows: usize,
    window_tokens: usize,
    /// Tokens of the map (H·W) and their width.
    tokens: usize,
    dim: usize,
}

impl SwinBlock {
    #[allow(clippy::too_many_arguments)]
    fn load(
        cfg: &ClapAudioConfig,
        dim: usize,
        (height, width): (usize, usize),
        num_heads: usize,
        shift_requested: usize,
        packed: bool,
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
        let labels = (shift > 0).then(|| shift_labels(height, width, window, shift));
        let bias = if packed {
            WindowBias::Table {
                table: rel_bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                labels,
            }
        } else if let Some(labels) = labels {
            let mask = Tensor::from_vec(shift_mask(&labels, n), (n_windows, 1, n, n), &device)?
                .to_dtype(rel_bias.dtype())?;
            // (1, nW, heads, N, N)
            WindowBias::Tensor(rel_bias.unsqueeze(0)?.broadcast_add(&mask)?.unsqueeze(0)?)
        } else {
            WindowBias::Tensor(rel_bias.unsqueeze(0)?.unsqueeze(0)?) // (1, 1, heads, N, N)
        };

        let attention = WindowAttention {
            qkv: Dense::new(
                kernels::fused_qkv(&att.pp("self"), dim, dim, cfg.qkv_bias)?,
                packed,
            )?,
            output: Dense::load(att.pp("output").pp("dense"), dim, dim, true, packed)?,
            num_heads,
            head_dim,
            bias,
        };
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        let to_windows = if n_windows > 1 || shift > 0 {
            let order = window_order(height, width, window, shift);
            Some(if packed {
                WindowOrder::Indices(order)
            } else {
                let mut inverse = vec![0u32; order.len()];
                for (p, &q) in order.iter().enumerate() {
                    inverse[q as usize] = p as u32;
                }
                let len = order.len();
                WindowOrder::Tensors {
                    order: Tensor::from_vec(order, len, &device)?,
                    inverse: Tensor::from_vec(inverse, len, &device)?,
                }
            })
        } else {
            None
        };
        Ok(Self {
            layernorm_before: layer_norm_f32(dim, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            attention,
            layernorm_after: layer_norm_f32(dim, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            intermediate: Dense::load(
                vb.pp("intermediate").pp("dense"),
                dim,
                hidden,
                true,
                packed,
            )?,
            output: Dense::load(vb.pp("output").pp("dense"), hidden, dim, true, packed)?,
            act: cfg.hidden_act,
            to_windows,
            n_windows,
            window_tokens: n,
            tokens: height * width,
            dim,
        })
    }

    /// `x`: `(B, H·W, C)` (candle's path).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let h = self.layernorm_before.forward(x)?;
        let h = match &self.to_windows {
            Some(WindowOrder::Tensors { order, .. }) => h.index_select(order, 1)?,
            Some(WindowOrder::Indices(_)) => {
                candle_core::bail!("swin block: packed weights on candle's path")
            }
            None => h,
        };
        let h = h.reshape((b * self.n_windows, self.window_tokens, c))?;
        let h = self
            .attention
            .forward(&h, self.n_windows)?
            .reshape((b, l, c))?;
        let x = match &self.to_windows {
            Some(WindowOrder::Tensors { inverse, .. }) => (x + h.index_select(inverse, 1)?)?,
            _ => (x + h)?,
        };
        let m = self.layernorm_after.forward(&x)?;
        let m = self
            .intermediate
            .forward(&m, Epilogue::Act(Some(self.act)))?;
        self.output.forward(&m, Epilogue::Residual(&x))
    }

    /// The block on the CPU kernels: `x` holds `b` maps of `(H·W, C)`.
    ///
    /// Four matmuls and the attention, nothing else: the LayerNorm and the
    /// gather into (shifted) window order happen as the qkv matmul reads
    /// `x`; the reverse order and the residual as the output projection
    /// writes; the second LayerNorm as the MLP reads; its GELU and the last
    /// residual as it writes. With windows enough for every thread, each
    /// thread takes whole windows through the block ([`Self::by_windows`]);
    /// otherwise each step is split over the threads.
    fn forward_packed(&self, x: &[f32], b: usize) -> Result<Vec<f32>> {
        let (l, c) = (self.tokens, self.dim);
        let m = b * l;
        let order = match &self.to_windows {
            Some(WindowOrder::Indices(order)) => Some(order.as_slice()),
            Some(WindowOrder::Tensors { .. }) => {
                candle_core::bail!("swin block: candle weights on the CPU kernels' path")
            }
            None => None,
        };
        if x.len() != m * c {
            candle_core::bail!("swin block: {} values for {b} maps of {l} × {c}", x.len());
        }
        let threads = rayon::current_num_threads();
        if threads > 1 && b * self.n_windows >= 2 * threads {
            return self.by_windows(x, b, order);
        }
        let windowed = match order {
            Some(index) => Lhs::rows(x, c).gathered(RowMap::Gather {
                index,
                parts: 1,
                period: l,
                src_period: l,
            }),
            None => Lhs::rows(x, c),
        };
        let qkv = self.attention.qkv.gemm_new(
            &windowed.normed(self.layernorm_before.rows()),
            m,
            Default::default(),
        )?;
        let ctx =
            self.attention
                .attend(&qkv, b * self.n_windows, self.window_tokens, self.n_windows)?;
        let scatter = order.map(|index| Scatter { index, period: l });
        drop(qkv);
        let x = self.attention.output.gemm_new(
            &Lhs::rows(&ctx, c),
            m,
            sgemm::Epilogue {
                residual: Some(Residual {
                    values: x,
                    rows: scatter,
                }),
                scatter,
                ..Default::default()
            },
        )?;
        drop(ctx);
        let hidden = self.intermediate.gemm_new(
            &Lhs::rows(&x, c).normed(self.layernorm_after.rows()),
            m,
            sgemm::Epilogue {
                act: Some(self.act),
                ..Default::default()
            },
        )?;
        self.output.gemm_new(
            &Lhs::rows(&hidden, hidden.len() / m),
            m,
            sgemm::Epilogue {
                residual: Some(Residual::rows(&x)),
                ..Default::default()
            },
        )
    }
}

/// A thread's buffers for [`SwinBlock::by_windows`], kept between calls.
#[derive(Default)]
struct WindowScratch {
    tokens: Vec<u32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    x: Vec<f32>,
    hidden: Vec<f32>,
}

thread_local! {
    static WINDOW_SCRATCH: std::cell::RefCell<WindowScratch> = Default::default();
}

/// The output buffer shared by the threads of [`SwinBlock::by_windows`].
struct SharedOut(*mut f32);
// SAFETY: each thread writes the rows of its own windows' tokens only.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Sizes `v` to `n` values without initialising new ones: every caller
/// writes all `n` before reading.
fn resize_for_overwrite(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        *v = uninit_vec(n);
    }
}

impl SwinBlock {
    /// The block one group of windows at a time, each group whole on one
    /// thread: its rows go from the qkv matmul through the attention, the
    /// output projection and the MLP in that thread's caches, and only
    /// the block's input and output touch memory (the step-by-step path
    /// writes and reads back q/k/v, the attention and the 4C-wide hidden
    /// layer of every token, and waits for all threads at every step).
    fn by_windows(&self, x: &[f32], b: usize, order: Option<&[u32]>) -> Result<Vec<f32>> {
        let (l, c, n) = (self.tokens, self.dim, self.window_tokens);
        let m = b * l;
        let windows = b * self.n_windows;
        let threads = rayon::current_num_threads();
        // About `group_rows()` rows a group, at least one group a thread.
        // Fewer, larger groups read the weights fewer times: at batch 1 the
        // third stage's 4 windows go as 2 groups of 2, each thread reading
        // the block's 12.6 MB of weights once instead of twice (2 % faster
        // on a 2-core Xeon, measured interleaved).
        let per_group = (group_rows() / n).clamp(1, (windows / threads).max(1));
        let groups = windows.div_ceil(per_group);
        let hidden = self.intermediate.out_dim()?;
        let mut out = uninit_vec(m * c);
        let shared = SharedOut(out.as_mut_ptr());
        let WindowBias::Table { table, labels } = &self.attention.bias else {
            candle_core::bail!("window attention: candle weights on the CPU kernels' path");
        };
        let (heads, head_dim) = (self.attention.num_heads, self.attention.head_dim);
        let nn = n * n;
        (0..groups)
            .into_par_iter()
            .try_for_each(|g| -> Result<()> {
                let w0 = g * per_group;
                let count = per_group.min(windows - w0);
                let rows = count * n;
                WINDOW_SCRATCH.with(|s| -> Result<()> {
                    let s = &mut *s.borrow_mut();
                    // The token each window-ordered row of the group reads.
                    s.tokens.clear();
                    s.tokens.extend((w0 * n..w0 * n + rows).map(|r| {
                        let (map, at) = (r / l, r % l);
                        (map * l + order.map_or(at, |o| o[at] as usize)) as u32
                    }));
                    let tokens = s.tokens.as_slice();
                    resize_for_overwrite(&mut s.qkv, rows * 3 * c);
                    resize_for_overwrite(&mut s.ctx, rows * c);
                    resize_for_overwrite(&mut s.x, rows * c);
                    resize_for_overwrite(&mut s.hidden, rows * hidden);
                    let (qkv, ctx) = (&mut s.qkv[..rows * 3 * c], &mut s.ctx[..rows * c]);
                    let (xg, hid) = (&mut s.x[..rows * c], &mut s.hidden[..rows * hidden]);
                    let lhs = Lhs::rows(x, c)
                        .gathered(RowMap::list(tokens))
                        .normed(self.layernorm_before.rows());
                    // SAFETY (all gemm_serial calls): the outputs are this
                    // thread's buffers, except the last, which writes the rows
                    // of this group's tokens; windows partition the tokens
                    // (`order` is a permutation), so no other group writes them.
                    unsafe {
                        let qkv_len = qkv.len();
                        self.attention.qkv.gemm_serial(
                            &lhs,
                            rows,
                            Default::default(),
                            qkv.as_mut_ptr(),
                            qkv_len,
                        )?;
                    }
                    attention::attention_serial(
                        qkv,
                        c,
                        heads,
                        1.0 / (head_dim as f32).sqrt(),
                        Sequences::Uniform { count, len: n },
                        |sq, h| ScoreBias::Table {
                            table: &table[h * nn..(h + 1) * nn],
                            labels: labels.as_deref().map(|lab| {
                                let w = (w0 + sq) % self.n_windows;
                                &lab[w * n..(w + 1) * n]
                            }),
                        },
                        ctx,
                    )?;
                    unsafe {
                        let xg_len = xg.len();
                        self.attention.output.gemm_serial(
                            &Lhs::rows(ctx, c),
                            rows,
                            sgemm::Epilogue {
                                residual: Some(Residual {
                                    values: x,
                                    rows: Some(Scatter::list(tokens)),
                                }),
                                ..Default::default()
                            },
                            xg.as_mut_ptr(),
                            xg_len,
                        )?;
                        let hid_len = hid.len();
                        self.intermediate.gemm_serial(
                            &Lhs::rows(xg, c).normed(self.layernorm_after.rows()),
                            rows,
                            sgemm::Epilogue {
                                act: Some(self.act),
                                ..Default::default()
                            },
                            hid.as_mut_ptr(),
                            hid_len,
                        )?;
                        self.output.gemm_serial(
                            &Lhs::rows(hid, hidden),
                            rows,
                            sgemm::Epilogue {
                                residual: Some(Residual::rows(xg)),
                                scatter: Some(Scatter::list(tokens)),
                                ..Default::default()
                            },
                            shared.ptr(),
                            m * c,
                        )
                    }
                })
            })?;
        Ok(out)
    }
}

/// Rows a Swin block's window group aims at. A group's buffers (q/k/v,
/// the attention, the 4C-wide hidden layer: ~9C floats a row) stay near
/// the core's L2 while the weights stream past: 256 rows with an L2 of
/// 1 MB or more (2 MB on the Sapphire Rapids Xeon), 128 with less. On a
/// Zen 3 EPYC (512 KB) 128 rows ran the audio tower at batch 8 faster
/// than 256 in 10 of 10 interleaved rounds (mostly 2–5 %), 64 and 192 no
/// faster than 128, and batch 1 alike.
fn group_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| match crate::kernels::l2_cache_bytes() {
        Some(bytes) if bytes < 1 << 20 => 128,
        _ => 256,
    })
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

/// Each token's region of the rolled map, window by window: `(nW, N)`.
/// The reference masks attention between tokens of different regions.
fn shift_labels(height: usize, width: usize, window: usize, shift: usize) -> Vec<u8> {
    let region = |i: usize, size: usize| -> u8 {
        u8::from(i >= size - window) + u8::from(i >= size - shift)
    };
    let n = window * window;
    let mut labels = Vec::with_capacity(height * width);
    for wy in 0..height / window {
        for wx in 0..width / window {
            labels.extend((0..n).map(|t| {
                let (y, x) = (wy * window + t / window, wx * window + t % window);
                3 * region(y, height) + region(x, width)
            }));
        }
    }
    labels
}

/// The reference's shifted-window mask from the labels, `(nW, N, N)`
/// flattened: 0 between tokens of the same region, −100 otherwise.
fn shift_mask(labels: &[u8], n: usize) -> Vec<f32> {
    let mut mask = Vec::with_capacity(labels.len() * n);
    for w in labels.chunks_exact(n) {
        for &li in w {
            mask.extend(
                w.iter()
                    .map(|&lj| if li == lj { 0.0 } else { SHIFT_MASK_VALUE }),
            );
        }
    }
    mask
}

/// `ClapAudioPatchMerging`: 2×2 neighbours concatenated, normalised, reduced to 2C.
struct PatchMerging {
    norm: LayerNormF32,
    reduction: Dense,
    height: usize,
    width: usize,
    dim: usize,
    /// For each merged token, its four source tokens in the reference's
    /// order (the CPU kernels' gather).
    sources: Vec<u32>,
}

impl PatchMerging {
    fn new(
        norm: LayerNormF32,
        reduction: Dense,
        (height, width): (usize, usize),
        dim: usize,
    ) -> Self {
        let (h2, w2) = (height / 2, width / 2);
        // The reference concatenates [(r0,c0), (r1,c0), (r0,c1), (r1,c1)].
        let sources = (0..h2 * w2)
            .flat_map(|t| {
                let (y, x) = (2 * (t / w2), 2 * (t % w2));
                [(y, x), (y + 1, x), (y, x + 1), (y + 1, x + 1)]
                    .map(|(yy, xx)| (yy * width + xx) as u32)
            })
            .collect();
        Self {
            norm,
            reduction,
            height,
            width,
            dim,
            sources,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let (h2, w2) = (self.height / 2, self.width / 2);
        // (B, H/2, r, W/2, c, C) → (B, H/2, W/2, c, r, C): the reference
        // concatenates [(r0,c0), (r1,c0), (r0,c1), (r1,c1)], row offset fastest.
        let x = x
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))?;
        self.reduction
            .forward(&self.norm.forward(&x)?, Epilogue::Act(None))
    }

    /// The merge on the CPU kernels: the 2×2 gather and the LayerNorm
    /// happen as the reduction's matmul reads `x` (`b` maps of `(H·W, C)`).
    fn forward_packed(&self, x: &[f32], b: usize) -> Result<Vec<f32>> {
        let l = self.height * self.width;
        let lhs = Lhs::rows(x, self.dim)
            .gathered(RowMap::Gather {
                index: &self.sources,
                parts: 4,
                period: l / 4,
                src_period: l,
            })
            .normed(self.norm.rows());
        self.reduction.gemm_new(&lhs, b * l / 4, Default::default())
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
    /// Whether the layers are packed for the CPU kernels.
    packed: bool,
}

impl ClapAudioEncoder {
    /// Loads from `audio_model.audio_encoder`.
    pub fn load(cfg: &ClapAudioConfig, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let packed = kernels.packed(vb.device(), vb.dtype());
        let batch_norm = MelBatchNorm::load(cfg.num_mel_bins, vb.pp("batch_norm"))?;
        let patch_embed = PatchEmbed::load(cfg, packed, vb.pp("patch_embed"))?;
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
                    SwinBlock::load(cfg, dim, res, heads, shift, packed, svb.pp("blocks").pp(j))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n_stages {
                if !res.0.is_multiple_of(2) || !res.1.is_multiple_of(2) {
                    candle_core::bail!("audio stage {i} resolution {res:?} cannot be merged 2x2");
                }
                let dvb = svb.pp("downsample");
                Some(PatchMerging::new(
                    layer_norm_f32(4 * dim, TORCH_LAYER_NORM_EPS, dvb.pp("norm"))?,
                    Dense::load(dvb.pp("reduction"), 4 * dim, 2 * dim, false, packed)?,
                    res,
                    dim,
                ))
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
            packed,
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
        let x = if t < self.spec_width && x.device().is_cpu() {
            // Four taps a row, not a dense (1024 × 1001) matmul: the same sums
            // without ~0.13 GFLOP of zeros a clip. (The BatchNorm's output is
            // f32 whatever the model's dtype.)
            let values = x.flatten_all()?.to_vec1::<f32>()?;
            let taps = bicubic_align_corners_taps(t, self.spec_width);
            let mut resized = vec![0f32; b * c * self.spec_width * f];
            resized
                .par_chunks_mut(self.spec_width * f)
                .zip(values.par_chunks(t * f))
                .for_each(|(dst, src)| resize_rows(&taps, src, f, dst));
            Tensor::from_vec(resized, (b * c, self.spec_width, f), x.device())?
        } else if t < self.spec_width {
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
        if self.packed {
            return self.forward_packed(&img);
        }
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

    /// [`Self::forward`] on the CPU kernels, from the image on.
    fn forward_packed(&self, img: &Tensor) -> Result<Tensor> {
        let b = img.dim(0)?;
        let mut x = self.patch_embed.forward_packed(img)?;
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward_packed(&x, b)?;
            }
            if let Some(merge) = &stage.downsample {
                x = merge.forward_packed(&x, b)?;
            }
        }
        self.norm.apply(&mut x);
        let width = self.norm.rows().gamma.len();
        let tokens = x.len() / (b * width);
        let mut pooled = vec![0f32; b * width];
        pooled
            .par_chunks_mut(width)
            .zip(x.par_chunks(tokens * width))
            .for_each(|(mean, map)| {
                for row in map.chunks_exact(width) {
                    kernels::simd::add(mean, row);
                }
                let inv = 1.0 / tokens as f32;
                mean.iter_mut().for_each(|v| *v *= inv);
            });
        Tensor::from_vec(pooled, (b, width), &self.device)
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// `ClapProjectionLayer`: `linear2(act(linear1(x)))`.
pub struct ClapProjection {
    linear1: Dense,
    linear2: Dense,
    act: Activation,
}

impl ClapProjection {
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        act: Activation,
        kernels: Kernels,
        vb: VarBuilder,
    ) -> Result<Self> {
        let packed = kernels.packed(vb.device(), vb.dtype());
        Ok(Self {
            linear1: Dense::load(vb.pp("linear1"), in_dim, out_dim, true, packed)?,
            linear2: Dense::load(vb.pp("linear2"), out_dim, out_dim, true, packed)?,
            act,
        })
    }
}

impl Module for ClapProjection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.linear1.forward(x, Epilogue::Act(Some(self.act)))?;
        self.linear2.forward(&h, Epilogue::Act(None))
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

    /// PyTorch's bicubic (align_corners) weights as a dense matrix, written
    /// out directly: each output adds its four cubic weights at the clamped
    /// source indices.
    fn dense_bicubic(n_in: usize, n_out: usize) -> Vec<f32> {
        const A: f32 = -0.75;
        let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        let scale = (n_in as f32 - 1.0) / (n_out as f32 - 1.0);
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

    /// The four-tap resize gives the dense product's values (up to the
    /// order of the sum's terms), with rows clamped at both ends.
    #[test]
    fn bicubic_taps_resize_as_the_matrix_does() {
        for (n_in, n_out) in [(1001, 1024), (5, 9), (1, 4), (2, 7), (500, 1024), (4, 4)] {
            let width = 3;
            let src: Vec<f32> = (0..n_in * width)
                .map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0)
                .collect();
            let m = dense_bicubic(n_in, n_out);
            assert_eq!(m, bicubic_align_corners_matrix(n_in, n_out));
            let mut got = vec![f32::NAN; n_out * width];
            resize_rows(
                &bicubic_align_corners_taps(n_in, n_out),
                &src,
                width,
                &mut got,
            );
            for i in 0..n_out {
                for col in 0..width {
                    let want: f64 = (0..n_in)
                        .map(|j| f64::from(m[i * n_in + j]) * f64::from(src[j * width + col]))
                        .sum();
                    let g = got[i * width + col];
                    assert!(
                        (f64::from(g) - want).abs() < 1e-5,
                        "{n_in} -> {n_out}, row {i} col {col}: {g} against {want}"
                    );
                }
            }
        }
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
        let mask = shift_mask(&shift_labels(h, w, win, shift), win * win);
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
