//! Fused f32 kernels for the CPU.
//!
//! candle runs a model as one op per pass over memory: a linear layer is a
//! matmul, then a bias add, then an activation, each writing a new tensor; an
//! attention is a dozen ops over `(windows, heads, N, N)` tensors and two
//! thousand tiny matmuls. On a CPU the passes and the idle cores between them
//! cost as much as the matmuls themselves. The kernels here do the same
//! arithmetic in fewer passes, on every core:
//!
//! - [`linear`]: the matmul (candle's, i.e. `gemm`), then bias, activation and
//!   residual in one parallel pass over the output, in place;
//! - [`attention`]: q·kᵀ·scale + bias, softmax and ·v for every (window or
//!   sequence, head), one task per window, its scores in cache, reading q, k
//!   and v straight from the fused qkv projection and writing heads merged;
//! - [`gather_rows`] / [`add_gathered_rows`]: the shifted-window partition and
//!   its reverse plus the residual, as parallel row copies.
//!
//! They are taken for f32 tensors on the CPU. Any other device or dtype, or a
//! thread inside [`with_generic_kernels`], runs candle's ops: the reference the
//! fused kernels are tested against (`tests/kernels.rs`). `exp` and `erf` here
//! are polynomial approximations (`exp`: relative error < 2e-7; `erf`: absolute
//! error < 6e-7, the formula PyTorch's vectorised CPU `erf` uses) so that
//! they vectorise.

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, InplaceOp2, InplaceOp3, Layout, Module, Result,
    Shape, Tensor,
};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

use crate::config::Activation;

thread_local! {
    static GENERIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the fused CPU kernels off on this thread: the model then
/// takes candle's generic ops, as it does on other devices and dtypes.
pub fn with_generic_kernels<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC.with(|g| g.replace(true)));
    f()
}

/// Whether `x` takes the fused kernels.
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !GENERIC.with(Cell::get)
}

/// A LayerNorm computed in f32 whatever the model's dtype: bf16 and f16 keep
/// their matmuls, but a mean and variance over 128–3072 values need more
/// than their 8 or 11 bits of mantissa (as transformers' autocast does).
pub(crate) struct LayerNormF32(LayerNorm);

/// Loads `weight` and `bias` of a LayerNorm of `size` as f32.
pub(crate) fn layer_norm_f32(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNormF32> {
    let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
    let bias = vb.get(size, "bias")?.to_dtype(DType::F32)?;
    Ok(LayerNormF32(LayerNorm::new(weight, bias, eps)))
}

impl Module for LayerNormF32 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match x.dtype() {
            DType::F32 => self.0.forward(x),
            dtype => self.0.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype),
        }
    }
}

/// Softmax over the last axis in f32, returned in `x`'s dtype.
pub(crate) fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => candle_nn::ops::softmax_last_dim(x),
        dtype => candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype),
    }
}

/// q, k and v projections (`{query,key,value}` under `vb`) as one
/// `(3·dim, dim_in)` linear layer: one matmul reads the tokens once.
pub(crate) fn fused_qkv(vb: &VarBuilder, dim_in: usize, dim: usize, bias: bool) -> Result<Linear> {
    let cat = |shape: &[usize], name: &str| -> Result<Tensor> {
        let parts = ["query", "key", "value"]
            .iter()
            .map(|p| vb.pp(p).get(shape, name))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    };
    let bias = if bias {
        Some(cat(&[dim], "bias")?)
    } else {
        None
    };
    Ok(Linear::new(cat(&[dim, dim_in], "weight")?, bias))
}

/// What follows the matmul of a [`linear`] layer.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `act(x·Wᵀ + b)`.
    Act(Option<Activation>),
    /// `x·Wᵀ + b + residual`.
    Residual(&'a Tensor),
}

/// `a·b` (batched), as candle's `matmul` — except bf16 on the CPU, which
/// candle's CPU matmul lacks: there the product runs in f32 on the bf16
/// values and is rounded back, which is what a GPU's bf16 GEMM does (bf16
/// inputs, f32 accumulation, bf16 output). This is what lets the bf16 parity
/// tests run here.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::BF16 && a.device().is_cpu() {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return f(a)?.matmul(&f(b)?)?.to_dtype(DType::BF16);
    }
    a.matmul(b)
}

