//! The model's building blocks on two paths.
//!
//! candle runs a model as one op per pass over memory: a linear layer is a
//! matmul (packing both operands anew), then a bias add, then an activation,
//! each writing a new tensor; an attention is a dozen ops over
//! `(windows, heads, N, N)` tensors. On a CPU those passes cost as much as
//! the matmuls themselves. So a model loaded for f32 on the CPU takes its own
//! kernels, on plain slices:
//!
//! - [`sgemm`]: linear layers with their weights packed at load, the
//!   LayerNorm and window gathers in front of them and the bias, activation,
//!   residual and reverse window order after them all done inside the matmul;
//! - [`attention`]: every (window or text, head) whole on one thread in L1,
//!   straight from the fused q/k/v projection;
//! - [`simd`]: vectorised `exp`, `erf`, softmax, LayerNorm.
//!
//! Any other device or dtype, or a model loaded with [`Kernels::Generic`],
//! runs candle's ops: the reference the CPU kernels are tested against
//! (`tests/kernels.rs`).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

use crate::config::Activation;

pub(crate) mod attention;
pub(crate) mod sgemm;
pub(crate) mod simd;

use sgemm::{Lhs, PackedMatrix, RowNorm};

/// The size of the first CPU's level-2 data cache, where Linux says
/// (`/sys/devices/system/cpu/cpu0/cache`); `None` elsewhere.
pub(crate) fn l2_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten().find_map(|entry| {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        if read("level")?.trim() != "2" || read("type")?.trim() == "Instruction" {
            return None;
        }
        parse_cache_size(&read("size")?)
    })
}

/// `"512K"`, `"2048K"`, `"2M"` or plain bytes, as sysfs writes cache sizes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, ch)| !ch.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

/// Which kernels a model runs, chosen when it is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The CPU kernels for f32 on the CPU (weights packed at load), candle's
    /// ops on any other device or dtype.
    #[default]
    Auto,
    /// candle's ops everywhere: the reference for tests.
    Generic,
}

impl Kernels {
    /// Whether a model on `device` in `dtype` takes the CPU kernels.
    pub fn packed(self, device: &Device, dtype: DType) -> bool {
        self == Self::Auto && device.is_cpu() && dtype == DType::F32
    }
}

/// A LayerNorm computed in f32 whatever the model's dtype: bf16 and f16 keep
/// their matmuls, but a mean and variance over 128–3072 values need more
/// than their 8 or 11 bits of mantissa (as transformers' autocast does).
pub(crate) struct LayerNormF32 {
    norm: LayerNorm,
    /// γ and β as plain values, for the CPU kernels.
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

/// Loads `weight` and `bias` of a LayerNorm of `size` as f32.
pub(crate) fn layer_norm_f32(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNormF32> {
    let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
    let bias = vb.get(size, "bias")?.to_dtype(DType::F32)?;
    Ok(LayerNormF32 {
        gamma: weight.to_device(&Device::Cpu)?.to_vec1()?,
        beta: bias.to_device(&Device::Cpu)?.to_vec1()?,
        eps: eps as f32,
        norm: LayerNorm::new(weight, bias, eps),
    })
}

impl LayerNormF32 {
    /// The norm as the CPU matmul applies it to the rows it reads.
    pub fn rows(&self) -> RowNorm<'_> {
        RowNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: self.eps,
        }
    }

    /// Normalises every row of `x` (rows of γ's width) in place.
    pub fn apply(&self, x: &mut [f32]) {
        let k = self.gamma.len();
        x.par_chunks_mut(k * rows_per_task(k)).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(k) {
                simd::layer_norm(row, &self.gamma, &self.beta, self.eps);
            }
        });
    }
}

impl Module for LayerNormF32 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match x.dtype() {
            DType::F32 => self.norm.forward(x),
            dtype => self.norm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype),
        }
    }
}

