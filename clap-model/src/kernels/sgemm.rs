//! f32 matrix products for the CPU, with the weights packed once at load.
//!
//! `gemm` (what candle's CPU matmul calls) packs both operands into its
//! microkernel's layout at every call, and a linear layer then needs further
//! passes over its output for the bias, the activation and the residual, and
//! over its input for the LayerNorm and the window gathers before it. Here:
//!
//! - the weight `W` of `y = x·Wᵀ + b` is packed at load ([`PackedMatrix`]);
//! - the left operand is packed block by block as it is read, and that
//!   reading does the row gathers (shifted windows, 2×2 patch merging) and the
//!   LayerNorm in front of the layer ([`Lhs`]): they cost no pass of their own;
//! - each output tile gets bias, activation, residual and a row scatter (the
//!   reverse window order) while it is still in registers ([`Epilogue`]).
//!
//! The loops are BLIS's (Goto's): K in blocks of `kc` so that a `kc × NR`
//! panel of W stays in L1 while [`MC`] rows of the left operand stream from
//! L2 through an `MR × NR` microkernel (6×16, twelve AVX2 accumulators).
//! With AVX-512 the tile is 12×32, two micro-panels of the left operand
//! against two panels of W, in 24 512-bit accumulators, and K blocks are
//! deeper ([`Isa::kc`]).
//! Work is split over rayon's threads by row blocks, and by column panels
//! where there are too few rows (a text query, the last audio stage); with
//! few rows W streams from memory, so the first micro-panel of each panel
//! prefetches the next panel into L2.
//!
//! Measured with 2 threads (`cargo test --release -p clap-model --lib
//! sgemm_speed -- --ignored --nocapture`) on the audio tower's large
//! products: 66–72 GFLOP/s on a 2-core AMD EPYC with AVX2 (f32 peak 78)
//! where candle's `gemm` gave 61–68; 237–260 on a 2-core Xeon with AVX-512
//! (peak 378) where `gemm` gave 135–157 and the AVX2 path 164–175. A text
//! query's 10 rows: 1.5–2.2× `gemm`.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{bail, Result};
use rayon::prelude::*;

use crate::config::Activation;

/// Rows of the microkernel's tile.
pub(crate) const MR: usize = 6;
/// Columns of the microkernel's tile (two AVX2 registers).
pub(crate) const NR: usize = 16;
/// Rows of the left operand packed at a time: `MC × kc` is 288 KiB (AVX2)
/// or 576 KiB (AVX-512) of L2.
const MC: usize = 288;

/// The instruction sets the microkernel has a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    /// 6×16 tiles, twelve 256-bit accumulators.
    Avx2,
    /// 6×32 tiles (two panels of W at once), twelve 512-bit accumulators.
    Avx512,
}

impl Isa {
    /// Depth of one packed K block. A deeper block means fewer passes over
    /// the output (each K block after the first adds to it); a shallower
    /// one keeps a `kc × NR` panel of W in L1 (32 KiB; at 512 it streams
    /// from L2). 512 on a 2-core Xeon with AVX-512 (190–240 → 237–268
    /// GFLOP/s: the re-reads of partial sums had been 14 % of the audio
    /// tower's time). With AVX2, 256 measured best of 128–1024 on an early
    /// 2-core AMD EPYC; on a Zen 3 EPYC, with the Swin blocks in groups of
    /// 128 rows, 512 ran the audio tower 1–5 % faster at batch 1, 4 and 8
    /// (9 of 10 interleaved pairs of the `side_by_side` bench; text alike) and
    /// `sgemm_speed`'s large shapes at 182–185 GFLOP/s against 172–177
    /// (best of 3 interleaved).
    pub fn kc(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Avx2 => 512,
            Isa::Portable => 256,
        }
    }

    /// The widest this CPU runs.
    pub fn best() -> Self {
        if super::simd::has_avx512() {
            Isa::Avx512
        } else if super::simd::has_avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => super::simd::has_avx2_fma(),
            Isa::Avx512 => super::simd::has_avx512(),
        }
    }
}

/// A 64-byte aligned buffer of f32 (whole cache lines for the microkernel).
pub(crate) struct AlignedBuf {
    buf: Vec<f32>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN_FLOATS: usize = 16;

    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0f32; len + Self::ALIGN_FLOATS];
        let offset = buf.as_ptr().align_offset(64).min(Self::ALIGN_FLOATS);
        Self { buf, offset, len }
    }

    /// Makes room for `len` values, keeping none of the old ones.
    fn reserve(&mut self, len: usize) {
        if self.len < len {
            *self = Self::zeroed(len);
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.offset..self.offset + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

/// The weight `W` `(n, k)` of a linear layer, packed as the right operand
/// `Wᵀ` of the microkernel: K in blocks of `kc` rows ([`Isa::kc`] of this
/// CPU), each block ⌈n/NR⌉ panels of `kc × NR` values, columns past `n` zero.
pub(crate) struct PackedMatrix {
    k: usize,
    n: usize,
    kc: usize,
    panels: usize,
    data: AlignedBuf,
}

impl PackedMatrix {
    /// Packs `w`, row-major `(n, k)` (PyTorch's `Linear.weight`).
    pub fn from_weight(w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || n == 0 || k == 0 {
            bail!("packing a ({n}, {k}) weight from {} values", w.len());
        }
        let panels = n.div_ceil(NR);
        let mut data = AlignedBuf::zeroed(k * panels * NR);
        let out = data.as_mut_slice();
        let mut at = 0;
        let block_depth = Isa::best().kc();
        for k0 in (0..k).step_by(block_depth) {
            let kc = block_depth.min(k - k0);
            for p in 0..panels {
                for kk in 0..kc {
                    for j in 0..NR {
                        let col = p * NR + j;
                        if col < n {
                            out[at] = w[col * k + k0 + kk];
                        }
                        at += 1;
                    }
                }
            }
        }
        Ok(Self {
            k,
            n,
            kc: block_depth,
            panels,
            data,
        })
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The `kc × NR` panel `p` of the K block starting at `k0`.
    fn panel(&self, k0: usize, kc: usize, p: usize) -> &[f32] {
        let start = k0 * self.panels * NR + p * kc * NR;
        &self.data.as_slice()[start..start + kc * NR]
    }
}

/// How the rows of the left operand are read from its source.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowMap<'a> {
    /// Row `r` is source row `r`.
    Identity,
    /// Row `r` is `parts` source rows side by side: part `p` is source row
    /// `(r / period)·src_period + index[(r % period)·parts + p]`. A window
    /// gather is `parts = 1`, `period = src_period = L`; a 2×2 patch merge
    /// is `parts = 4`, `period = L/4`, `src_period = L`; a list of rows is
    /// `parts = 1`, `period` its length (then `src_period` is unused).
    Gather {
        index: &'a [u32],
        parts: usize,
        period: usize,
        src_period: usize,
    },
}

impl<'a> RowMap<'a> {
    /// Row `r` is source row `rows[r]`.
    pub fn list(rows: &'a [u32]) -> Self {
        Self::Gather {
            index: rows,
            parts: 1,
            period: rows.len().max(1),
            src_period: 0,
        }
    }
}

/// A LayerNorm applied to each row of the left operand as it is packed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// The left operand: `m` rows of `k` values read from `src`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lhs<'a> {
    pub src: &'a [f32],
    /// Values per source row (`k / parts`).
    pub width: usize,
    pub rows: RowMap<'a>,
    pub norm: Option<RowNorm<'a>>,
}

impl<'a> Lhs<'a> {
    /// Rows of `width` values, read in order.
    pub fn rows(src: &'a [f32], width: usize) -> Self {
        Self {
            src,
            width,
            rows: RowMap::Identity,
            norm: None,
        }
    }

    pub fn gathered(mut self, rows: RowMap<'a>) -> Self {
        self.rows = rows;
        self
    }

    pub fn normed(mut self, norm: RowNorm<'a>) -> Self {
        self.norm = Some(norm);
        self
    }

    fn parts(&self) -> usize {
        match self.rows {
            RowMap::Identity => 1,
            RowMap::Gather { parts, .. } => parts,
        }
    }

    /// Values per row of the operand.
    pub fn k(&self) -> usize {
        self.width * self.parts()
    }

    /// Source row of part `p` of row `r`.
    #[inline(always)]
    fn source_row(&self, r: usize, p: usize) -> usize {
        match self.rows {
            RowMap::Identity => r,
            RowMap::Gather {
                index,
                parts,
                period,
                src_period,
            } => (r / period) * src_period + index[(r % period) * parts + p] as usize,
        }
    }

    #[inline(always)]
    fn part(&self, r: usize, p: usize) -> &'a [f32] {
        let at = self.source_row(r, p) * self.width;
        &self.src[at..at + self.width]
    }

    /// Checks that every row of `m` reads inside `src`.
    fn check(&self, m: usize) -> Result<()> {
        let w = self.width;
        if w == 0 {
            bail!("sgemm: empty rows");
        }
        let src_rows = self.src.len() / w;
        match self.rows {
            RowMap::Identity => {
                if m > src_rows {
                    bail!("sgemm: {m} rows of {w} from {} values", self.src.len());
                }
            }
            RowMap::Gather {
                index,
                parts,
                period,
                src_period,
            } => {
                if period == 0 || parts == 0 || index.len() != period * parts {
                    bail!(
                        "sgemm: gather of {parts} parts with period {period} has {} indices",
                        index.len()
                    );
                }
                if m > 0 {
                    let last_base = (m - 1) / period * src_period;
                    let top = index.iter().max().map_or(0, |&i| i as usize);
                    if last_base + top >= src_rows {
                        bail!("sgemm: gathered rows reach past {src_rows} source rows");
                    }
                }
            }
        }
        if let Some(n) = self.norm {
            let k = self.k();
            if n.gamma.len() != k || n.beta.len() != k {
                bail!("sgemm: LayerNorm of {} for rows of {k}", n.gamma.len());
            }
        }
        Ok(())
    }
}

