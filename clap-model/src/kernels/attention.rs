//! Multi-head self-attention on the CPU, straight from a fused q/k/v
//! projection: `softmax(scale·q·kᵀ + bias)·v` per (sequence, head).
//!
//! A sequence is a Swin window (64 tokens) or a text; a head's work is
//! small (64 × 64 × 32 for HTSAT), so it runs whole on one thread with
//! everything in L1: kᵀ and v packed as the microkernel's right operand, q
//! and the probabilities read in place as its left, six query rows at a time
//! through scores, softmax and ·v. No head copies, no `(windows, heads, N, N)`
//! tensors: Swin's bias is one `(N, N)` table per head plus, for shifted
//! windows, a region label per token (the reference's −100 mask).

use std::cell::RefCell;

use candle_core::{bail, Result};
use rayon::prelude::*;

use super::sgemm::microkernel::tile;
use super::sgemm::{MR, NR};
use super::simd;

/// Value the reference adds between tokens of different regions in a shifted window.
pub(crate) const SHIFT_MASK_VALUE: f32 = -100.0;

/// What is added to the scores of one (sequence, head).
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScoreBias<'a> {
    None,
    /// `(n, n)` added to the scores, then, where labels are given,
    /// [`SHIFT_MASK_VALUE`] between query and key of different labels.
    Table {
        table: &'a [f32],
        labels: Option<&'a [u8]>,
    },
    /// One value per key (a padding mask).
    PerKey(&'a [f32]),
}

/// Where the sequences lie in the rows of `qkv`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sequences<'a> {
    /// `count` sequences of `len` rows one after another.
    Uniform { count: usize, len: usize },
    /// Sequences of these lengths one after another.
    Packed(&'a [usize]),
}

impl Sequences<'_> {
    fn count(&self) -> usize {
        match self {
            Self::Uniform { count, .. } => *count,
            Self::Packed(lens) => lens.len(),
        }
    }

    fn total_rows(&self) -> usize {
        match self {
            Self::Uniform { count, len } => count * len,
            Self::Packed(lens) => lens.iter().sum(),
        }
    }
}

struct OutPtr(*mut f32);
// SAFETY: each (sequence, head) writes its own rows × head columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `at` values in (a method, so closures take the whole `Sync` wrapper).
    fn at(&self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }
}

#[derive(Default)]
struct Scratch {
    /// kᵀ as ⌈n/NR⌉ panels of `d × NR`.
    kt: Vec<f32>,
    /// v as ⌈d/NR⌉ panels of `n × NR`, for heads not a whole number of panels
    /// wide; on the AVX-512 path, v of the head as `n × d`.
    v: Vec<f32>,
    /// `MR` rows of scores, then of unnormalised probabilities.
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Self-attention of every sequence over `qkv`, rows of `3c` (q, k, v side
/// by side, heads contiguous in each); writes rows of `c`, heads merged,
/// into `out`. `bias(sequence, head)` gives that pair's additive bias.
/// Runs on rayon's threads.
pub(crate) fn attention<'b>(
    qkv: &[f32],
    c: usize,
    heads: usize,
    scale: f32,
    seqs: Sequences,
    bias: impl Fn(usize, usize) -> ScoreBias<'b> + Sync,
    out: &mut [f32],
) -> Result<()> {
    run(qkv, c, heads, scale, seqs, bias, out, true)
}

/// [`attention`] on the calling thread alone.
pub(crate) fn attention_serial<'b>(
    qkv: &[f32],
    c: usize,
    heads: usize,
    scale: f32,
    seqs: Sequences,
    bias: impl Fn(usize, usize) -> ScoreBias<'b> + Sync,
    out: &mut [f32],
) -> Result<()> {
    run(qkv, c, heads, scale, seqs, bias, out, false)
}