/// `x` `(…, in)` as `(rows, in)`, and the shape `(…, out)` of `x·Wᵀ`.
fn as_rows(x: &Tensor, w: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let k = x.dim(candle_core::D::Minus1)?;
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("x has a last axis") = w.dim(0)?;
    let rows = x.contiguous()?.reshape((x.elem_count() / k.max(1), k))?;
    Ok((rows, out_dims))
}

/// candle's `Linear::forward` through [`matmul`].
fn linear_generic(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::BF16 || !x.device().is_cpu() {
        return layer.forward(x);
    }
    let (x2, out_dims) = as_rows(x, layer.weight())?;
    let y = matmul(&x2, &layer.weight().t()?)?;
    let y = match layer.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    y.reshape(out_dims)
}

/// `x·Wᵀ + b`, then the epilogue. `x`: `(…, in)`.
pub(crate) fn linear(layer: &Linear, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    if !fused(x) || layer.bias().is_none() {
        let y = linear_generic(layer, x)?;
        return match epilogue {
            Epilogue::Act(None) => Ok(y),
            Epilogue::Act(Some(act)) => act.forward(&y),
            Epilogue::Residual(r) => y + r,
        };
    }
    let w = layer.weight();
    let bias = layer.bias().expect("checked above");
    let (x2, out_dims) = as_rows(x, w)?;
    let y = if x2.dim(0)? <= skinny::MAX_ROWS && skinny::available() {
        x2.apply_op2_no_bwd(&w.contiguous()?, &skinny::SkinnyMatmul)?
    } else {
        // One (rows, in) × (in, out) gemm: candle reads Wᵀ through its strides.
        x2.matmul(&w.t()?)?
    };
    match epilogue {
        Epilogue::Act(act) => y.inplace_op2(bias, &BiasAct(act))?,
        Epilogue::Residual(r) => {
            let r = r.contiguous()?.reshape(y.shape())?;
            y.inplace_op3(bias, &r, &BiasResidual)?
        }
    }
    y.reshape(out_dims)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{what}: tensor is not contiguous"),
        _ => bail!("{what}: expected f32"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{what}: tensor is not contiguous"),
        _ => bail!("{what}: expected f32"),
    }
}

/// Rows per parallel task: about 32k values, at least one row.
fn rows_per_task(row: usize) -> usize {
    (32_768 / row.max(1)).max(1)
}

struct BiasAct(Option<Activation>);

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "clap-bias-act"
    }

    fn cpu_fwd(&self, y: &mut CpuStorage, yl: &Layout, b: &CpuStorage, bl: &Layout) -> Result<()> {
        let y = slice_mut(y, yl, self.name())?;
        let b = slice(b, bl, self.name())?;
        let n = b.len();
        if n == 0 || !y.len().is_multiple_of(n) {
            bail!("{}: {} values are not rows of {n}", self.name(), y.len());
        }
        let act = self.0;
        y.par_chunks_mut(rows_per_task(n) * n).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(n) {
                simd::bias_act(row, b, act);
            }
        });
        Ok(())
    }
}

struct BiasResidual;

impl InplaceOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "clap-bias-residual"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        yl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
    ) -> Result<()> {
        let y = slice_mut(y, yl, self.name())?;
        let b = slice(b, bl, self.name())?;
        let r = slice(r, rl, self.name())?;
        let n = b.len();
        if n == 0 || !y.len().is_multiple_of(n) || r.len() != y.len() {
            bail!("{}: shapes do not match", self.name());
        }
        let chunk = rows_per_task(n) * n;
        y.par_chunks_mut(chunk)
            .zip(r.par_chunks(chunk))
            .for_each(|(yc, rc)| {
                for (row, res) in yc.chunks_exact_mut(n).zip(rc.chunks_exact(n)) {
                    simd::bias_residual(row, b, res);
                }
            });
        Ok(())
    }
}

/// How the additive attention bias is laid out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttentionBias {
    /// `(n_bias, heads, N, N)`: sequence `s` takes bias `s % n_bias`
    /// (Swin windows, batch-major; `n_bias` 1 for unshifted blocks).
    PerWindow { n_bias: usize },
    /// `(B, N)`: one value per key of each sequence (a padding mask).
    PerKey,
}

