//! Exact rational resampling as small matrix products.
//!
//! With `rate / 48000 = p/q` in lowest terms and `q` phases, rubato's `Nearest` lookup reads, for
//! output `j`, the taps of phase `s_j` against input samples `I_j .. I_j + len`, where
//! `(j + 1)·p − (len/2)·q = I_j·q + s_j` (its output `j` is centred on input position
//! `(j + 1)·p/q − len/2`; see the module docs of [`super`]). Both repeat every `q` outputs, the
//! input position moving on by `p`: output `b·q + r` is the taps of phase `s_r` against the input
//! from `b·p + I_r`. So one *block* of `q` outputs is a fixed `q × (band)` matrix times a window of
//! the input that slides by `p` per block, and many blocks at once are a matrix product.
//!
//! The rows go in groups of [`LANES`] consecutive outputs; a group's rows start within
//! `LANES·p/q` input samples of each other, so its matrix is only that much wider than one filter
//! (~5 % at 44.1 kHz). The microkernels hold one column of a group (16 phases) in a vector and
//! broadcast one input sample of each of up to 12 blocks against it: every load feeds a whole FMA
//! of 16 outputs, where a dot product per output sample (what rubato's loop does) loads two values
//! per multiply-add and ends every output with a horizontal sum. Same taps, same products; the
//! sums run in another order, so results differ from rubato's by rounding only
//! (`tests::blocks_match_rubato`).

use std::sync::{Arc, Mutex};

/// Outputs per row group: one AVX-512 vector of f32, two AVX2 vectors.
pub(super) const LANES: usize = 16;
/// Rows of the largest block made to fill whole row groups (`lcm(q, LANES)`); above it a block is
/// `q` rows and its last group is partly empty.
const MAX_ALIGNED_BLOCK: usize = 1024;
/// Banks kept for reuse (one per input rate): building one costs a sine per tap and phase.
const CACHED_BANKS: usize = 8;

/// Which microkernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub(super) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every kernel this CPU runs (for the tests).
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                all.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Isa::Avx512);
            }
        }
        all
    }

    /// Blocks per microkernel call: the accumulators it keeps in registers.
    fn blocks_per_tile(self) -> usize {
        match self {
            Isa::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 6,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 12,
        }
    }
}

/// `LANES` consecutive rows of a block's matrix, stored column by column.
#[derive(Debug)]
struct Group {
    /// The block's output of its first row.
    row: usize,
    /// Rows in use (fewer than `LANES` only in the last group of a block that is not a multiple).
    lanes: usize,
    /// Input sample of its first column, from the block's start.
    start: isize,
    width: usize,
    /// `width` columns of `LANES` taps (zero outside each row's filter).
    coeffs: Vec<f32>,
}

/// The filter of one input rate, laid out for blocks.
#[derive(Debug)]
pub(super) struct Bank {
    /// Input samples a block moves on by.
    pub(super) step_in: usize,
    /// Outputs a block makes.
    pub(super) step_out: usize,
    /// The input a block reads, from its start `b·step_in`: `reads_from .. reads_to`.
    pub(super) reads_from: isize,
    pub(super) reads_to: isize,
    groups: Vec<Group>,
    isa: Isa,
}

impl Bank {
    /// The bank for `p/q` input samples per output with `phases` = rubato's taps, phase-major
    /// (`q` filters of `len` taps).
    pub(super) fn new(p: usize, q: usize, phases: &[f32], len: usize, isa: Isa) -> Bank {
        assert_eq!(phases.len(), q * len, "one filter per phase");
        let aligned = q / super::gcd(q as u64, LANES as u64) as usize * LANES;
        let step_out = if aligned <= MAX_ALIGNED_BLOCK {
            aligned
        } else {
            q
        };
        let blocks_per_step = step_out / q;
        let half = (len / 2) as i64;
        // (first input sample, phase) of each output of a block.
        let at: Vec<(isize, usize)> = (0..step_out as i64)
            .map(|r| {
                let a = (r + 1) * p as i64 - half * q as i64;
                (
                    a.div_euclid(q as i64) as isize,
                    a.rem_euclid(q as i64) as usize,
                )
            })
            .collect();
        let groups = (0..step_out)
            .step_by(LANES)
            .map(|row| {
                let lanes = LANES.min(step_out - row);
                let start = at[row].0;
                let width = (at[row + lanes - 1].0 - start) as usize + len;
                let mut coeffs = vec![0f32; width * LANES];
                for lane in 0..lanes {
                    let (first, phase) = at[row + lane];
                    let offset = (first - start) as usize;
                    let taps = &phases[phase * len..(phase + 1) * len];
                    for (k, &t) in taps.iter().enumerate() {
                        coeffs[(offset + k) * LANES + lane] = t;
                    }
                }
                Group {
                    row,
                    lanes,
                    start,
                    width,
                    coeffs,
                }
            })
            .collect();
        Bank {
            step_in: p * blocks_per_step,
            step_out,
            reads_from: at[0].0,
            reads_to: at[step_out - 1].0 + len as isize,
            groups,
            isa,
        }
    }