#[allow(clippy::too_many_arguments)]
fn run<'b>(
    qkv: &[f32],
    c: usize,
    heads: usize,
    scale: f32,
    seqs: Sequences,
    bias: impl Fn(usize, usize) -> ScoreBias<'b> + Sync,
    out: &mut [f32],
    parallel: bool,
) -> Result<()> {
    if heads == 0 || !c.is_multiple_of(heads) {
        bail!("attention: width {c} is not a multiple of {heads} heads");
    }
    let rows = seqs.total_rows();
    if qkv.len() != rows * 3 * c || out.len() != rows * c {
        bail!(
            "attention: {} and {} values for {rows} rows of width {c}",
            qkv.len(),
            out.len()
        );
    }
    if let Sequences::Packed(lens) = seqs {
        if lens.contains(&0) {
            bail!("attention: an empty sequence");
        }
    }
    let starts: Vec<(usize, usize)> = match seqs {
        Sequences::Uniform { count, len } => (0..count).map(|s| (s * len, len)).collect(),
        Sequences::Packed(lens) => lens
            .iter()
            .scan(0, |at, &n| {
                let start = *at;
                *at += n;
                Some((start, n))
            })
            .collect(),
    };
    // Validate every bias before any thread reads one.
    for (s, &(_, n)) in starts.iter().enumerate() {
        for h in 0..heads {
            match bias(s, h) {
                ScoreBias::None => {}
                ScoreBias::Table { table, labels } => {
                    if table.len() != n * n || labels.is_some_and(|l| l.len() != n) {
                        bail!("attention: bias of sequence {s} does not fit its {n} tokens");
                    }
                }
                ScoreBias::PerKey(keys) => {
                    if keys.len() != n {
                        bail!("attention: mask of sequence {s} does not fit its {n} tokens");
                    }
                }
            }
        }
    }
    let d = c / heads;
    let ptr = OutPtr(out.as_mut_ptr());
    let items = seqs.count() * heads;
    let one = |item: usize| {
        let (s, h) = (item / heads, item % heads);
        let (start, n) = starts[s];
        let x = &qkv[start * 3 * c..(start + n) * 3 * c];
        SCRATCH.with(|scratch| {
            super::flush_denormals();
            // SAFETY: this item writes rows start..start+n, columns
            // h·d..(h+1)·d of `out` (checked to hold rows·c values), which
            // no other item writes.
            unsafe {
                let o = ptr.at(start * c);
                head(
                    x,
                    n,
                    c,
                    d,
                    h,
                    scale,
                    bias(s, h),
                    &mut scratch.borrow_mut(),
                    o,
                )
            }
        });
    };
    if items == 1 || !parallel {
        (0..items).for_each(one);
    } else {
        // Items of a 64-token window are ~0.3 MFLOP: hand them out in runs.
        (0..items).into_par_iter().with_min_len(4).for_each(one);
    }
    Ok(())
}