/// Multi-head self-attention over `qkv`: `(S, N, 3C)` holding q, k, v of
/// each token side by side (heads contiguous inside each). Returns `(S, N, C)`
/// with heads merged: `softmax(q·kᵀ·scale + bias)·v`.
pub(crate) fn attention(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f64,
    layout: AttentionBias,
) -> Result<Tensor> {
    let qkv = qkv.contiguous()?;
    let bias = bias.contiguous()?;
    qkv.apply_op2_no_bwd(
        &bias,
        &AttentionOp {
            heads,
            scale: scale as f32,
            layout,
        },
    )
}

struct AttentionOp {
    heads: usize,
    scale: f32,
    layout: AttentionBias,
}

impl CustomOp2 for AttentionOp {
    fn name(&self) -> &'static str {
        "clap-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        ql: &Layout,
        bias: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, n, c3) = ql.shape().dims3()?;
        let qkv = slice(qkv, ql, self.name())?;
        let bias = slice(bias, bl, self.name())?;
        let heads = self.heads;
        if !c3.is_multiple_of(3 * heads) {
            bail!("{}: width {c3} is not 3 × {heads} heads", self.name());
        }
        let c = c3 / 3;
        let d = c / heads;
        let bias_len = match self.layout {
            AttentionBias::PerWindow { n_bias } => {
                if n_bias == 0 || !s.is_multiple_of(n_bias) {
                    bail!("{}: {s} windows, {n_bias} biases", self.name());
                }
                n_bias * heads * n * n
            }
            AttentionBias::PerKey => s * n,
        };
        if bias.len() != bias_len {
            bail!(
                "{}: bias has {} values, expected {bias_len} ({:?})",
                self.name(),
                bias.len(),
                self.layout
            );
        }
        // Every value is written: each head's columns by its second gemm.
        let mut out = uninit_vec(s * n * c);
        let scale = self.scale;
        let layout = self.layout;
        out.par_chunks_mut(n * c).enumerate().for_each_init(
            || vec![0f32; n * n],
            |scores, (seq, o)| {
                let x = &qkv[seq * n * c3..(seq + 1) * n * c3];
                for h in 0..heads {
                    match layout {
                        AttentionBias::PerWindow { n_bias } => {
                            let at = ((seq % n_bias) * heads + h) * n * n;
                            scores.copy_from_slice(&bias[at..at + n * n]);
                        }
                        AttentionBias::PerKey => {
                            let keys = &bias[seq * n..(seq + 1) * n];
                            for row in scores.chunks_exact_mut(n) {
                                row.copy_from_slice(keys);
                            }
                        }
                    }
                    head_attention(x, o, scores, n, c, d, h, scale);
                }
            },
        );
        Ok((CpuStorage::F32(out), (s, n, c).into()))
    }
}

/// Self-attention of sequences packed one after another with their padding
/// removed: `qkv` is `(1, T, 3C)` holding sequences of `lens` tokens, each
/// attending to itself (no bias). Returns `(1, T, C)`.
pub(crate) fn packed_attention(
    qkv: &Tensor,
    lens: &Arc<[usize]>,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&PackedAttentionOp {
        lens: lens.clone(),
        heads,
        scale: scale as f32,
    })
}

struct PackedAttentionOp {
    lens: Arc<[usize]>,
    heads: usize,
    scale: f32,
}

impl CustomOp1 for PackedAttentionOp {
    fn name(&self) -> &'static str {
        "clap-packed-attention"
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, ql: &Layout) -> Result<(CpuStorage, Shape)> {
        let (s, t, c3) = ql.shape().dims3()?;
        let (lens, heads) = (&self.lens, self.heads);
        if s != 1 || lens.iter().sum::<usize>() != t || lens.contains(&0) {
            bail!("{}: {s}×{t} tokens, sequences {lens:?}", self.name());
        }
        if !c3.is_multiple_of(3 * heads) {
            bail!("{}: width {c3} is not 3 × {heads} heads", self.name());
        }
        let qkv = slice(qkv, ql, self.name())?;
        let c = c3 / 3;
        let d = c / heads;
        let mut out = uninit_vec(t * c);
        // Split the output at the sequences' boundaries: one task each.
        let mut parts = Vec::with_capacity(lens.len());
        let (mut rest, mut start) = (out.as_mut_slice(), 0);
        for &len in lens.iter() {
            let (part, tail) = rest.split_at_mut(len * c);
            parts.push((start, len, part));
            rest = tail;
            start += len;
        }
        parts.into_par_iter().for_each(|(start, n, o)| {
            let x = &qkv[start * c3..(start + n) * c3];
            let mut scores = vec![0f32; n * n];
            for h in 0..heads {
                scores.fill(0.0); // no bias
                head_attention(x, o, &mut scores, n, c, d, h, self.scale);
            }
        });
        Ok((CpuStorage::F32(out), (1, t, c).into()))
    }
}