/// A row mapping for outputs and residuals: row `r` is
/// `(r / period)·period + index[r % period]` (a permutation repeated every
/// `period` rows, or, with `period ≥ m`, a list of rows).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scatter<'a> {
    pub index: &'a [u32],
    pub period: usize,
}

impl<'a> Scatter<'a> {
    /// Row `r` is `rows[r]`.
    pub fn list(rows: &'a [u32]) -> Self {
        Self {
            index: rows,
            period: rows.len().max(1),
        }
    }

    #[inline(always)]
    fn row(&self, r: usize) -> usize {
        (r / self.period) * self.period + self.index[r % self.period] as usize
    }

    /// Checks that `m` rows map inside `rows` rows; with `distinct`, that
    /// no two map to one (two threads writing one row would race).
    fn check(&self, m: usize, rows: usize, distinct: bool) -> Result<()> {
        let p = self.period;
        if p == 0 || self.index.len() != p {
            bail!(
                "sgemm: row map of period {p} has {} indices",
                self.index.len()
            );
        }
        if m == 0 {
            return Ok(());
        }
        let used = &self.index[..m.min(p)];
        let last_base = (m - 1) / p * p;
        let top = used.iter().max().map_or(0, |&i| i as usize);
        if last_base + top >= rows || (m > p && top >= p) {
            bail!("sgemm: row map reaches past {rows} rows");
        }
        if distinct {
            let mut sorted = used.to_vec();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                bail!("sgemm: output row map sends two rows to one");
            }
        }
        Ok(())
    }
}

/// The residual added after the activation: row `rows(r)` of `values`
/// (row `r` without a map).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Residual<'a> {
    pub values: &'a [f32],
    pub rows: Option<Scatter<'a>>,
}

impl<'a> Residual<'a> {
    /// Row `r` of `values`.
    pub fn rows(values: &'a [f32]) -> Self {
        Self { values, rows: None }
    }

    #[inline(always)]
    fn row(&self, r: usize) -> usize {
        match &self.rows {
            Some(s) => s.row(r),
            None => r,
        }
    }
}

/// What is done to each output tile before it is stored:
/// `y = act(acc + bias) + residual`, written to row `scatter(r)`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Option<Activation>,
    pub residual: Option<Residual<'a>>,
    pub scatter: Option<Scatter<'a>>,
}

impl Epilogue<'_> {
    #[inline(always)]
    fn row(&self, r: usize) -> usize {
        match &self.scatter {
            Some(s) => s.row(r),
            None => r,
        }
    }
}

/// The output pointer, shared by the tasks: each writes rows or column
/// ranges no other task writes (checked: scatters are permutations).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint regions (see `gemm`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Per-thread packing space for the left operand and its row statistics.
struct Scratch {
    a: AlignedBuf,
    stats: Vec<(f32, f32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        a: AlignedBuf::zeroed(0),
        stats: Vec::new(),
    });
}

/// `out = epilogue(lhs · Wᵀ)` for `m` rows, on rayon's threads. `out` is
/// row-major with rows of `n`; without a scatter, `(m, n)`.
pub(crate) fn gemm(
    lhs: &Lhs,
    m: usize,
    w: &PackedMatrix,
    epilogue: &Epilogue,
    out: &mut [f32],
) -> Result<()> {
    gemm_on(Isa::best(), lhs, m, w, epilogue, out)
}