/// One head of one sequence of `n` tokens: `o[t, h·d..] = softmax(…)·v`.
/// Compiled for AVX2 + FMA too (its loops then vectorise and the tiles
/// inline), chosen at run time.
///
/// # Safety
/// `o` must point to `n` rows of `c` values of which this call alone
/// writes columns `h·d..(h+1)·d`; `x` holds `n` rows of `3c`.
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    x: &[f32],
    n: usize,
    c: usize,
    d: usize,
    h: usize,
    scale: f32,
    bias: ScoreBias,
    s: &mut Scratch,
    o: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(NR) && simd::has_avx512() {
        return avx512::head(x, n, c, d, h, scale, bias, s, o);
    }
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2(
            x: &[f32],
            n: usize,
            c: usize,
            d: usize,
            h: usize,
            scale: f32,
            bias: ScoreBias,
            s: &mut Scratch,
            o: *mut f32,
        ) {
            head_body(x, n, c, d, h, scale, bias, s, o)
        }
        return avx2(x, n, c, d, h, scale, bias, s, o);
    }
    head_body(x, n, c, d, h, scale, bias, s, o)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn head_body(
    x: &[f32],
    n: usize,
    c: usize,
    d: usize,
    h: usize,
    scale: f32,
    bias: ScoreBias,
    s: &mut Scratch,
    o: *mut f32,
) {
    let c3 = 3 * c;
    let key_panels = n.div_ceil(NR);
    let npad = key_panels * NR;
    let d_panels = d.div_ceil(NR);
    pack_keys(x, n, c, d, h, &mut s.kt);
    // v as the right operand: read in place when the head is whole panels
    // wide (rows 3c apart), else packed as d_panels panels of n × NR.
    let (v, v_stride, v_panel) = if d.is_multiple_of(NR) {
        (x.as_ptr().add(2 * c + h * d), c3, NR)
    } else {
        s.v.clear();
        s.v.resize(d_panels * n * NR, 0.0);
        for key in 0..n {
            let v = &x[key * c3 + 2 * c + h * d..][..d];
            for (dp, chunk) in v.chunks(NR).enumerate() {
                s.v[(dp * n + key) * NR..][..chunk.len()].copy_from_slice(chunk);
            }
        }
        (s.v.as_ptr(), NR, n * NR)
    };
    if s.scores.len() < MR * npad {
        s.scores.resize(MR * npad, 0.0);
    }
    let mut acc = [[0f32; NR]; MR];
    let mut q0 = 0;
    while q0 < n {
        let rows = MR.min(n - q0);
        // Rows past the sequence repeat its last: computed, never stored.
        let q_rows: [*const f32; MR] =
            std::array::from_fn(|i| x.as_ptr().add((q0 + i.min(rows - 1)) * c3 + h * d));
        for jp in 0..key_panels {
            tile(d, q_rows, s.kt.as_ptr().add(jp * d * NR), NR, &mut acc);
            let cols = NR.min(n - jp * NR);
            let keys = jp * NR..jp * NR + cols;
            for (i, a) in acc.iter().enumerate().take(rows) {
                let row = &mut s.scores[i * npad + jp * NR..][..cols];
                let q = q0 + i;
                // In the reference's order: (q·kᵀ)·scale + bias, then the mask.
                match bias {
                    ScoreBias::None => {
                        for (r, &v) in row.iter_mut().zip(a) {
                            *r = v * scale;
                        }
                    }
                    ScoreBias::Table { table, labels } => {
                        let t = &table[q * n + keys.start..q * n + keys.end];
                        for ((r, &v), &b) in row.iter_mut().zip(a).zip(t) {
                            *r = v * scale + b;
                        }
                        if let Some(l) = labels {
                            for (r, &lk) in row.iter_mut().zip(&l[keys.clone()]) {
                                if lk != l[q] {
                                    *r += SHIFT_MASK_VALUE;
                                }
                            }
                        }
                    }
                    ScoreBias::PerKey(k) => {
                        for ((r, &v), &b) in row.iter_mut().zip(a).zip(&k[keys.clone()]) {
                            *r = v * scale + b;
                        }
                    }
                }
            }
        }
        let mut inv = [0f32; MR];
        for (i, inv) in inv.iter_mut().enumerate().take(rows) {
            *inv = 1.0 / simd::exp_shifted(&mut s.scores[i * npad..i * npad + n]);
        }
        let p_rows: [*const f32; MR] =
            std::array::from_fn(|i| s.scores.as_ptr().add(i.min(rows - 1) * npad));
        for dp in 0..d_panels {
            tile(n, p_rows, v.add(dp * v_panel), v_stride, &mut acc);
            let cols = NR.min(d - dp * NR);
            for (i, a) in acc.iter().enumerate().take(rows) {
                let dst =
                    std::slice::from_raw_parts_mut(o.add((q0 + i) * c + h * d + dp * NR), cols);
                for (d, &v) in dst.iter_mut().zip(a) {
                    *d = v * inv[i];
                }
            }
        }
        q0 += MR;
    }
}