/// One head of one sequence: `scores` holds the bias on entry; `o[:, h]`
/// gets `softmax(scores + scale·q·kᵀ)·v`. `x`: n rows of q, k, v (3c).
#[allow(clippy::too_many_arguments)]
fn head_attention(
    x: &[f32],
    o: &mut [f32],
    scores: &mut [f32],
    n: usize,
    c: usize,
    d: usize,
    h: usize,
    scale: f32,
) {
    let c3 = 3 * c;
    assert!(x.len() >= n * c3 && o.len() >= n * c && scores.len() >= n * n && (h + 1) * d <= c);
    // SAFETY: every pointer, stride and extent below stays
    // inside `x` (n rows of 3c), `scores` (n × n) and `o`
    // (n rows of c), which this task alone owns.
    unsafe {
        // scores = bias + scale · q·kᵀ
        gemm::gemm(
            n,
            n,
            d,
            scores.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr().add(h * d),
            1,
            c3 as isize,
            x.as_ptr().add(c + h * d),
            c3 as isize,
            1,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for row in scores.chunks_exact_mut(n) {
        simd::softmax(row);
    }
    unsafe {
        // o[:, h] = probs · v
        gemm::gemm(
            n,
            d,
            n,
            o.as_mut_ptr().add(h * d),
            1,
            c as isize,
            false,
            scores.as_ptr(),
            1,
            n as isize,
            x.as_ptr().add(2 * c + h * d),
            1,
            c3 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `x[b, order[p], :]` for every `p`: `(B, L, C)` → `(B, L, C)`.
pub(crate) fn gather_rows(x: &Tensor, order: &Arc<[u32]>) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GatherOp {
        order: order.clone(),
    })
}

/// `x + h[b, inverse[t], :]`: the reverse of [`gather_rows`] with the residual.
pub(crate) fn add_gathered_rows(x: &Tensor, h: &Tensor, inverse: &Arc<[u32]>) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &h.contiguous()?,
        &GatherOp {
            order: inverse.clone(),
        },
    )
}

/// Row gathers along the middle axis of `(B, L, C)`: as a unary op
/// `out[b, t] = src[b, order[t]]`; as a binary op, `a[b, t] + src[b, order[t]]`.
struct GatherOp {
    order: Arc<[u32]>,
}

impl GatherOp {
    fn run(&self, src: &[f32], shape: &Shape, add: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (b, l, c) = shape.dims3()?;
        let order = &self.order;
        if order.len() != l || order.iter().any(|&o| o as usize >= l) {
            bail!(
                "clap-gather-rows: {} indices for {l} rows, or one out of range",
                order.len()
            );
        }
        let mut out = uninit_vec(b * l * c);
        let chunk = rows_per_task(c);
        out.par_chunks_mut(chunk * c)
            .enumerate()
            .for_each(|(i, dst)| {
                for (j, row) in dst.chunks_exact_mut(c).enumerate() {
                    let r = i * chunk + j;
                    let (bi, t) = (r / l, r % l);
                    let from = (bi * l + order[t] as usize) * c;
                    row.copy_from_slice(&src[from..from + c]);
                    if let Some(a) = add {
                        let at = (bi * l + t) * c;
                        simd::add(row, &a[at..at + c]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), shape.clone()))
    }
}

impl CustomOp1 for GatherOp {
    fn name(&self) -> &'static str {
        "clap-gather-rows"
    }

    fn cpu_fwd(&self, src: &CpuStorage, sl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(slice(src, sl, CustomOp1::name(self))?, sl.shape(), None)
    }
}

impl CustomOp2 for GatherOp {
    fn name(&self) -> &'static str {
        "clap-add-gathered-rows"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if al.shape() != sl.shape() {
            bail!("{}: shapes do not match", CustomOp2::name(self));
        }
        let a = slice(a, al, CustomOp2::name(self))?;
        self.run(slice(src, sl, CustomOp2::name(self))?, sl.shape(), Some(a))
    }
}

/// `x·Wᵀ` for a few rows of `x` (a text query, a short batch): `gemm` packs
/// the whole weight matrix anew at every call, which for a handful of rows
/// costs more than the product itself; here every weight is read once,
/// straight from `W`'s rows, against all rows of `x` held in cache.
mod skinny {
    use super::{slice, uninit_vec};
    use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape};
    use rayon::prelude::*;

    /// Up to this many rows the product is done here. Measured at 11 rows
    /// (a RoBERTa-base text query): the text tower went from 22.8 to 34.5
    /// texts/s; the bound of 32 itself is not measured.
    pub const MAX_ROWS: usize = 32;
    /// Weight rows per parallel task.
    const TASK_ROWS: usize = 16;

    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `(m, k)` · `(n, k)`ᵀ → `(m, n)`.
    pub struct SkinnyMatmul;

    impl CustomOp2 for SkinnyMatmul {
        fn name(&self) -> &'static str {
            "clap-skinny-matmul"
        }

        fn cpu_fwd(
            &self,
            x: &CpuStorage,
            xl: &Layout,
            w: &CpuStorage,
            wl: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let (m, k) = xl.shape().dims2()?;
            let (n, k2) = wl.shape().dims2()?;
            if k != k2 || !available() {
                bail!("{}: ({m}, {k}) · ({n}, {k2})ᵀ", self.name());
            }
            let x = slice(x, xl, self.name())?;
            let w = slice(w, wl, self.name())?;
            // Each task writes its weight rows' outputs, transposed: (n, m).
            let mut yt = uninit_vec(n * m);
            yt.par_chunks_mut(TASK_ROWS * m)
                .zip(w.par_chunks(TASK_ROWS * k))
                .for_each(|(out, rows)| {
                    // SAFETY: `available()` checked AVX2 and FMA; the slices
                    // hold whole rows of k (weights) and m (outputs).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        avx2::rows(x, m, k, rows, out)
                    }
                });
            let mut y = uninit_vec(m * n);
            for (j, col) in yt.chunks_exact(m).enumerate() {
                for (i, &v) in col.iter().enumerate() {
                    y[i * n + j] = v;
                }
            }
            Ok((CpuStorage::F32(y), (m, n).into()))
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::*;

        /// `out[r·m + i] = w[r]·x[i]` for the weight rows `w` (whole rows of k).
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn rows(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
            let n = w.len() / k;
            let mut r = 0;
            while r + 4 <= n {
                let mut i = 0;
                while i + 3 <= m {
                    block::<4, 3>(x, i, k, w, r, m, out);
                    i += 3;
                }
                match m - i {
                    2 => block::<4, 2>(x, i, k, w, r, m, out),
                    1 => block::<4, 1>(x, i, k, w, r, m, out),
                    _ => {}
                }
                r += 4;
            }
            while r < n {
                for i in 0..m {
                    block::<1, 1>(x, i, k, w, r, m, out);
                }
                r += 1;
            }
        }

        /// R weight rows from `r` against C rows of x from `i`: R·C dot
        /// products in registers, each weight load feeding C FMAs.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn block<const R: usize, const C: usize>(
            x: &[f32],
            i: usize,
            k: usize,
            w: &[f32],
            r: usize,
            m: usize,
            out: &mut [f32],
        ) {
            let xp = x.as_ptr().add(i * k);
            let wp = w.as_ptr().add(r * k);
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let mut p = 0;
            while p + 8 <= k {
                let mut xv = [_mm256_setzero_ps(); C];
                for (c, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add(c * k + p));
                }
                for (rr, row) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(rr * k + p));
                    for (a, v) in row.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, *v, *a);
                    }
                }
                p += 8;
            }
            for (rr, row) in acc.iter().enumerate() {
                for (c, a) in row.iter().enumerate() {
                    let hi = _mm256_extractf128_ps(*a, 1);
                    let q = _mm_add_ps(_mm256_castps256_ps128(*a), hi);
                    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                    let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
                    let mut sum = _mm_cvtss_f32(q);
                    for t in p..k {
                        sum += *wp.add(rr * k + t) * *xp.add(c * k + t);
                    }
                    out[(r + rr) * m + i + c] = sum;
                }
            }
        }
    }
}