/// [`gemm`] with the microkernel for `isa`, which this CPU must run.
pub(crate) fn gemm_on(
    isa: Isa,
    lhs: &Lhs,
    m: usize,
    w: &PackedMatrix,
    epilogue: &Epilogue,
    out: &mut [f32],
) -> Result<()> {
    if !isa.available() {
        bail!("sgemm: this CPU does not run {isa:?}");
    }
    check(lhs, m, w, epilogue, out.len())?;
    if m == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let (row_chunks, col_chunks) = split(m, w.panels, threads);
    // Chunk i of c over u units: units [i·u/c, (i+1)·u/c), sizes within one.
    let part = |i: usize, c: usize, u: usize| i * u / c..(i + 1) * u / c;
    let m_panels = m.div_ceil(MR);
    let tasks: Vec<(Range<usize>, Range<usize>)> = (0..row_chunks)
        .flat_map(|i| (0..col_chunks).map(move |j| (i, j)))
        .filter_map(|(i, j)| {
            let rp = part(i, row_chunks, m_panels);
            let rows = rp.start * MR..(rp.end * MR).min(m);
            let panels = part(j, col_chunks, w.panels);
            (!rows.is_empty() && !panels.is_empty()).then_some((rows, panels))
        })
        .collect();
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |(rows, panels): &(Range<usize>, Range<usize>)| {
        // SAFETY: tasks cover disjoint (row, column) ranges of `out`,
        // whose bounds were checked; output row maps are checked injective.
        unsafe { run_task(isa, lhs, w, epilogue, ptr, rows.clone(), panels.clone()) }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
    Ok(())
}

/// [`gemm`] on the calling thread alone, into `out_len` values at `out`:
/// for work already split over threads (a Swin block's windows).
///
/// # Safety
/// `out` must be valid for `out_len` values, and no other thread may read
/// or write the rows this call writes while it runs.
pub(crate) unsafe fn gemm_serial(
    lhs: &Lhs,
    m: usize,
    w: &PackedMatrix,
    epilogue: &Epilogue,
    out: *mut f32,
    out_len: usize,
) -> Result<()> {
    check(lhs, m, w, epilogue, out_len)?;
    if m > 0 {
        run_task(
            Isa::best(),
            lhs,
            w,
            epilogue,
            OutPtr(out),
            0..m,
            0..w.panels,
        );
    }
    Ok(())
}

/// Shapes and row maps of a product, before any thread writes.
fn check(lhs: &Lhs, m: usize, w: &PackedMatrix, epi: &Epilogue, out_len: usize) -> Result<()> {
    let (k, n) = (w.k, w.n);
    if lhs.k() != k {
        bail!("sgemm: rows of {} against a weight of {k} inputs", lhs.k());
    }
    lhs.check(m)?;
    if !out_len.is_multiple_of(n) {
        bail!("sgemm: output of {out_len} values is not rows of {n}");
    }
    let out_rows = out_len / n;
    match &epi.scatter {
        Some(s) => s.check(m, out_rows, true)?,
        None if out_rows < m => bail!("sgemm: output of {out_rows} rows for {m}"),
        None => {}
    }
    if epi.bias.is_some_and(|b| b.len() != n) {
        bail!("sgemm: bias of the wrong width");
    }
    if let Some(r) = &epi.residual {
        if !r.values.len().is_multiple_of(n) {
            bail!("sgemm: residual is not rows of {n}");
        }
        let rows = r.values.len() / n;
        match &r.rows {
            Some(s) => s.check(m, rows, false)?,
            None if rows < m => bail!("sgemm: residual of {rows} rows for {m}"),
            None => {}
        }
    }
    Ok(())
}

/// Row chunks × column chunks. With rows for two blocks of [`MC`] per
/// thread, row chunks only, their count a multiple of the threads (equal
/// shares). With fewer, W's streaming dominates: the columns are split, so
/// that each thread reads its share of W once.
fn split(m: usize, panels: usize, threads: usize) -> (usize, usize) {
    let blocks = m.div_ceil(MC);
    if threads == 1 || blocks >= 2 * threads {
        return (blocks.next_multiple_of(threads), 1);
    }
    // At least 4 panels (64 columns) per chunk: a narrower one repacks the
    // same rows for little work.
    let col_chunks = (2 * threads)
        .div_ceil(blocks)
        .min(panels.div_ceil(4))
        .max(1);
    (blocks, col_chunks)
}

/// One task: rows `rows` × column panels `panels` of the output.
///
/// # Safety
/// `out` must point to `(m, n)` values, and no other task may write the
/// rows (after scatter) × columns of this one.
unsafe fn run_task(
    isa: Isa,
    lhs: &Lhs,
    w: &PackedMatrix,
    epi: &Epilogue,
    out: OutPtr,
    rows: Range<usize>,
    panels: Range<usize>,
) {
    super::flush_denormals();
    SCRATCH.with(|s| run_block_loops(isa, lhs, w, epi, out, rows, panels, &mut s.borrow_mut()))
}

/// The loops of [`run_task`] with this thread's packing space.
///
/// # Safety
/// As [`run_task`].
#[allow(clippy::too_many_arguments)]
unsafe fn run_block_loops(
    isa: Isa,
    lhs: &Lhs,
    w: &PackedMatrix,
    epi: &Epilogue,
    out: OutPtr,
    rows: Range<usize>,
    panels: Range<usize>,
    scratch: &mut Scratch,
) {
    let k = w.k;
    // AVX2 alone: the AVX-512 path pairs whole micro-panels.
    let even = isa == Isa::Avx2;
    let mut ic = rows.start;
    while ic < rows.end {
        let mc = MC.min(rows.end - ic);
        if let Some(norm) = &lhs.norm {
            row_stats(lhs, norm, ic, mc, &mut scratch.stats);
        }
        let mut k0 = 0;
        while k0 < k {
            let kc = w.kc.min(k - k0);
            // Two values of room past the last micro-panel for the packing's
            // full-width stores.
            let a_len = mc.div_ceil(MR) * MR * kc + 2;
            scratch.a.reserve(a_len);
            let a = &mut scratch.a.as_mut_slice()[..a_len];
            let block = Block {
                kc,
                first: k0 == 0,
                last: k0 + kc == k,
                row0: ic,
                rows: mc,
                even,
                n: w.n,
            };
            pack_lhs(lhs, &block, k0, &scratch.stats, a);
            microkernel::panels(isa, &block, a, w, k0, panels.clone(), epi, out.0);
            k0 += kc;
        }
        ic += mc;
    }
}

/// Mean and 1/σ of rows `r0..r0+mc` of `lhs` (all parts).
fn row_stats(lhs: &Lhs, norm: &RowNorm, r0: usize, mc: usize, stats: &mut Vec<(f32, f32)>) {
    stats.clear();
    let k = lhs.k() as f32;
    for r in r0..r0 + mc {
        let mut sum = 0f32;
        for p in 0..lhs.parts() {
            sum += super::simd::sum(lhs.part(r, p));
        }
        let mean = sum / k;
        let mut var = 0f32;
        for p in 0..lhs.parts() {
            var += super::simd::sum_sq_dev(lhs.part(r, p), mean);
        }
        let rstd = 1.0 / (var / k + norm.eps).sqrt();
        stats.push((mean, rstd));
    }
}

/// Packs the block's rows, columns `k0..k0+kc` of `lhs` into ⌈rows/MR⌉
/// micro-panels of `MR × kc` (`a[ip·MR·kc + kk·MR + i]`: row `i` of
/// micro-panel `ip`, whose rows [`Block::micro_panel`] gives), gathered and
/// normalised as they are read (`stats`: the block's rows'). Rows past a
/// micro-panel's own are left as they are (the microkernel computes only the
/// rows it has).
fn pack_lhs(lhs: &Lhs, block: &Block, k0: usize, stats: &[(f32, f32)], a: &mut [f32]) {
    let (w, r0, kc) = (lhs.width, block.row0, block.kc);
    for ip in 0..block.rows.div_ceil(MR) {
        // To the end of the buffer: the last stores spill 2 values onward.
        let panel = &mut a[ip * MR * kc..];
        let (first, rows) = block.micro_panel(ip);
        // The kc columns may straddle parts.
        let mut kk = 0;
        while kk < kc {
            let col = k0 + kk;
            let (p, off) = (col / w, col % w);
            let take = (w - off).min(kc - kk);
            let src: [&[f32]; MR] = std::array::from_fn(|i| {
                let r = r0 + first + i.min(rows - 1);
                &lhs.part(r, p)[off..off + take]
            });
            let norm = lhs.norm.as_ref().map(|n| Norm {
                stats: std::array::from_fn(|i| stats[first + i.min(rows - 1)]),
                gamma: &n.gamma[col..col + take],
                beta: &n.beta[col..col + take],
            });
            interleave(&src, norm.as_ref(), &mut panel[kk * MR..]);
            kk += take;
        }
    }
}

/// The first row and the row count of micro-panel `ip` of a block of
/// `rows`. In turn, `MR` rows each and the rest in the last; with `even`,
/// the ⌈rows/MR⌉ micro-panels share the rows within one of each other. A
/// micro-panel of 1–3 rows has 2–6 accumulators, too few to cover the FMA
/// latency (4 cycles, 2 a cycle: 8 chains): it takes as long as one of 4
/// rows. So 13 rows as 6 + 6 + 1 take the time of 16, as 5 + 4 + 4 that of
/// 13 (a text query's 8–19 tokens; the audio tower's row blocks are whole
/// micro-panels either way).
fn micro_panel_rows(rows: usize, even: bool, ip: usize) -> (usize, usize) {
    if !even {
        return (ip * MR, MR.min(rows - ip * MR));
    }
    let panels = rows.div_ceil(MR);
    let (base, extra) = (rows / panels, rows % panels);
    (ip * base + ip.min(extra), base + usize::from(ip < extra))
}

/// The LayerNorm of one micro-panel's rows over one stretch of columns.
struct Norm<'a> {
    stats: [(f32, f32); MR],
    gamma: &'a [f32],
    beta: &'a [f32],
}

/// `dst[t·MR + i] = norm(src[i][t])`: `MR` rows side by side, column after
/// column. AVX2 does 8 columns at a time as a register transpose.
fn interleave(src: &[&[f32]; MR], norm: Option<&Norm>, dst: &mut [f32]) {
    let take = src[0].len();
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() && dst.len() >= take * MR + 2 {
        // SAFETY: AVX2 checked; the rows hold `take` values and `dst` the
        // `take·MR` values plus the 2 a full-width store writes past them.
        t = unsafe { interleave_avx2(src, norm, dst) };
    }
    for t in t..take {
        for (i, row) in src.iter().enumerate() {
            dst[t * MR + i] = match norm {
                None => row[t],
                Some(n) => {
                    let (mean, rstd) = n.stats[i];
                    (row[t] - mean) * rstd * n.gamma[t] + n.beta[t]
                }
            };
        }
    }
}