/// The head on AVX-512, for heads a whole number of 16-wide panels
/// (HTSAT's 32, RoBERTa's 64). The AVX2 path's products go through the
/// shared 6×16 tile, whose 12 accumulators need as many loads as FMAs
/// (six broadcasts of q per 16 keys); here six query rows meet 64 keys
/// (HTSAT's whole window) in 24 accumulators, and the probabilities meet up
/// to 64 dims of v, each broadcast feeding four FMAs; the bias, the shift
/// mask and the softmax stay 512-bit.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{pack_keys, ScoreBias, Scratch, SHIFT_MASK_VALUE};
    use crate::kernels::sgemm::{MR, NR};
    use crate::kernels::simd::avx512 as vmath;

    /// Key panels of 16 (and value panels of 16 dims) one step takes.
    const PANELS: usize = 4;

    /// See [`super::head`]; `d` is a multiple of [`NR`] (16).
    ///
    /// # Safety
    /// As [`super::head`]; the CPU has AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn head(
        x: &[f32],
        n: usize,
        c: usize,
        d: usize,
        h: usize,
        scale: f32,
        bias: ScoreBias,
        s: &mut Scratch,
        o: *mut f32,
    ) {
        debug_assert!(d.is_multiple_of(NR) && NR == 16);
        let c3 = 3 * c;
        let key_panels = n.div_ceil(NR);
        let npad = key_panels * NR;
        let d_panels = d / NR;
        pack_keys(x, n, c, d, h, &mut s.kt);
        if s.scores.len() < MR * npad {
            s.scores.resize(MR * npad, 0.0);
        }
        // v packed (`n × d`, rows contiguous): read in place, its rows
        // are 3c apart, which for HTSAT's widths (384 to 3072 floats) maps
        // the 64 rows a product reads to a few L1 sets, evicting each other.
        if s.v.len() < n * d {
            s.v.resize(n * d, 0.0);
        }
        let (from, to) = (x.as_ptr().add(2 * c + h * d), s.v.as_mut_ptr());
        for key in 0..n {
            for j in (0..d).step_by(NR) {
                _mm512_storeu_ps(to.add(key * d + j), _mm512_loadu_ps(from.add(key * c3 + j)));
            }
        }
        let kt = s.kt.as_ptr();
        let scores = s.scores.as_mut_ptr();
        let v = s.v.as_ptr();
        let mut q0 = 0;
        while q0 < n {
            let rows = MR.min(n - q0);
            // Rows past the sequence repeat its last: computed, never stored.
            let q_rows: [*const f32; MR] =
                std::array::from_fn(|i| x.as_ptr().add((q0 + i.min(rows - 1)) * c3 + h * d));
            let at = Scores {
                q0,
                rows,
                n,
                npad,
                scale,
                bias,
                out: scores,
            };
            let mut jp = 0;
            while jp < key_panels {
                let kp = kt.add(jp * d * NR);
                match key_panels - jp {
                    1 => at.step::<1>(d, q_rows, kp, jp),
                    2 => at.step::<2>(d, q_rows, kp, jp),
                    3 => at.step::<3>(d, q_rows, kp, jp),
                    _ => at.step::<PANELS>(d, q_rows, kp, jp),
                }
                jp += PANELS;
            }
            let mut inv = [0f32; MR];
            for (i, inv) in inv.iter_mut().enumerate().take(rows) {
                *inv = 1.0 / vmath::exp_shifted(scores.add(i * npad), n);
            }
            let p_rows: [*const f32; MR] =
                std::array::from_fn(|i| scores.add(i.min(rows - 1) * npad).cast_const());
            let out = o.add(q0 * c + h * d);
            let mut dp = 0;
            while dp < d_panels {
                let (vp, op) = (v.add(dp * NR), out.add(dp * NR));
                match d_panels - dp {
                    1 => values::<1>(n, p_rows, vp, d, rows, &inv, op, c),
                    2 => values::<2>(n, p_rows, vp, d, rows, &inv, op, c),
                    3 => values::<3>(n, p_rows, vp, d, rows, &inv, op, c),
                    _ => values::<PANELS>(n, p_rows, vp, d, rows, &inv, op, c),
                }
                dp += PANELS;
            }
            q0 += MR;
        }
    }

    /// Where one block of query rows writes its scores.
    struct Scores<'a> {
        q0: usize,
        rows: usize,
        n: usize,
        npad: usize,
        scale: f32,
        bias: ScoreBias<'a>,
        /// `MR` rows of `npad`.
        out: *mut f32,
    }

    impl Scores<'_> {
        /// Scores of the block's rows against key panels `jp..jp + P`
        /// (`kt`: their packed `d × 16` panels, one after another), in the
        /// reference's order: `(q·kᵀ)·scale + bias`, then the mask.
        #[inline(always)]
        unsafe fn step<const P: usize>(
            &self,
            d: usize,
            q_rows: [*const f32; MR],
            kt: *const f32,
            jp: usize,
        ) {
            let acc = product::<P>(d, q_rows, kt, d * NR, NR);
            let (n, scale) = (self.n, _mm512_set1_ps(self.scale));
            // Every row through the epilogue, those past the sequence as its
            // last (their scores are never read): with a loop bound known at
            // compile time the accumulators stay in registers (bounded by
            // `rows`, each was also stored to the stack at every step of the
            // product above, twice as slow).
            for (i, acc) in acc.iter().enumerate() {
                let q = self.q0 + i.min(self.rows - 1);
                for (p, &acc) in acc.iter().enumerate() {
                    let key0 = (jp + p) * NR;
                    let live = NR.min(n - key0);
                    // Keys past the sequence: no bias read (their scores
                    // are never used).
                    let keys: __mmask16 = if live == NR { !0 } else { (1 << live) - 1 };
                    let mut v = _mm512_mul_ps(acc, scale);
                    match self.bias {
                        ScoreBias::None => {}
                        ScoreBias::Table { table, labels } => {
                            let t = table.as_ptr().add(q * n + key0);
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keys, t));
                            if let Some(l) = labels {
                                let mut lk = [0u8; NR];
                                lk[..live].copy_from_slice(&l[key0..key0 + live]);
                                let lk = _mm512_cvtepu8_epi32(_mm_loadu_si128(lk.as_ptr().cast()));
                                let other = _mm512_cmpneq_epi32_mask(
                                    lk,
                                    _mm512_set1_epi32(i32::from(l[q])),
                                );
                                v = _mm512_mask_add_ps(
                                    v,
                                    other,
                                    v,
                                    _mm512_set1_ps(SHIFT_MASK_VALUE),
                                );
                            }
                        }
                        ScoreBias::PerKey(k) => {
                            let t = k.as_ptr().add(key0);
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keys, t));
                        }
                    }
                    _mm512_storeu_ps(self.out.add(i * self.npad + key0), v);
                }
            }
        }
    }

    /// `o[i] = inv[i] · Σ_k p[i][k] · v[k]` for the block's rows and the
    /// `P` 16-dim panels of v at `v` (rows `stride` apart); `o` rows `c` apart.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn values<const P: usize>(
        n: usize,
        p_rows: [*const f32; MR],
        v: *const f32,
        stride: usize,
        rows: usize,
        inv: &[f32; MR],
        o: *mut f32,
        c: usize,
    ) {
        let acc = product::<P>(n, p_rows, v, NR, stride);
        for (i, acc) in acc.iter().enumerate().take(rows) {
            let inv = _mm512_set1_ps(inv[i]);
            for (p, &acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(i * c + p * NR), _mm512_mul_ps(acc, inv));
            }
        }
    }

    /// `Σ_k rows[i][k] · b[k]` for the `MR` rows and `P` 16-wide panels of
    /// `b` (panel `p`, step `k` at `b + p·panel + k·step`), `kc` deep. The
    /// accumulators come back by value, which keeps them in registers.
    #[inline(always)]
    unsafe fn product<const P: usize>(
        kc: usize,
        rows: [*const f32; MR],
        b: *const f32,
        panel: usize,
        step: usize,
    ) -> [[__m512; P]; MR] {
        let mut acc = [[_mm512_setzero_ps(); P]; MR];
        let mut b = b;
        for k in 0..kc {
            let w: [__m512; P] = std::array::from_fn(|p| _mm512_loadu_ps(b.add(p * panel)));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let a = _mm512_set1_ps(*row.add(k));
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(a, w, *acc);
                }
            }
            b = b.add(step);
        }
        acc
    }
}