/// Rows per parallel task: about 32k values, at least one row.
pub(crate) fn rows_per_task(row: usize) -> usize {
    (32_768 / row.max(1)).max(1)
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

/// What follows the matmul of a linear layer on tensors.
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
fn as_rows(x: &Tensor, out: usize) -> Result<(Tensor, Vec<usize>)> {
    let k = x.dim(candle_core::D::Minus1)?;
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("x has a last axis") = out;
    let rows = x.contiguous()?.reshape((x.elem_count() / k.max(1), k))?;
    Ok((rows, out_dims))
}

/// A linear layer `y = x·Wᵀ + b`: candle's, for any device and dtype, or
/// packed for the CPU kernels (then only the packed copy is kept).
pub(crate) enum Dense {
    Candle(Linear),
    Packed {
        weight: PackedMatrix,
        bias: Option<Vec<f32>>,
    },
}

impl Dense {
    /// `weight` `(out, in)` and, if `bias`, `bias` `(out)` under `vb`.
    pub fn load(
        vb: VarBuilder,
        dim_in: usize,
        dim_out: usize,
        bias: bool,
        packed: bool,
    ) -> Result<Self> {
        let linear = if bias {
            candle_nn::linear(dim_in, dim_out, vb)?
        } else {
            candle_nn::linear_no_bias(dim_in, dim_out, vb)?
        };
        Self::new(linear, packed)
    }

    /// Keeps `linear` as it is, or packs it for the CPU kernels.
    pub fn new(linear: Linear, packed: bool) -> Result<Self> {
        if !packed {
            return Ok(Self::Candle(linear));
        }
        let w = linear.weight();
        let (n, k) = w.dims2()?;
        let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match linear.bias() {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Self::Packed {
            weight: PackedMatrix::from_weight(&values, n, k)?,
            bias,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> Result<usize> {
        match self {
            Self::Candle(l) => l.weight().dim(0),
            Self::Packed { weight, .. } => Ok(weight.n()),
        }
    }

    /// The packed weight and bias; an error on a candle layer.
    fn packed(&self) -> Result<(&PackedMatrix, Option<&[f32]>)> {
        match self {
            Self::Packed { weight, bias } => Ok((weight, bias.as_deref())),
            Self::Candle(_) => bail!("a candle linear layer on the CPU kernels' path"),
        }
    }

    /// `out = epilogue(lhs·Wᵀ + b)` over `m` rows, on the CPU kernels.
    /// `epilogue.bias` is this layer's.
    pub fn gemm(
        &self,
        lhs: &Lhs,
        m: usize,
        epilogue: sgemm::Epilogue,
        out: &mut [f32],
    ) -> Result<()> {
        let (weight, bias) = self.packed()?;
        sgemm::gemm(lhs, m, weight, &sgemm::Epilogue { bias, ..epilogue }, out)
    }

    /// [`Self::gemm`] on the calling thread alone, into `out_len` values
    /// at `out`.
    ///
    /// # Safety
    /// As [`sgemm::gemm_serial`]: `out` valid for `out_len` values, the rows
    /// written touched by no other thread meanwhile.
    pub unsafe fn gemm_serial(
        &self,
        lhs: &Lhs,
        m: usize,
        epilogue: sgemm::Epilogue,
        out: *mut f32,
        out_len: usize,
    ) -> Result<()> {
        let (weight, bias) = self.packed()?;
        let epi = sgemm::Epilogue { bias, ..epilogue };
        sgemm::gemm_serial(lhs, m, weight, &epi, out, out_len)
    }

    /// `epilogue(lhs·Wᵀ + b)` over `m` rows into a new buffer.
    pub fn gemm_new(&self, lhs: &Lhs, m: usize, epilogue: sgemm::Epilogue) -> Result<Vec<f32>> {
        let mut out = uninit_vec(m * self.out_dim()?);
        self.gemm(lhs, m, epilogue, &mut out)?;
        Ok(out)
    }

    /// `x·Wᵀ + b`, then the epilogue, on tensors. `x`: `(…, in)`.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let Self::Candle(layer) = self else {
            return self.forward_packed(x, epilogue);
        };
        let y = if x.dtype() == DType::BF16 && x.device().is_cpu() {
            let (x2, out_dims) = as_rows(x, layer.weight().dim(0)?)?;
            let y = matmul(&x2, &layer.weight().t()?)?;
            let y = match layer.bias() {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            y.reshape(out_dims)?
        } else {
            layer.forward(x)?
        };
        match epilogue {
            Epilogue::Act(None) => Ok(y),
            Epilogue::Act(Some(act)) => act.forward(&y),
            Epilogue::Residual(r) => y + r,
        }
    }

    fn forward_packed(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let n = self.out_dim()?;
        let (rows, out_dims) = as_rows(x, n)?;
        let (m, k) = rows.dims2()?;
        let values = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let residual = match epilogue {
            Epilogue::Residual(r) => Some(r.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            Epilogue::Act(_) => None,
        };
        let epi = sgemm::Epilogue {
            act: match epilogue {
                Epilogue::Act(a) => a,
                Epilogue::Residual(_) => None,
            },
            residual: residual.as_deref().map(sgemm::Residual::rows),
            ..Default::default()
        };
        let y = self.gemm_new(&Lhs::rows(&values, k), m, epi)?;
        Tensor::from_vec(y, out_dims, x.device())
    }
}

/// Flushes denormal floats to zero on the calling thread from now on (x86:
/// MXCSR's flush-to-zero and denormals-are-zero bits), once per thread.
///
/// Activations underflow here and there (softmax weights of far keys, GELU
/// of large negative inputs), and every denormal an x86 core produces or
/// reads costs it a microcode assist of ~100 cycles. On a 2-core Xeon the
/// audio tower at batch 1 ran 7.45 clips/s with them flushed against 6.0–6.3
/// without (interleaved runs). Values below 1.2e-38 become zero: far below
/// what an embedding's cosine can see. The threads that run the kernels are
/// rayon's and the forward pass's own; the setting stays with the thread.
pub(crate) fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        thread_local! {
            static FLUSHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        FLUSHED.with(|done| {
            if !done.get() {
                // FTZ (bit 15) and DAZ (bit 6).
                const FTZ_DAZ: u32 = 0x8040;
                let mut csr = 0u32;
                // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE
                // control register through a local; only the two flush bits
                // change (every x86-64 CPU has DAZ).
                unsafe {
                    std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
                    csr |= FTZ_DAZ;
                    std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
                }
                done.set(true);
            }
        });
    }
}

/// A vector of `n` values, all of which the caller writes before reading.
pub(crate) fn uninit_vec(n: usize) -> Vec<f32> {
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
    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        use super::parse_cache_size as parse;
        assert_eq!(parse("512K\n"), Some(512 << 10));
        assert_eq!(parse("2048K"), Some(2 << 20));
        assert_eq!(parse("2M"), Some(2 << 20));
        assert_eq!(parse("65536"), Some(65536));
        assert_eq!(parse("12G"), None);
        assert_eq!(parse("K"), None);
        assert_eq!(parse(""), None);
    }

    /// A product below f32's smallest normal value is a denormal before
    /// the flush and zero after it, on that thread only.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn flush_denormals_zeroes_underflow_on_its_thread() {
        use std::hint::black_box;
        let tiny = || black_box(1e-30f32) * black_box(1e-10f32);
        std::thread::spawn(move || {
            let before = tiny();
            assert!(before != 0.0 && before.is_subnormal(), "{before:e}");
            super::flush_denormals();
            assert_eq!(tiny(), 0.0);
            // A denormal operand counts as zero too.
            let denormal = black_box(f32::from_bits(1));
            assert_eq!(black_box(denormal * 2.0), 0.0);
            // Normal values are untouched.
            assert_eq!(black_box(1.5f32) * black_box(2.0f32), 3.0);
        })
        .join()
        .unwrap();
        // Another thread keeps its denormals.
        std::thread::spawn(move || assert!(tiny().is_subnormal()))
            .join()
            .unwrap();
    }
}