/// Element-wise loops, compiled twice: for AVX2+FMA (chosen at run time where
/// the CPU has them) and for the baseline target.
pub(crate) mod simd {
    use crate::config::Activation;

    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cody–Waite) so that x − n·ln 2 stays exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;

    /// `eˣ`, relative error below 2e-7 on [−87, 88]; below that it returns
    /// ~1e-38 instead of 0 (harmless where it is used: softmax numerators).
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let n = (x * LOG2E).round();
        let r = x - n * LN2_HI - n * LN2_LO;
        // Cephes expf polynomial for e^r − 1 − r on |r| ≤ ln2/2.
        let mut p = 1.987_569_1e-4_f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
        let y = p * r * r + r + 1.0;
        y * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    /// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7 in exact
    /// arithmetic, 5.3e-7 measured in f32): the formula of PyTorch's
    /// vectorised CPU `erf`.
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
            + 0.254_829_6)
            * t;
        (1.0 - poly * exp(-a * a)).copysign(x)
    }

    #[inline(always)]
    fn gelu_erf(x: f32) -> f32 {
        0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }

    /// `tanh(z) = 1 − 2 / (e^{2z} + 1)`.
    #[inline(always)]
    fn tanh(z: f32) -> f32 {
        1.0 - 2.0 / (exp(2.0 * z) + 1.0)
    }

    #[inline(always)]
    fn gelu_tanh(x: f32) -> f32 {
        0.5 * x * (1.0 + tanh(0.797_884_6 * (x + 0.044_715 * x * x * x)))
    }

    #[inline(always)]
    fn act(x: f32, act: Option<Activation>) -> f32 {
        match act {
            None => x,
            Some(Activation::Gelu) => gelu_erf(x),
            Some(Activation::GeluNew) => gelu_tanh(x),
            Some(Activation::Relu) => x.max(0.0),
            Some(Activation::Tanh) => tanh(x),
            Some(Activation::Silu) => x / (1.0 + exp(-x)),
        }
    }

    macro_rules! dispatch {
        ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
            $(#[$m])*
            pub fn $name($($arg: $ty),*) {
                #[inline(always)]
                fn body($($arg: $ty),*) $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has the features `avx2` is compiled for.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                body($($arg),*)
            }
        };
    }

    dispatch! {
        /// `row = act(row + bias)`.
        fn bias_act(row: &mut [f32], bias: &[f32], a: Option<Activation>) {
            match a {
                None => row.iter_mut().zip(bias).for_each(|(y, b)| *y += b),
                Some(Activation::Gelu) => {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y = gelu_erf(*y + b))
                }
                Some(other) => {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y = act(*y + b, Some(other)))
                }
            }
        }
    }

    dispatch! {
        /// `row += bias + residual`.
        fn bias_residual(row: &mut [f32], bias: &[f32], residual: &[f32]) {
            for ((y, b), r) in row.iter_mut().zip(bias).zip(residual) {
                *y += b + r;
            }
        }
    }

    dispatch! {
        /// `row += other`.
        fn add(row: &mut [f32], other: &[f32]) {
            row.iter_mut().zip(other).for_each(|(y, o)| *y += o);
        }
    }

    dispatch! {
        /// Softmax in place. Max and sum run in 8 lanes: a single running
        /// sum would chain every add behind the previous one.
        fn softmax(row: &mut [f32]) {
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for (m, &v) in lanes.iter_mut().zip(c) {
                    *m = m.max(v);
                }
            }
            let max = chunks
                .remainder()
                .iter()
                .fold(lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), |m, &v| m.max(v));
            let mut sums = [0f32; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for c in &mut chunks {
                for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                    *v = exp(*v - max);
                    *s += *v;
                }
            }
            let mut sum: f32 = sums.iter().sum();
            for v in chunks.into_remainder() {
                *v = exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// A vector of `n` values, all of which the caller writes before reading.
fn uninit_vec(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every caller overwrites
    // all n values before any is read (skipping the memset of a zeroed vec).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic values in [−2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Tolerance of these checks: 1e-5 absolute on O(1) outputs of sums of
    /// up to ~100 products, where f32 rounding in a different order differs
    /// by ~1e-6; a wrong index or stride moves them by O(1).
    const TOL: f32 = 1e-5;

    #[test]
    fn linear_epilogues_match_candle() {
        for (rows, k, n) in [
            (1, 8, 4),
            (11, 37, 13),
            (32, 64, 24),
            (33, 40, 16),
            (150, 24, 40),
        ] {
            let w = tensor(&[n, k], 1);
            let b = tensor(&[n], 2);
            let layer = Linear::new((&w * 0.2).unwrap(), Some(b));
            let x = tensor(&[rows, k], 3);
            let r = tensor(&[rows, n], 4);
            let plain = layer.forward(&x).unwrap();
            for act in [
                None,
                Some(Activation::Gelu),
                Some(Activation::GeluNew),
                Some(Activation::Relu),
                Some(Activation::Tanh),
                Some(Activation::Silu),
            ] {
                let want = match act {
                    None => plain.clone(),
                    Some(a) => a.forward(&plain).unwrap(),
                };
                let got = linear(&layer, &x, Epilogue::Act(act)).unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < TOL, "rows {rows}, k {k}, n {n}, {act:?}: {diff:e}");
            }
            let got = linear(&layer, &x, Epilogue::Residual(&r)).unwrap();
            let diff = max_abs_diff(&got, &(&plain + &r).unwrap());
            assert!(diff < TOL, "residual, rows {rows}: {diff:e}");
            // Inside with_generic_kernels the same call takes candle's ops.
            let generic =
                with_generic_kernels(|| linear(&layer, &x, Epilogue::Residual(&r))).unwrap();
            assert!(max_abs_diff(&generic, &got) < TOL);
        }
    }

    /// The attention of candle ops: `softmax(q·kᵀ·scale + bias)·v`, heads merged.
    fn attention_reference(qkv: &Tensor, bias: &Tensor, heads: usize, scale: f64) -> Tensor {
        let (s, n, c3) = qkv.dims3().unwrap();
        let c = c3 / 3;
        let d = c / heads;
        let part = |i: usize| {
            qkv.narrow(2, i * c, c)
                .unwrap()
                .reshape((s, n, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let scores = scores.broadcast_add(bias).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((s, n, c))
            .unwrap()
    }

    #[test]
    fn window_attention_matches_candle() {
        // 2 batches × 4 windows of 16 tokens, 2 heads of 8; a bias per window.
        let (b, nw, n, heads, d) = (2, 4, 16, 2, 8);
        let c = heads * d;
        let qkv = tensor(&[b * nw, n, 3 * c], 5);
        let bias = tensor(&[nw, heads, n, n], 6);
        let got = attention(
            &qkv,
            &bias,
            heads,
            0.35,
            AttentionBias::PerWindow { n_bias: nw },
        )
        .unwrap();
        // Window w of batch i takes bias w: repeat the bias over the batch.
        let want =
            attention_reference(&qkv, &Tensor::cat(&[&bias, &bias], 0).unwrap(), heads, 0.35);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TOL, "per-window bias: {diff:e}");
        // One bias for all windows.
        let one = tensor(&[1, heads, n, n], 7);
        let got = attention(
            &qkv,
            &one,
            heads,
            0.35,
            AttentionBias::PerWindow { n_bias: 1 },
        )
        .unwrap();
        let diff = max_abs_diff(&got, &attention_reference(&qkv, &one, heads, 0.35));
        assert!(diff < TOL, "shared bias: {diff:e}");
    }

    #[test]
    fn masked_attention_matches_candle_and_ignores_padding() {
        let (b, l, heads, d) = (3, 13, 3, 8);
        let c = heads * d;
        let qkv = tensor(&[b, l, 3 * c], 8);
        // Sequence i has 13 − 4i real tokens; padding keys get f32::MIN.
        let mask: Vec<f32> = (0..b)
            .flat_map(|i| (0..l).map(move |t| if t < l - 4 * i { 0.0 } else { f32::MIN }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, l), &Device::Cpu).unwrap();
        let got = attention(&qkv, &mask, heads, 0.125, AttentionBias::PerKey).unwrap();
        let want = attention_reference(&qkv, &mask.reshape((b, 1, 1, l)).unwrap(), heads, 0.125);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TOL, "{diff:e}");
        // Changing a padded key's values changes nothing.
        let mut data = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = (2 * l + l - 1) * 3 * c; // batch 2, last token (padding)
        for v in &mut data[at..at + 3 * c] {
            *v += 5.0;
        }
        let moved = Tensor::from_vec(data.clone(), (b, l, 3 * c), &Device::Cpu).unwrap();
        // Packed (padding removed) gives the masked result on the real tokens.
        let lens: Vec<usize> = (0..b).map(|i| l - 4 * i).collect();
        let real: Vec<f32> = (0..b)
            .flat_map(|i| {
                let from = i * l * 3 * c;
                data[from..from + lens[i] * 3 * c].to_vec()
            })
            .collect();
        let t: usize = lens.iter().sum();
        let packed = Tensor::from_vec(real, (1, t, 3 * c), &Device::Cpu).unwrap();
        let got_packed = packed_attention(&packed, &lens.clone().into(), heads, 0.125).unwrap();
        let mut at = 0;
        for (i, &n) in lens.iter().enumerate() {
            let p = got_packed.narrow(1, at, n).unwrap().squeeze(0).unwrap();
            let m = got
                .narrow(0, i, 1)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .narrow(0, 0, n)
                .unwrap();
            let diff = max_abs_diff(&p, &m);
            assert!(diff < TOL, "packed sequence {i}: {diff:e}");
            at += n;
        }
        let got2 = attention(&moved, &mask, heads, 0.125, AttentionBias::PerKey).unwrap();
        let real = |t: &Tensor| t.narrow(0, 2, 1).unwrap().narrow(1, 0, l - 8).unwrap();
        assert!(max_abs_diff(&real(&got), &real(&got2)) < 1e-6);
    }

    #[test]
    fn gathers_match_index_select() {
        let (b, l, c) = (2, 24, 5);
        let x = tensor(&[b, l, c], 9);
        let h = tensor(&[b, l, c], 10);
        let order: Vec<u32> = (0..l as u32).map(|i| (i * 7 + 3) % l as u32).collect();
        let mut inverse = vec![0u32; l];
        for (p, &q) in order.iter().enumerate() {
            inverse[q as usize] = p as u32;
        }
        let idx = |v: &[u32]| Tensor::from_vec(v.to_vec(), l, &Device::Cpu).unwrap();
        let got = gather_rows(&x, &order.clone().into()).unwrap();
        assert_eq!(
            max_abs_diff(&got, &x.index_select(&idx(&order), 1).unwrap()),
            0.0
        );
        let got = add_gathered_rows(&x, &h, &inverse.clone().into()).unwrap();
        let want = (&x + h.index_select(&idx(&inverse), 1).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
        let bad: Arc<[u32]> = vec![0, 1, 99].into();
        assert!(gather_rows(&x, &bad).is_err());
    }

    #[test]
    fn exp_matches_std_to_2e_7_relative() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(simd::exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert!(simd::exp(-1e30) < 1e-37 && simd::exp(-1e30) >= 0.0);
    }

    #[test]
    fn erf_matches_the_series_to_1e_6_absolute() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = libm_erf(f64::from(x));
            worst = worst.max((f64::from(simd::erf(x)) - want).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
        assert!(simd::erf(0.0).abs() < 1e-7 && simd::erf(-3.0) < -0.9999);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = vec![1.0f32, 3.0, -2.0, 0.5, f32::MIN, 3.0];
        simd::softmax(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(row[1] > row[0] && row[0] > row[3] && row[3] > row[2]);
        assert!(row[4] < 1e-30);
        assert_eq!(row[1], row[5]);
    }

    /// erf by its Taylor series / continued fraction in f64 (no libm erf in std).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            // Σ (−1)ⁿ x^(2n+1) / (n! (2n+1)), converges fast for |x| < 3.
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), accurate for x ≥ 3.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        v.copysign(x)
    }
}