/// [`interleave`]'s first columns in runs of 8; returns how many it did.
/// Each column is stored as 8 values (6 rows and 2 spare), the next store
/// overwriting the spare 2: `dst` needs 2 values of room past the last.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn interleave_avx2(src: &[&[f32]; MR], norm: Option<&Norm>, dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let take = src[0].len();
    let runs = take / 8;
    let out = dst.as_mut_ptr();
    for run in 0..runs {
        let c = run * 8;
        let mut r: [__m256; 8] = [_mm256_setzero_ps(); 8];
        for (i, row) in src.iter().enumerate() {
            r[i] = _mm256_loadu_ps(row.as_ptr().add(c));
        }
        if let Some(n) = norm {
            let g = _mm256_loadu_ps(n.gamma.as_ptr().add(c));
            let b = _mm256_loadu_ps(n.beta.as_ptr().add(c));
            for (v, &(mean, rstd)) in r.iter_mut().zip(&n.stats) {
                let centred = _mm256_sub_ps(*v, _mm256_set1_ps(mean));
                *v = _mm256_fmadd_ps(_mm256_mul_ps(centred, _mm256_set1_ps(rstd)), g, b);
            }
        }
        let cols = super::simd::avx2::transpose8(r);
        for (k, col) in cols.iter().enumerate() {
            _mm256_storeu_ps(out.add((c + k) * MR), *col);
        }
    }
    runs * 8
}

/// One K block of one row block: the extent the microkernel loops cover.
struct Block {
    kc: usize,
    /// The first K block writes the output; later ones add to it.
    first: bool,
    /// The last K block applies the epilogue.
    last: bool,
    row0: usize,
    rows: usize,
    /// Rows shared evenly among the micro-panels (see [`micro_panel_rows`]).
    even: bool,
    n: usize,
}

impl Block {
    /// Micro-panel `ip`'s first row in the block and its row count.
    fn micro_panel(&self, ip: usize) -> (usize, usize) {
        micro_panel_rows(self.rows, self.even, ip)
    }
}

pub(crate) mod microkernel {
    use std::ops::Range;

    use super::{Block, Epilogue, Isa, PackedMatrix, MR, NR};