/// kᵀ of head `h` as ⌈n/NR⌉ panels of `d × NR` (`kt[jp][kk][j]` = dim kk of
/// key jp·NR + j; keys past n zero). AVX2 moves 8 keys × 8 dims at a time
/// through a register transpose.
#[inline(always)]
fn pack_keys(x: &[f32], n: usize, c: usize, d: usize, h: usize, kt: &mut Vec<f32>) {
    let c3 = 3 * c;
    let key_panels = n.div_ceil(NR);
    kt.resize(key_panels * d * NR, 0.0);
    // Only a partial last panel has keys to zero.
    if !n.is_multiple_of(NR) {
        kt[(key_panels - 1) * d * NR..].fill(0.0);
    }
    let key = |j: usize| &x[j * c3 + c + h * d..][..d];
    let (mut done_keys, mut done_dims) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: AVX2 checked; blocks are whole 8 × 8 inside n keys × d
        // dims of head h, whose keys sit at x[j·3c + c + h·d..].
        unsafe { pack_keys_avx2(&x[c + h * d..], c3, n, d, kt) };
        (done_keys, done_dims) = (n - n % 8, d - d % 8);
    }
    for j in 0..n {
        let (jp, jj) = (j / NR, j % NR);
        let from = if j < done_keys { done_dims } else { 0 };
        for (kk, &v) in key(j).iter().enumerate().skip(from) {
            kt[(jp * d + kk) * NR + jj] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_keys_avx2(keys: &[f32], stride: usize, n: usize, d: usize, kt: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = keys.as_ptr();
    for j0 in (0..n - n % 8).step_by(8) {
        let (jp, jj) = (j0 / NR, j0 % NR);
        for k0 in (0..d - d % 8).step_by(8) {
            let rows: [__m256; 8] =
                std::array::from_fn(|i| _mm256_loadu_ps(k.add((j0 + i) * stride + k0)));
            let cols = simd::avx2::transpose8(rows);
            for (kk, col) in cols.iter().enumerate() {
                _mm256_storeu_ps(kt.as_mut_ptr().add((jp * d + k0 + kk) * NR + jj), *col);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `softmax(scale·q·kᵀ + bias)·v` in f64, one (sequence, head) at a time.
    fn reference(
        qkv: &[f32],
        c: usize,
        heads: usize,
        scale: f64,
        seqs: &[(usize, usize)],
        bias: &dyn Fn(usize, usize, usize, usize) -> f64,
    ) -> Vec<f64> {
        let d = c / heads;
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let mut out = vec![0f64; rows * c];
        let at = |t: usize, part: usize, h: usize, j: usize| {
            f64::from(qkv[t * 3 * c + part * c + h * d + j])
        };
        for (s, &(start, n)) in seqs.iter().enumerate() {
            for h in 0..heads {
                for q in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|key| {
                            let dot: f64 = (0..d)
                                .map(|j| at(start + q, 0, h, j) * at(start + key, 1, h, j))
                                .sum();
                            dot * scale + bias(s, h, q, key)
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for j in 0..d {
                        out[(start + q) * c + h * d + j] = (0..n)
                            .map(|key| e[key] / sum * at(start + key, 2, h, j))
                            .sum();
                    }
                }
            }
        }
        out
    }

    fn compare(what: &str, got: &[f32], want: &[f64]) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() < 2e-6,
                "{what}: value {i}: {g} against {w}"
            );
        }
    }

    /// Windows with a bias table and shift labels; sizes off the tiles
    /// (13 tokens, heads of 8 and 20).
    #[test]
    fn windows_with_table_and_labels_match_f64() {
        // Heads of 32, 48 and 64 take the AVX-512 path where the CPU has it:
        // HTSAT's 64-token windows, and keys and dims past one 4-panel step.
        for (count, n, heads, d) in [
            (5, 13, 3, 8),
            (2, 64, 2, 20),
            (1, 1, 1, 4),
            (3, 64, 2, 32),
            (2, 77, 1, 64),
            (2, 5, 2, 48),
            (1, 19, 1, 80),
        ] {
            let c = heads * d;
            let qkv = values(count * n * 3 * c, 1);
            let table = values(heads * n * n, 2);
            let labels: Vec<u8> = (0..2 * n).map(|t| (t % 3) as u8).collect();
            let bias = |s: usize, h: usize| ScoreBias::Table {
                table: &table[h * n * n..(h + 1) * n * n],
                labels: (s % 2 == 1).then(|| &labels[..n]),
            };
            for parallel in [true, false] {
                let mut out = vec![0f32; count * n * c];
                run(
                    &qkv,
                    c,
                    heads,
                    0.3,
                    Sequences::Uniform { count, len: n },
                    bias,
                    &mut out,
                    parallel,
                )
                .unwrap();
                let seqs: Vec<(usize, usize)> = (0..count).map(|s| (s * n, n)).collect();
                let want = reference(&qkv, c, heads, f64::from(0.3f32), &seqs, &|s, h, q, k| {
                    let mut b = f64::from(table[h * n * n + q * n + k]);
                    if s % 2 == 1 && labels[q] != labels[k] {
                        b += f64::from(SHIFT_MASK_VALUE);
                    }
                    b
                });
                compare(
                    &format!("{count} windows of {n}, heads {heads}×{d}"),
                    &out,
                    &want,
                );
            }
        }
    }

    /// Texts of different lengths packed one after another, no bias; and
    /// padded texts with a mask per key, whose masked keys change nothing.
    #[test]
    fn packed_and_masked_sequences_match_f64() {
        let (heads, d) = (3, 16);
        let c = heads * d;
        let lens = [7usize, 1, 19, 6];
        let total: usize = lens.iter().sum();
        let qkv = values(total * 3 * c, 3);
        let mut out = vec![0f32; total * c];
        attention(
            &qkv,
            c,
            heads,
            0.25,
            Sequences::Packed(&lens),
            |_, _| ScoreBias::None,
            &mut out,
        )
        .unwrap();
        let seqs: Vec<(usize, usize)> = lens
            .iter()
            .scan(0, |at, &n| {
                let s = (*at, n);
                *at += n;
                Some(s)
            })
            .collect();
        compare(
            "packed",
            &out,
            &reference(&qkv, c, heads, 0.25, &seqs, &|_, _, _, _| 0.0),
        );

        let (count, len) = (2, 9);
        let mut qkv = values(count * len * 3 * c, 4);
        let real = [9usize, 5];
        let mask: Vec<f32> = (0..count)
            .flat_map(|s| (0..len).map(move |t| if t < real[s] { 0.0 } else { f32::MIN }))
            .collect();
        let mut out = vec![0f32; count * len * c];
        let masked = |s: usize, _| ScoreBias::PerKey(&mask[s * len..(s + 1) * len]);
        attention(
            &qkv,
            c,
            heads,
            0.25,
            Sequences::Uniform { count, len },
            masked,
            &mut out,
        )
        .unwrap();
        // The real tokens of the second text attend only to each other.
        let seq1: Vec<f32> = qkv[len * 3 * c..(len + real[1]) * 3 * c].to_vec();
        let want = reference(&seq1, c, heads, 0.25, &[(0, real[1])], &|_, _, _, _| 0.0);
        compare("masked", &out[len * c..(len + real[1]) * c], &want);
        // Changing a masked key's values changes nothing.
        for v in &mut qkv[(len + 7) * 3 * c..(len + 8) * 3 * c] {
            *v += 3.0;
        }
        let mut again = vec![0f32; count * len * c];
        attention(
            &qkv,
            c,
            heads,
            0.25,
            Sequences::Uniform { count, len },
            masked,
            &mut again,
        )
        .unwrap();
        assert_eq!(
            out[len * c..(len + real[1]) * c],
            again[len * c..(len + real[1]) * c]
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let qkv = values(4 * 3 * 8, 5);
        let mut out = vec![0f32; 4 * 8];
        let none = |_, _| ScoreBias::None;
        assert!(attention(
            &qkv,
            8,
            3,
            1.0,
            Sequences::Uniform { count: 1, len: 4 },
            none,
            &mut out
        )
        .is_err());
        assert!(attention(
            &qkv,
            8,
            2,
            1.0,
            Sequences::Uniform { count: 1, len: 5 },
            none,
            &mut out
        )
        .is_err());
        assert!(attention(&qkv, 8, 2, 1.0, Sequences::Packed(&[4, 0]), none, &mut out).is_err());
        let short = [0.0f32; 3];
        let bad = |_, _| ScoreBias::PerKey(&short);
        assert!(attention(
            &qkv,
            8,
            2,
            1.0,
            Sequences::Uniform { count: 1, len: 4 },
            bad,
            &mut out
        )
        .is_err());
    }

    /// `cargo test --release -p clap-model --lib attention_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn attention_speed() {
        for (windows, c, heads) in [(512, 128, 4), (128, 256, 8), (32, 512, 16), (8, 1024, 32)] {
            let n = 64;
            let qkv = values(windows * n * 3 * c, 1);
            let table = values(heads * n * n, 2);
            let mut out = vec![0f32; windows * n * c];
            let run = |out: &mut [f32]| {
                attention(
                    &qkv,
                    c,
                    heads,
                    0.17,
                    Sequences::Uniform {
                        count: windows,
                        len: n,
                    },
                    |_, h| ScoreBias::Table {
                        table: &table[h * n * n..(h + 1) * n * n],
                        labels: None,
                    },
                    out,
                )
                .unwrap()
            };
            run(&mut out);
            let reps = 5;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                run(&mut out);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let flops = (windows * n * n * c * 4) as f64;
            println!(
                "{windows} windows, C {c}: {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                flops / s / 1e9
            );
        }
    }
}