    /// Blocks `first .. first + out.len() / step_out` into `out`, from `input`, which holds the
    /// stream's samples from index `input_start` on and must cover what those blocks read.
    pub(super) fn run(&self, input: &[f32], input_start: isize, first: usize, out: &mut [f32]) {
        assert_eq!(out.len() % self.step_out, 0, "whole blocks");
        let blocks = out.len() / self.step_out;
        if blocks == 0 {
            return;
        }
        let lo = (first * self.step_in) as isize + self.reads_from - input_start;
        let hi = ((first + blocks - 1) * self.step_in) as isize + self.reads_to - input_start;
        assert!(
            lo >= 0 && hi as usize <= input.len(),
            "input {input_start}+{} does not cover blocks {first}+{blocks}",
            input.len()
        );
        let tile = self.isa.blocks_per_tile();
        for g in &self.groups {
            let mut b = 0;
            while b < blocks {
                let n = tile.min(blocks - b);
                let from = ((first + b) * self.step_in) as isize + g.start - input_start;
                let call = Tile {
                    coeffs: g.coeffs.as_ptr(),
                    width: g.width,
                    input: input[from as usize..].as_ptr(),
                    step_in: self.step_in,
                    out: out[b * self.step_out + g.row..].as_mut_ptr(),
                    step_out: self.step_out,
                    lanes: g.lanes,
                };
                // SAFETY: the tile reads input[from + i·step_in + c] for i < n, c < width:
                // within `lo..hi` (checked above), as the group's columns lie within the
                // block's reads; it writes out[(b + i)·step_out + row + lane], lane < lanes,
                // inside block b + i < blocks; coeffs holds width·LANES values.
                unsafe { call.run(self.isa, n) };
                b += n;
            }
        }
    }
}

/// One microkernel call: `n` blocks × one row group.
struct Tile {
    coeffs: *const f32,
    width: usize,
    input: *const f32,
    step_in: usize,
    out: *mut f32,
    step_out: usize,
    lanes: usize,
}

macro_rules! dispatch {
    ($f:ident, $self:ident, $n:expr, $($k:literal)+) => {
        match $n {
            $($k => $f::<$k>($self),)+
            n => unreachable!("tile of {n} blocks"),
        }
    };
}

impl Tile {
    /// # Safety
    /// As [`Bank::run`] checks; `isa` must run on this CPU and `n` be at most its tile.
    unsafe fn run(&self, isa: Isa, n: usize) {
        match isa {
            Isa::Portable => dispatch!(portable, self, n, 1 2 3 4),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => dispatch!(avx2, self, n, 1 2 3 4 5 6),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => dispatch!(avx512, self, n, 1 2 3 4 5 6 7 8 9 10 11 12),
        }
    }
}

/// Plain Rust, written so the compiler keeps the accumulators in vector registers (SSE2 on any
/// x86-64, NEON on aarch64).
///
/// # Safety
/// As [`Tile::run`].
unsafe fn portable<const N: usize>(t: &Tile) {
    let mut acc = [[0f32; LANES]; N];
    for c in 0..t.width {
        let col: [f32; LANES] = std::ptr::read_unaligned(t.coeffs.add(c * LANES).cast());
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = *t.input.add(i * t.step_in + c);
            for (a, w) in acc.iter_mut().zip(col) {
                *a += w * x;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        std::ptr::copy_nonoverlapping(acc.as_ptr(), t.out.add(i * t.step_out), t.lanes);
    }
}

/// # Safety
/// As [`Tile::run`], with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const N: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); N];
    let mut hi = [_mm256_setzero_ps(); N];
    for c in 0..t.width {
        let w_lo = _mm256_loadu_ps(t.coeffs.add(c * LANES));
        let w_hi = _mm256_loadu_ps(t.coeffs.add(c * LANES + 8));
        for i in 0..N {
            let x = _mm256_broadcast_ss(&*t.input.add(i * t.step_in + c));
            lo[i] = _mm256_fmadd_ps(w_lo, x, lo[i]);
            hi[i] = _mm256_fmadd_ps(w_hi, x, hi[i]);
        }
    }
    for i in 0..N {
        let out = t.out.add(i * t.step_out);
        if t.lanes == LANES {
            _mm256_storeu_ps(out, lo[i]);
            _mm256_storeu_ps(out.add(8), hi[i]);
        } else {
            let mut row = [0f32; LANES];
            _mm256_storeu_ps(row.as_mut_ptr(), lo[i]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), hi[i]);
            std::ptr::copy_nonoverlapping(row.as_ptr(), out, t.lanes);
        }
    }
}

/// # Safety
/// As [`Tile::run`], with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const N: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); N];
    for c in 0..t.width {
        let w = _mm512_loadu_ps(t.coeffs.add(c * LANES));
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*t.input.add(i * t.step_in + c));
            *acc = _mm512_fmadd_ps(w, x, *acc);
        }
    }
    let mask: __mmask16 = if t.lanes == LANES {
        !0
    } else {
        (1 << t.lanes) - 1
    };
    for (i, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.out.add(i * t.step_out), mask, *acc);
    }
}

/// The bank for an input rate, built once and shared by every stream at that rate.
pub(super) fn shared(in_rate: u32, build: impl FnOnce() -> Bank) -> Arc<Bank> {
    static CACHE: Mutex<Vec<(u32, Arc<Bank>)>> = Mutex::new(Vec::new());
    if let Some((_, bank)) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(rate, _)| *rate == in_rate)
    {
        return bank.clone();
    }
    // Built outside the lock: another rate's streams need not wait.
    let bank = Arc::new(build());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.iter().any(|(rate, _)| *rate == in_rate) {
        if cache.len() == CACHED_BANKS {
            cache.remove(0);
        }
        cache.push((in_rate, bank.clone()));
    }
    bank
}