    /// `acc = A · B` for one `MR × NR` tile, `kc` deep: A is `MR` row
    /// pointers (`rows[i][k]`; rows past the tile's may repeat a valid one),
    /// B `kc` rows of `NR` values, `b_stride` apart (`b[k·b_stride + j]`).
    /// For the small products of the attention, where the tile's values are
    /// worked on outside registers.
    ///
    /// # Safety
    /// Each row must hold `kc` values, `b` `kc` rows of `NR` at `b_stride`.
    #[inline(always)]
    pub unsafe fn tile(
        kc: usize,
        rows: [*const f32; MR],
        b: *const f32,
        b_stride: usize,
        acc: &mut [[f32; NR]; MR],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::simd::has_avx512() {
                return avx512::tile_to(kc, rows, b, b_stride, acc);
            }
            if super::super::simd::has_avx2_fma() {
                return avx2::tile_to(kc, rows, b, b_stride, acc);
            }
        }
        portable::tile_to(kc, rows, b, b_stride, acc)
    }

    /// All micro-panels of a packed row block against the packed panels
    /// `panels` of W's K block at `k0`, stored through the epilogue.
    ///
    /// # Safety
    /// `out` holds the rows the epilogue maps to; `a` holds `⌈rows/MR⌉`
    /// micro-panels of `MR × kc`; `isa` runs here.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panels(
        isa: Isa,
        block: &Block,
        a: &[f32],
        w: &PackedMatrix,
        k0: usize,
        panels: Range<usize>,
        epi: &Epilogue,
        out: *mut f32,
    ) {
        debug_assert!(a.len() >= block.rows.div_ceil(MR) * MR * block.kc);
        let kc = block.kc;
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::panels(block, a, w, k0, panels, epi, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                for p in panels {
                    avx2::panel(block, a, w.panel(k0, kc, p), p * NR, epi, out)
                }
            }
            _ => {
                for p in panels {
                    portable::panel(block, a, w.panel(k0, kc, p), p * NR, epi, out)
                }
            }
        }
    }

    /// One row of a tile through the epilogue, `cols` values: the scalar
    /// path, for tiles at the right edge and without AVX2.
    #[inline(always)]
    unsafe fn store_row_scalar(
        acc: &[f32],
        block: &Block,
        r: usize,
        col0: usize,
        cols: usize,
        epi: &Epilogue,
        out: *mut f32,
    ) {
        let dst = epi.row(r) * block.n + col0;
        let o = out.add(dst);
        for (j, &v) in acc[..cols].iter().enumerate() {
            let mut y = v;
            if !block.first {
                y += *o.add(j);
            }
            if block.last {
                if let Some(b) = epi.bias {
                    y += b[col0 + j];
                }
                y = super::super::simd::act(y, epi.act);
                if let Some(res) = &epi.residual {
                    y += res.values[res.row(r) * block.n + col0 + j];
                }
            }
            *o.add(j) = y;
        }
    }

    mod portable {
        use super::super::{Block, Epilogue, MR, NR};

        pub unsafe fn tile_to(
            kc: usize,
            rows: [*const f32; MR],
            b: *const f32,
            b_stride: usize,
            acc: &mut [[f32; NR]; MR],
        ) {
            *acc = [[0f32; NR]; MR];
            for kk in 0..kc {
                let bv = std::slice::from_raw_parts(b.add(kk * b_stride), NR);
                for (row, a) in acc.iter_mut().zip(rows) {
                    let av = *a.add(kk);
                    for (c, &bj) in row.iter_mut().zip(bv) {
                        *c += av * bj;
                    }
                }
            }
        }

        pub unsafe fn panel(
            block: &Block,
            a: &[f32],
            b: &[f32],
            col0: usize,
            epi: &Epilogue,
            out: *mut f32,
        ) {
            debug_assert!(!block.even, "portable micro-panels are MR rows each");
            let kc = block.kc;
            let cols = NR.min(block.n - col0);
            for r0 in (0..block.rows).step_by(MR) {
                let ap = &a[r0 * kc..];
                let mut acc = [[0f32; NR]; MR];
                for kk in 0..kc {
                    let bv = &b[kk * NR..kk * NR + NR];
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = ap[kk * MR + i];
                        for (c, &bj) in row.iter_mut().zip(bv) {
                            *c += av * bj;
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate().take(block.rows - r0) {
                    let r = block.row0 + r0 + i;
                    super::store_row_scalar(row, block, r, col0, cols, epi, out);
                }
            }
        }
    }

    /// Asks for the output lines a tile's `store` writes (and reads: the partial sums of
    /// earlier K blocks, the residual) before the tile computes, `cols` columns from `col0`
    /// in `rows` of the block. Without it the stores waited on those lines at the end of the
    /// tile, ~5 % of the audio tower's time, when its activations are fresh memory (measured
    /// on a 2-core Zen 4 EPYC: the tower 2–3 % faster at batch 1 and 8, interleaved runs).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn prefetch_out(
        block: &Block,
        rows: Range<usize>,
        col0: usize,
        cols: usize,
        epi: &Epilogue,
        out: *mut f32,
    ) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let span = cols.min(block.n - col0) * 4;
        let lines = |p: *const f32| {
            let p = p as *const i8;
            // `span` bytes from `p` touch these lines whatever `p`'s alignment.
            (0..span.div_ceil(64) + 1).map(move |l| p.wrapping_add((l * 64).min(span - 1)))
        };
        for r in rows.start..rows.end.min(block.rows) {
            let r = block.row0 + r;
            for line in lines(out.add(epi.row(r) * block.n + col0)) {
                _mm_prefetch::<_MM_HINT_ET0>(line);
            }
            if let (true, Some(res)) = (block.last, &epi.residual) {
                for line in lines(res.values.as_ptr().add(res.row(r) * block.n + col0)) {
                    _mm_prefetch::<_MM_HINT_T0>(line);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::*;

        use super::super::super::simd::avx2 as vmath;
        use super::super::{Block, Epilogue, MR, NR};

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn tile_to(
            kc: usize,
            rows: [*const f32; MR],
            b: *const f32,
            b_stride: usize,
            out: &mut [[f32; NR]; MR],
        ) {
            let acc = tile_rows(kc, rows, b, b_stride);
            for (o, c) in out.iter_mut().zip(&acc) {
                _mm256_storeu_ps(o.as_mut_ptr(), c[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), c[1]);
            }
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn panel(
            block: &Block,
            a: &[f32],
            b: &[f32],
            col0: usize,
            epi: &Epilogue,
            out: *mut f32,
        ) {
            let kc = block.kc;
            let cols = NR.min(block.n - col0);
            let bias = bias_of(block, epi, col0, cols);
            let bp = b.as_ptr();
            // The micro-panels share the prefetch of the next panel of W
            // into L2: micro-panel `j` of `mp` asks for lines `j, j + mp,
            // …`, one every `mp` steps, so that W streams at the rate the
            // whole panel computes. With few rows (a text query: 11 rows,
            // two micro-panels) W comes from memory, and a first
            // micro-panel asking for a line every step (its own rate, twice
            // the panel's) ran ahead of what one core's misses can fetch
            // while the second micro-panel asked for nothing.
            let mp = block.rows.div_ceil(MR);
            for ip in 0..mp {
                let (r0, rows) = block.micro_panel(ip);
                let ap = a.as_ptr().add(ip * MR * kc);
                let next = Prefetch {
                    line: bp.wrapping_add(kc * NR + ip * NR),
                    every: mp,
                };
                super::prefetch_out(block, r0..r0 + rows, col0, NR, epi, out);
                // A micro-panel short of MR rows (a text of 9 tokens)
                // computes only its rows.
                macro_rules! run {
                    ($r:literal) => {
                        store(
                            &tile_packed::<$r>(kc, ap, bp, next),
                            block,
                            r0,
                            col0,
                            cols,
                            bias,
                            epi,
                            out,
                        )
                    };
                }
                match rows {
                    6 => run!(6),
                    5 => run!(5),
                    4 => run!(4),
                    3 => run!(3),
                    2 => run!(2),
                    _ => run!(1),
                }
            }
        }

        /// The lines of the next panel of W a micro-panel asks for: from
        /// `line`, one every `every` steps, `every` lines (of NR values)
        /// apart.
        #[derive(Clone, Copy)]
        struct Prefetch {
            line: *const f32,
            every: usize,
        }

        /// The bias of a full panel's 16 columns, for a tile's last K block.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        pub(super) unsafe fn bias_of(
            block: &Block,
            epi: &Epilogue,
            col0: usize,
            cols: usize,
        ) -> Option<(__m256, __m256)> {
            match epi.bias {
                Some(bias) if block.last && cols == NR => Some((
                    _mm256_loadu_ps(bias.as_ptr().add(col0)),
                    _mm256_loadu_ps(bias.as_ptr().add(col0 + 8)),
                )),
                _ => None,
            }
        }

        /// `R × NR` accumulators of the first `R` rows of a packed
        /// micro-panel (`a[k·MR + i]`) against a packed panel, `kc` deep:
        /// each step loads two vectors of B and broadcasts `R` values of A
        /// into `2R` FMAs. (One stream of A: measured 5–8 % faster than
        /// reading six rows.)
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn tile_packed<const R: usize>(
            kc: usize,
            a: *const f32,
            b: *const f32,
            prefetch: Prefetch,
        ) -> [[__m256; 2]; R] {
            let mut c = [[_mm256_setzero_ps(); 2]; R];
            let (mut a, mut b) = (a, b);
            macro_rules! step {
                () => {
                    let b0 = _mm256_loadu_ps(b);
                    let b1 = _mm256_loadu_ps(b.add(8));
                    for (i, ci) in c.iter_mut().enumerate() {
                        let ai = _mm256_broadcast_ss(&*a.add(i));
                        ci[0] = _mm256_fmadd_ps(ai, b0, ci[0]);
                        ci[1] = _mm256_fmadd_ps(ai, b1, ci[1]);
                    }
                    a = a.add(MR);
                    b = b.add(NR);
                };
            }
            // A line (NR values) of the next panel every `every` steps.
            let Prefetch { mut line, every } = prefetch;
            if every == 1 {
                // One micro-panel (up to 6 rows): the plain loop; the
                // chunked one below ran 6 rows in cache ~20 % slower
                // (`sgemm_cold`, three interleaved runs).
                for _ in 0..kc {
                    _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                    line = line.wrapping_add(NR);
                    step!();
                }
                return c;
            }
            let mut k = 0;
            while k < kc {
                _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
                line = line.wrapping_add(every * NR);
                let end = (k + every).min(kc);
                for _ in k..end {
                    step!();
                }
                k = end;
            }
            c
        }

        /// As [`tile_packed`], A read from `MR` row pointers.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn tile_rows(
            kc: usize,
            rows: [*const f32; MR],
            b: *const f32,
            b_stride: usize,
        ) -> [[__m256; 2]; MR] {
            let mut c = [[_mm256_setzero_ps(); 2]; MR];
            let mut b = b;
            for k in 0..kc {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (ci, row) in c.iter_mut().zip(&rows) {
                    let ai = _mm256_broadcast_ss(&*row.add(k));
                    ci[0] = _mm256_fmadd_ps(ai, b0, ci[0]);
                    ci[1] = _mm256_fmadd_ps(ai, b1, ci[1]);
                }
                b = b.add(b_stride);
            }
            c
        }

        #[target_feature(enable = "avx2,fma")]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn store(
            acc: &[[__m256; 2]],
            block: &Block,
            r0: usize,
            col0: usize,
            cols: usize,
            bias: Option<(__m256, __m256)>,
            epi: &Epilogue,
            out: *mut f32,
        ) {
            if cols < NR {
                let mut tmp = [0f32; NR];
                for (i, c) in acc.iter().enumerate() {
                    _mm256_storeu_ps(tmp.as_mut_ptr(), c[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), c[1]);
                    let r = block.row0 + r0 + i;
                    super::store_row_scalar(&tmp, block, r, col0, cols, epi, out);
                }
                return;
            }
            for (i, c) in acc.iter().enumerate() {
                let r = block.row0 + r0 + i;
                let dst = epi.row(r) * block.n + col0;
                let o = out.add(dst);
                let (mut v0, mut v1) = (c[0], c[1]);
                if !block.first {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(o));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(o.add(8)));
                }
                if block.last {
                    if let Some((b0, b1)) = bias {
                        v0 = _mm256_add_ps(v0, b0);
                        v1 = _mm256_add_ps(v1, b1);
                    }
                    if let Some(act) = epi.act {
                        v0 = vmath::act(v0, act);
                        v1 = vmath::act(v1, act);
                    }
                    if let Some(res) = &epi.residual {
                        let rp = res.values.as_ptr().add(res.row(r) * block.n + col0);
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rp));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rp.add(8)));
                    }
                }
                _mm256_storeu_ps(o, v0);
                _mm256_storeu_ps(o.add(8), v1);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;
        use std::ops::Range;

        use super::super::super::simd::avx512 as vmath;
        use super::super::{Block, Epilogue, PackedMatrix, MR, NR};
        use super::avx2;

        /// Panels of W two at a time (the K block's panels lie one after
        /// another, `kc·NR` apart): each step loads one 512-bit row of
        /// each and broadcasts `R` values of A into `2R` FMAs, against
        /// AVX2's one 256-bit row pair per `2R`. An odd last panel goes
        /// through the AVX2 tile.
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn panels(
            block: &Block,
            a: &[f32],
            w: &PackedMatrix,
            k0: usize,
            panels: Range<usize>,
            epi: &Epilogue,
            out: *mut f32,
        ) {
            let kc = block.kc;
            let mut p = panels.start;
            while p + 2 <= panels.end {
                let b = w.panel(k0, kc, p);
                debug_assert_eq!(w.panel(k0, kc, p + 1).as_ptr(), b.as_ptr().add(kc * NR));
                let more = p + 4 <= panels.end;
                pair(block, a, b.as_ptr(), p * NR, more, epi, out);
                p += 2;
            }
            if p < panels.end {
                avx2::panel(block, a, w.panel(k0, kc, p), p * NR, epi, out);
            }
        }

        /// All micro-panels against panels at `b` and `b + kc·NR`, columns
        /// `col0..col0 + 2·NR`; with `more`, the first micro-panel
        /// prefetches the next pair.
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn pair(
            block: &Block,
            a: &[f32],
            b: *const f32,
            col0: usize,
            more: bool,
            epi: &Epilogue,
            out: *mut f32,
        ) {
            debug_assert!(!block.even, "AVX-512 pairs micro-panels of MR rows");
            let kc = block.kc;
            let cols = [NR, NR.min(block.n - col0 - NR)];
            let bias = [
                avx2::bias_of(block, epi, col0, cols[0]),
                avx2::bias_of(block, epi, col0 + NR, cols[1]),
            ];
            let mut r0 = 0;
            // Two micro-panels at a time: 24 accumulators, half the loads
            // of W per FMA. A last pair of 7–11 rows (a text query's tokens)
            // too: its second micro-panel's missing rows repeat its last
            // (see `pack_lhs`) and are not stored. With few rows W streams
            // from memory: one pass over it instead of two, the second of
            // which would only compute (a query's 11 rows against a 768 ×
            // 3072 weight from memory: 0.48 ms against 0.62, 2-core Xeon).
            while block.rows - r0 > MR {
                let ap = a.as_ptr().add(r0 * kc);
                let next = (r0 == 0 && more).then(|| b.wrapping_add(2 * kc * NR));
                super::prefetch_out(block, r0..r0 + 2 * MR, col0, 2 * NR, epi, out);
                let acc = tile::<2, MR>(kc, [ap, ap.add(MR * kc)], b, next);
                for (part, acc) in acc.iter().enumerate() {
                    let r = r0 + part * MR;
                    let rows = MR.min(block.rows - r);
                    store(&acc[..rows], block, r, col0, cols, bias, epi, out);
                }
                r0 = (r0 + 2 * MR).min(block.rows);
            }
            while r0 < block.rows {
                let rows = MR.min(block.rows - r0);
                let ap = a.as_ptr().add(r0 * kc);
                let next = (r0 == 0 && more).then(|| b.wrapping_add(2 * kc * NR));
                super::prefetch_out(block, r0..r0 + rows, col0, 2 * NR, epi, out);
                macro_rules! run {
                    ($r:literal) => {{
                        let [acc] = tile::<1, $r>(kc, [ap], b, next);
                        store(&acc, block, r0, col0, cols, bias, epi, out);
                    }};
                }
                match rows {
                    6 => run!(6),
                    5 => run!(5),
                    4 => run!(4),
                    3 => run!(3),
                    2 => run!(2),
                    _ => run!(1),
                }
                r0 += MR;
            }
        }

        /// [`super::tile`]: one 512-bit row of B per step, `MR` FMAs.
        #[target_feature(enable = "avx512f,avx2,fma")]
        pub unsafe fn tile_to(
            kc: usize,
            rows: [*const f32; MR],
            b: *const f32,
            b_stride: usize,
            out: &mut [[f32; NR]; MR],
        ) {
            // Even and odd k in separate accumulators: six chains alone
            // would wait on the FMA latency.
            let mut c = [[_mm512_setzero_ps(); MR]; 2];
            let mut b = b;
            for k in (0..kc - kc % 2).step_by(2) {
                let w0 = _mm512_loadu_ps(b);
                let w1 = _mm512_loadu_ps(b.add(b_stride));
                for (i, row) in rows.iter().enumerate() {
                    c[0][i] = _mm512_fmadd_ps(_mm512_set1_ps(*row.add(k)), w0, c[0][i]);
                    c[1][i] = _mm512_fmadd_ps(_mm512_set1_ps(*row.add(k + 1)), w1, c[1][i]);
                }
                b = b.add(2 * b_stride);
            }
            if kc % 2 == 1 {
                let w = _mm512_loadu_ps(b);
                for (ci, row) in c[0].iter_mut().zip(&rows) {
                    *ci = _mm512_fmadd_ps(_mm512_set1_ps(*row.add(kc - 1)), w, *ci);
                }
            }
            for ((o, even), odd) in out.iter_mut().zip(&c[0]).zip(&c[1]) {
                _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(*even, *odd));
            }
        }

        /// A tile of `R` rows × the pair's columns through the epilogue:
        /// 512-bit where the second panel is whole, else as AVX2 halves.
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn store(
            acc: &[[__m512; 2]],
            block: &Block,
            r0: usize,
            col0: usize,
            cols: [usize; 2],
            bias: [Option<(__m256, __m256)>; 2],
            epi: &Epilogue,
            out: *mut f32,
        ) {
            if cols[1] < NR {
                for (half, (&cols, bias)) in cols.iter().zip(bias).enumerate() {
                    let mut ymm = [[_mm256_setzero_ps(); 2]; MR];
                    for (y, a) in ymm.iter_mut().zip(acc) {
                        *y = halves(a[half]);
                    }
                    let ymm = &ymm[..acc.len()];
                    avx2::store(ymm, block, r0, col0 + half * NR, cols, bias, epi, out);
                }
                return;
            }
            let bias = match epi.bias {
                Some(b) if block.last => Some([
                    _mm512_loadu_ps(b.as_ptr().add(col0)),
                    _mm512_loadu_ps(b.as_ptr().add(col0 + NR)),
                ]),
                _ => None,
            };
            for (i, c) in acc.iter().enumerate() {
                let r = block.row0 + r0 + i;
                let o = out.add(epi.row(r) * block.n + col0);
                let mut v = *c;
                if !block.first {
                    v[0] = _mm512_add_ps(v[0], _mm512_loadu_ps(o));
                    v[1] = _mm512_add_ps(v[1], _mm512_loadu_ps(o.add(NR)));
                }
                if block.last {
                    if let Some(b) = bias {
                        v[0] = _mm512_add_ps(v[0], b[0]);
                        v[1] = _mm512_add_ps(v[1], b[1]);
                    }
                    if let Some(act) = epi.act {
                        v[0] = vmath::act(v[0], act);
                        v[1] = vmath::act(v[1], act);
                    }
                    if let Some(res) = &epi.residual {
                        let rp = res.values.as_ptr().add(res.row(r) * block.n + col0);
                        v[0] = _mm512_add_ps(v[0], _mm512_loadu_ps(rp));
                        v[1] = _mm512_add_ps(v[1], _mm512_loadu_ps(rp.add(NR)));
                    }
                }
                _mm512_storeu_ps(o, v[0]);
                _mm512_storeu_ps(o.add(NR), v[1]);
            }
        }

        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        unsafe fn halves(v: __m512) -> [__m256; 2] {
            let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
            [_mm512_castps512_ps256(v), _mm256_castpd_ps(hi)]
        }

        /// `P × R × 2` accumulators: the first `R` rows of `P` packed
        /// micro-panels (`a[p][k·MR + i]`) against the panel pair, `kc` deep.
        /// Each element sums its products in the same order as the AVX2
        /// tile: the two paths agree to the bit.
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        unsafe fn tile<const P: usize, const R: usize>(
            kc: usize,
            a: [*const f32; P],
            b: *const f32,
            prefetch: Option<*const f32>,
        ) -> [[[__m512; 2]; R]; P] {
            let mut c = [[[_mm512_setzero_ps(); 2]; R]; P];
            let (mut a, mut b0) = (a, b);
            let mut b1 = b.add(kc * NR);
            macro_rules! step {
                () => {
                    let w0 = _mm512_loadu_ps(b0);
                    let w1 = _mm512_loadu_ps(b1);
                    for (cp, ap) in c.iter_mut().zip(&mut a) {
                        for (i, ci) in cp.iter_mut().enumerate() {
                            let ai = _mm512_set1_ps(*ap.add(i));
                            ci[0] = _mm512_fmadd_ps(ai, w0, ci[0]);
                            ci[1] = _mm512_fmadd_ps(ai, w1, ci[1]);
                        }
                        *ap = ap.add(MR);
                    }
                    b0 = b0.add(NR);
                    b1 = b1.add(NR);
                };
            }
            match prefetch {
                // The pair is 2·kc lines: two per step.
                Some(mut p) => {
                    for _ in 0..kc {
                        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(NR) as *const i8);
                        p = p.wrapping_add(2 * NR);
                        step!();
                    }
                }
                None => {
                    for _ in 0..kc {
                        step!();
                    }
                }
            }
            c
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

    /// A permutation of 0..n, deterministic.
    fn permutation(n: usize, seed: u64) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        let r = values(n, seed);
        for i in (1..n).rev() {
            let j = ((r[i] + 1.0) * 0.5 * (i + 1) as f32) as usize % (i + 1);
            p.swap(i, j);
        }
        p
    }

    /// The product through the same row maps, in f64, step by step.
    fn reference(
        lhs: &Lhs,
        m: usize,
        w: &[f32],
        n: usize,
        epi: &Epilogue,
        out_rows: usize,
    ) -> Vec<f64> {
        let k = lhs.k();
        let mut out = vec![f64::NAN; out_rows * n];
        for r in 0..m {
            let mut row: Vec<f64> = (0..lhs.parts())
                .flat_map(|p| lhs.part(r, p).iter().map(|&v| f64::from(v)))
                .collect();
            if let Some(norm) = &lhs.norm {
                let mean = row.iter().sum::<f64>() / k as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k as f64;
                let rstd = 1.0 / (var + f64::from(norm.eps)).sqrt();
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (*v - mean) * rstd * f64::from(norm.gamma[j]) + f64::from(norm.beta[j]);
                }
            }
            let dst = epi.row(r);
            for j in 0..n {
                let mut y: f64 = (0..k).map(|t| row[t] * f64::from(w[j * k + t])).sum();
                if let Some(b) = epi.bias {
                    y += f64::from(b[j]);
                }
                y = f64::from(crate::kernels::simd::act(y as f32, epi.act));
                if let Some(res) = &epi.residual {
                    y += f64::from(res.values[res.row(r) * n + j]);
                }
                out[dst * n + j] = y;
            }
        }
        out
    }

    fn compare(what: &str, got: &[f32], want: &[f64], k: usize) {
        let tol = 3e-6 * (k as f64).sqrt().max(1.0) + 1e-6;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            if w.is_nan() {
                continue;
            }
            let d = (f64::from(g) - w).abs();
            assert!(
                d <= tol * w.abs().max(1.0),
                "{what}: value {i}: {g} against {w} (tolerance {tol:e})"
            );
        }
    }

    /// Even or not, the micro-panels of a block take its rows in order, each
    /// once, at most `MR` each; even, within one row of each other.
    #[test]
    fn micro_panels_cover_the_rows() {
        for rows in 1usize..=300 {
            for even in [false, true] {
                let panels = rows.div_ceil(MR);
                let split: Vec<(usize, usize)> = (0..panels)
                    .map(|ip| micro_panel_rows(rows, even, ip))
                    .collect();
                let mut next = 0;
                for &(first, len) in &split {
                    assert_eq!(first, next, "{rows} rows, even {even}: {split:?}");
                    assert!((1..=MR).contains(&len), "{rows} rows: {split:?}");
                    next += len;
                }
                assert_eq!(next, rows, "{rows} rows, even {even}: {split:?}");
                let lens = split.iter().map(|s| s.1);
                if even {
                    assert!(
                        lens.clone().max().unwrap() - lens.min().unwrap() <= 1,
                        "{split:?}"
                    );
                } else {
                    assert!(split[..panels - 1].iter().all(|s| s.1 == MR), "{split:?}");
                }
            }
        }
        assert_eq!(
            (0..3)
                .map(|ip| micro_panel_rows(13, true, ip))
                .collect::<Vec<_>>(),
            [(0, 5), (5, 4), (9, 4)]
        );
    }

    /// Shapes around every edge: rows past a micro-panel (6) and a row block
    /// (288), depths past a K block (256 portable, 512 SIMD), widths past a
    /// 16-wide panel.
    #[test]
    fn products_match_f64_on_edge_shapes() {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (7, 16, 16),
            (13, 37, 40),
            (290, 300, 33),
            (600, 70, 130),
            (64, 513, 48),
            (31, 40, 200),
            // 7–11 rows left over: both micro-panels in one pass, the
            // second's last columns through the half-width store.
            (11, 768, 56),
            (9, 600, 24),
            (23, 100, 64),
        ] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let packed = PackedMatrix::from_weight(&w, n, k).unwrap();
            let bias = values(n, 3);
            let residual = values(m * n, 4);
            for epi in [
                Epilogue::default(),
                Epilogue {
                    bias: Some(&bias),
                    act: Some(Activation::Gelu),
                    ..Default::default()
                },
                Epilogue {
                    bias: Some(&bias),
                    residual: Some(Residual::rows(&residual)),
                    ..Default::default()
                },
            ] {
                let lhs = Lhs::rows(&x, k);
                let want = reference(&lhs, m, &w, n, &epi, m);
                // Every microkernel this CPU runs; the SIMD ones sum each
                // element's products in one order, so agree to the bit.
                let mut simd: Option<(Isa, Vec<f32>)> = None;
                for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                    if !isa.available() {
                        println!("{isa:?}: not on this CPU, skipped");
                        continue;
                    }
                    let mut got = vec![0f32; m * n];
                    gemm_on(isa, &lhs, m, &packed, &epi, &mut got).unwrap();
                    compare(&format!("{isa:?} {m}x{k}x{n}"), &got, &want, k);
                    match &simd {
                        Some((first, values)) => {
                            assert_eq!(&got, values, "{isa:?} against {first:?}: {m}x{k}x{n}")
                        }
                        None if isa != Isa::Portable => simd = Some((isa, got)),
                        None => {}
                    }
                }
                let mut out = vec![0f32; m * n];
                gemm(&lhs, m, &packed, &epi, &mut out).unwrap();
                compare(&format!("{m}x{k}x{n}"), &out, &want, k);
                // One thread gives the same values.
                let mut serial = vec![0f32; m * n];
                unsafe { gemm_serial(&lhs, m, &packed, &epi, serial.as_mut_ptr(), m * n).unwrap() };
                assert_eq!(serial, out, "{m}x{k}x{n}: serial");
            }
        }
    }

    #[test]
    fn activations_match_the_scalar_ones() {
        let (m, k, n) = (9, 20, 35);
        let x = values(m * k, 5);
        let w = values(n * k, 6);
        let packed = PackedMatrix::from_weight(&w, n, k).unwrap();
        for act in [
            Activation::Gelu,
            Activation::GeluNew,
            Activation::Relu,
            Activation::Tanh,
            Activation::Silu,
        ] {
            let epi = Epilogue {
                act: Some(act),
                ..Default::default()
            };
            let lhs = Lhs::rows(&x, k);
            let mut out = vec![0f32; m * n];
            gemm(&lhs, m, &packed, &epi, &mut out).unwrap();
            compare(
                &format!("{act:?}"),
                &out,
                &reference(&lhs, m, &w, n, &epi, m),
                k,
            );
        }
    }

    /// A Swin block's maps: rows gathered into window order and normalised
    /// as they are read, written back in token order with the residual read
    /// there; and the 2×2 merge of four rows into one.
    #[test]
    fn gathers_norms_and_scatters_match_f64() {
        let (maps, l, c, n) = (3, 40, 24, 20);
        let m = maps * l;
        let x = values(m * c, 7);
        let order = permutation(l, 8);
        let (gamma, beta) = (values(c, 9), values(c, 10));
        let w = values(n * c, 11);
        let packed = PackedMatrix::from_weight(&w, n, c).unwrap();
        let residual = values(m * n, 12);
        let norm = RowNorm {
            gamma: &gamma,
            beta: &beta,
            eps: 1e-5,
        };
        let lhs = Lhs::rows(&x, c)
            .gathered(RowMap::Gather {
                index: &order,
                parts: 1,
                period: l,
                src_period: l,
            })
            .normed(norm);
        let scatter = Scatter {
            index: &order,
            period: l,
        };
        let epi = Epilogue {
            residual: Some(Residual {
                values: &residual,
                rows: Some(scatter),
            }),
            scatter: Some(scatter),
            ..Default::default()
        };
        let mut out = vec![0f32; m * n];
        gemm(&lhs, m, &packed, &epi, &mut out).unwrap();
        compare(
            "window gather",
            &out,
            &reference(&lhs, m, &w, n, &epi, m),
            c,
        );

        // 2×2 merge: four source rows per row, then a LayerNorm over all four.
        let sources: Vec<u32> = (0..l as u32 / 4)
            .flat_map(|t| [4 * t, 4 * t + 2, 4 * t + 1, 4 * t + 3])
            .collect();
        let (g4, b4) = (values(4 * c, 13), values(4 * c, 14));
        let w4 = values(n * 4 * c, 15);
        let packed4 = PackedMatrix::from_weight(&w4, n, 4 * c).unwrap();
        let lhs = Lhs::rows(&x, c)
            .gathered(RowMap::Gather {
                index: &sources,
                parts: 4,
                period: l / 4,
                src_period: l,
            })
            .normed(RowNorm {
                gamma: &g4,
                beta: &b4,
                eps: 1e-5,
            });
        let m4 = maps * l / 4;
        let mut out = vec![0f32; m4 * n];
        gemm(&lhs, m4, &packed4, &Epilogue::default(), &mut out).unwrap();
        compare(
            "2x2 merge",
            &out,
            &reference(&lhs, m4, &w4, n, &Epilogue::default(), m4),
            4 * c,
        );

        // A list of rows in, scattered to a list of rows out, on one thread.
        let rows: Vec<u32> = vec![17, 3, 101, 64, 5];
        let lhs = Lhs::rows(&x, c).gathered(RowMap::list(&rows));
        let epi = Epilogue {
            scatter: Some(Scatter::list(&rows)),
            residual: Some(Residual::rows(&residual)),
            ..Default::default()
        };
        let mut out = vec![f32::NAN; m * n];
        unsafe { gemm_serial(&lhs, rows.len(), &packed, &epi, out.as_mut_ptr(), m * n).unwrap() };
        compare(
            "row lists",
            &out,
            &reference(&lhs, rows.len(), &w, n, &epi, m),
            c,
        );
        for r in 0..m {
            let written = !out[r * n].is_nan();
            assert_eq!(written, rows.contains(&(r as u32)), "row {r}");
        }
    }

    #[test]
    fn bad_shapes_and_maps_are_errors() {
        let (m, k, n) = (8, 4, 3);
        let x = values(m * k, 1);
        let packed = PackedMatrix::from_weight(&values(n * k, 2), n, k).unwrap();
        let mut out = vec![0f32; m * n];
        let lhs = Lhs::rows(&x, k);
        // Too many rows for the source, too few for the output.
        assert!(gemm(
            &lhs,
            m + 1,
            &packed,
            &Epilogue::default(),
            &mut vec![0f32; (m + 1) * n]
        )
        .is_err());
        assert!(gemm(&lhs, m, &packed, &Epilogue::default(), &mut out[..n]).is_err());
        // A scatter sending two rows to one, a gather past the source.
        let twice = [0u32, 1, 1, 3, 4, 5, 6, 7];
        let epi = Epilogue {
            scatter: Some(Scatter {
                index: &twice,
                period: 8,
            }),
            ..Default::default()
        };
        assert!(gemm(&lhs, m, &packed, &epi, &mut out).is_err());
        let past = [0u32, 9];
        let lhs_past = Lhs::rows(&x, k).gathered(RowMap::list(&past));
        assert!(gemm(&lhs_past, 2, &packed, &Epilogue::default(), &mut out).is_err());
        // A weight of the wrong width.
        assert!(gemm(
            &Lhs::rows(&x, 2),
            m,
            &packed,
            &Epilogue::default(),
            &mut out
        )
        .is_err());
        assert!(PackedMatrix::from_weight(&[1.0; 5], 2, 3).is_err());
    }

    /// A text query's products with their weights coming from memory, as in
    /// a real query (36 distinct 768 × 3072 weights, 340 MB, more than any
    /// cache), against the same product with one weight in cache: GB/s of
    /// weight read and GFLOP/s, for a few row counts.
    /// `cargo test --release -p clap-model --lib sgemm_cold -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sgemm_cold() {
        let (k, n) = (768, 3072);
        let weights: Vec<PackedMatrix> = (0..36)
            .map(|i| PackedMatrix::from_weight(&values(n * k, 10 + i), n, k).unwrap())
            .collect();
        let epi = Epilogue::default();
        for m in [1usize, 6, 7, 8, 11, 13, 19, 24, 64] {
            let x = values(m * k, 1);
            let lhs = Lhs::rows(&x, k);
            let mut out = vec![0f32; m * n];
            let mut median_ms = |ws: &[&PackedMatrix]| {
                let mut runs: Vec<f64> = (0..7)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        for w in ws {
                            gemm(&lhs, m, w, &epi, &mut out).unwrap();
                        }
                        t.elapsed().as_secs_f64() * 1e3 / ws.len() as f64
                    })
                    .collect();
                runs.sort_by(f64::total_cmp);
                runs[3]
            };
            let cold = median_ms(&weights.iter().collect::<Vec<_>>());
            let hot = median_ms(&[&weights[0]; 36]);
            let flop = 2.0 * (m * k * n) as f64;
            println!(
                "{m} rows: from memory {cold:.3} ms a weight ({:.1} GB/s, {:.1} GFLOP/s), \
                 in cache {hot:.3} ms ({:.1} GFLOP/s)",
                (n * k * 4) as f64 / cold / 1e6,
                flop / cold / 1e6,
                flop / hot / 1e6
            );
        }
    }

    /// Timing of the packed product against candle's matmul on the audio
    /// tower's shapes: `cargo test --release -p clap-model --lib sgemm_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sgemm_speed() {
        use candle_core::{Device, Tensor};
        for (m, k, n) in [
            (2048, 512, 1536),
            (2048, 512, 2048),
            (2048, 2048, 512),
            (256, 512, 2048),
            (32768, 128, 384),
            (64, 1024, 3072),
            (10, 768, 3072),
            (144, 256, 16),
            (144, 256, 256),
        ] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let packed = PackedMatrix::from_weight(&w, n, k).unwrap();
            let mut out = vec![0f32; m * n];
            let lhs = Lhs::rows(&x, k);
            let epi = Epilogue::default();
            let reps = (2e10 / (2.0 * (m * k * n) as f64)).clamp(3.0, 2000.0) as usize;
            let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
            let mut ours = String::new();
            for isa in [Isa::Avx2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available())
            {
                gemm_on(isa, &lhs, m, &packed, &epi, &mut out).unwrap();
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    gemm_on(isa, &lhs, m, &packed, &epi, &mut out).unwrap();
                }
                let secs = t.elapsed().as_secs_f64() / reps as f64;
                ours += &format!("{isa:?} {:.1}, ", gf(secs));
            }
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let y = xt.matmul(&wt.t().unwrap()).unwrap();
            let t = std::time::Instant::now();
            for _ in 0..reps {
                let _ = xt.matmul(&wt.t().unwrap()).unwrap();
            }
            let theirs = t.elapsed().as_secs_f64() / reps as f64;
            let want = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let err = want
                .iter()
                .zip(&out)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!(
                "{m}x{k}x{n}: packed {ours}candle {:.1} GFLOP/s, max diff {err:e}",
                gf(theirs)
            );
        }
    }
}
