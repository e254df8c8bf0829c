//! Streaming resampling to the model rate (48 kHz) with rubato's windowed-sinc filters.
//!
//! # Filter choice
//!
//! The model is LAION CLAP at 48 kHz; its mel front end reads up to 14 kHz, and what ends up in
//! the embedding is decided by the band below that. So the resampler must (a) keep the passband
//! flat well past 14 kHz — we aim for flat to ~20 kHz so nothing near the top of the mel range is
//! tilted — and (b) reject aliases/images strongly, because folded energy lands *inside* the
//! analysed band. Latency is irrelevant (files, not live audio). Hence:
//!
//! * [`SincFixedIn`] with a long sinc: [`SINC_LEN`] = 256 taps at the input rate when upsampling
//!   (~5.8 ms at 44.1 kHz), scaled by the decimation factor when downsampling (512 taps at 96 kHz),
//!   so the transition band is equally narrow in Hz either way;
//! * the `BlackmanHarris2` window (squared Blackman-Harris): side lobes far below anything the
//!   model could see, paid for with a wider main lobe that the long sinc narrows again;
//! * cutoff [`F_CUTOFF_UP`] = 0.95 × the input Nyquist when upsampling, [`F_CUTOFF_DOWN`] = 0.91 × 24 kHz
//!   when downsampling. Measured (see the tests): 44.1 kHz in, flat within 0.001 dB to 20 kHz,
//!   −7.5 dB at 21 kHz, images of 15–20 kHz tones ≥ 150 dB down; 96 kHz in, flat within 0.01 dB
//!   to 21 kHz, −11 dB at 22 kHz, ≥ 110 dB down from 23 kHz (aliases of 24.5–30 kHz ≥ 130 dB down);
//! * exact polyphase filtering where `rate / 48000` is a fraction whose denominator is at most
//!   [`MAX_EXACT_PHASES`] (every common rate: 8, 11.025, 16, 22.05, 24, 32, 44.1, 88.2, 96,
//!   192 kHz, ...): the oversampling factor is that denominator, so `Nearest` lookup always hits
//!   the exact filter phase, with no interpolation error. These run on our own block engine
//!   ([`blocks`]): the same taps as rubato's, applied as small matrix products, 10 s at 44.1 kHz
//!   in ~2 ms on one core with AVX-512 (~3 ms AVX2) where rubato's loop with our dot product
//!   took ~22 ms (`tests::resample_speed`). Other rates use rubato with 1024× oversampling and
//!   cubic interpolation between phases (~85 dB SNR at 15 kHz).
//!
//! # Time alignment
//!
//! Output sample `m` is the input signal at time `m / 48000` s — exactly for the polyphase
//! designs, to within 1/1000 of a sample otherwise:
//! rubato's `SincFixedIn` centres output `j` on input position `(j + 1)·t − 1 + 1/f`
//! (`t` = input rate / 48 000, `f` = oversampling factor). We prepend `P` zeros, choosing `P` so the
//! resulting delay is (as near as possible to) a whole number `D` of output samples, and drop the
//! first `D` outputs. At the end, [`StreamResampler::finish`] pushes zeros through until exactly
//! `round(n_in · 48000 / rate)` samples have come out.

use rubato::sinc_interpolator::SincInterpolator;
use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use crate::error::{AudioError, Result};
use crate::MODEL_SAMPLE_RATE;

mod blocks;
use blocks::Bank;

/// Sinc length in taps at the input rate when upsampling; multiplied by the decimation factor
/// when downsampling (see the module docs).
pub const SINC_LEN: usize = 256;
/// Cutoff when upsampling, relative to the input's Nyquist frequency (44.1 kHz in: −6 dB at ~21 kHz).
pub const F_CUTOFF_UP: f32 = 0.95;
/// Cutoff when downsampling, relative to 24 kHz (−6 dB at ~21.9 kHz, ≥ 100 dB down from 23 kHz).
pub const F_CUTOFF_DOWN: f32 = 0.91;
/// Largest ratio denominator for which exact polyphase filtering is used.
pub const MAX_EXACT_PHASES: u64 = 1024;
/// Oversampling factor for rates without a small exact ratio (cubic interpolation between phases).
const CUBIC_OVERSAMPLING: usize = 1024;
/// Input frames per rubato call.
const MIN_CHUNK: usize = 2048;
/// Blocks an exact design computes at once (fewer only at the end of a stream): enough that the
/// microkernels run whole tiles; for 44.1 kHz, 48 blocks are 7056 input samples.
const MIN_BLOCKS: usize = 48;

/// A resampler from `in_rate` to 48 kHz that is fed and drained in arbitrary chunks.
///
/// Input rates of exactly 48 kHz pass straight through, untouched.
pub struct StreamResampler {
    in_rate: u32,
    engine: Option<Engine>,
    n_in: u64,
    n_out: u64,
}

enum Engine {
    /// Exact designs: the filter as a matrix, blocks of output at a time (see [`blocks`]).
    Blocks(BlockEngine),
    /// Other rates: rubato's interpolating resampler.
    Sinc(SincEngine),
}

/// The stream state of an exact design.
struct BlockEngine {
    bank: std::sync::Arc<Bank>,
    /// The stream's input from index `start` on; its first `pre_pad` samples are the alignment
    /// zeros, and before index 0 it is silence.
    input: Vec<f32>,
    start: isize,
    /// The next block to compute.
    next: usize,
    pre_pad: usize,
    delay: usize,
    /// Outputs still to drop.
    skip: usize,
}

struct SincEngine {
    rs: SincFixedIn<f32>,
    chunk: usize,
    /// Input not yet handed to rubato (starts with the alignment zeros).
    staging: Vec<f32>,
    out: Vec<Vec<f32>>,
    /// Leading zeros that make the delay a whole number of output samples.
    pre_pad: usize,
    /// That whole-number delay, in output samples.
    delay: usize,
    /// Output samples still to drop.
    skip: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("in_rate", &self.in_rate)
            .field("passthrough", &self.engine.is_none())
            .field("n_in", &self.n_in)
            .field("n_out", &self.n_out)
            .finish()
    }
}

fn resample_err(detail: impl Into<String>) -> AudioError {
    AudioError::Resample {
        path: Default::default(),
        detail: detail.into(),
    }
}

/// `in_rate / 48000` in lowest terms: `(p, q)`, input samples per `q` outputs.
fn reduced_ratio(in_rate: u32) -> (u64, u64) {
    let g = gcd(u64::from(in_rate), u64::from(MODEL_SAMPLE_RATE));
    (u64::from(in_rate) / g, u64::from(MODEL_SAMPLE_RATE) / g)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// How a given input rate is resampled.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Design {
    f_cutoff: f32,
    sinc_len: usize,
    oversampling: usize,
    exact: bool,
    /// Zeros prepended and whole output samples dropped to align output with input.
    pre_pad: usize,
    delay: usize,
}

impl Design {
    /// rubato's parameters for this design.
    fn sinc_params(&self) -> SincInterpolationParameters {
        SincInterpolationParameters {
            sinc_len: self.sinc_len,
            f_cutoff: self.f_cutoff,
            oversampling_factor: self.oversampling,
            interpolation: if self.exact {
                SincInterpolationType::Nearest
            } else {
                SincInterpolationType::Cubic
            },
            window: WindowFunction::BlackmanHarris2,
        }
    }

    /// rubato's resampler with our own dot product (the same filter, see [`Taps`]).
    fn resampler(
        &self,
        ratio: f64,
        chunk: usize,
    ) -> std::result::Result<SincFixedIn<f32>, rubato::ResamplerConstructionError> {
        let params = self.sinc_params();
        let taps = Box::new(Taps::new(&params, ratio));
        SincFixedIn::new_with_interpolator(ratio, 1.0, params.interpolation, taps, chunk, 1)
    }

    /// An exact design's filter as blocks (rubato's taps, rearranged).
    fn bank(&self, in_rate: u32, isa: blocks::Isa) -> Bank {
        let (p, q) = reduced_ratio(in_rate);
        let ratio = f64::from(MODEL_SAMPLE_RATE) / f64::from(in_rate);
        let taps = Taps::new(&self.sinc_params(), ratio);
        assert_eq!(
            taps.phases as u64, q,
            "an exact design has one phase per output"
        );
        Bank::new(p as usize, q as usize, &taps.sincs, taps.len, isa)
    }

    fn for_rate(in_rate: u32) -> Design {
        let f_cutoff = if in_rate < MODEL_SAMPLE_RATE {
            F_CUTOFF_UP
        } else {
            F_CUTOFF_DOWN
        };
        Design::custom(in_rate, SINC_LEN, f_cutoff)
    }

    fn custom(in_rate: u32, sinc_base: usize, f_cutoff: f32) -> Design {
        let (p, q) = reduced_ratio(in_rate);
        let t = p as f64 / q as f64; // input samples per output sample
        let exact = q <= MAX_EXACT_PHASES;
        let oversampling = if exact {
            q as usize
        } else {
            CUBIC_OVERSAMPLING
        };
        // Constant length in time at the output rate: the transition band stays as narrow in Hz.
        let sinc_len = ((sinc_base as f64 * t.max(1.0)).ceil() as usize).div_ceil(8) * 8;

        // Delay in output samples with `pp` leading zeros (see module docs); pick the smallest `pp`
        // that makes it (nearly) whole. Exact designs always hit zero residual within `p` tries.
        let delay_for = |pp: u64| (pp as f64 + 1.0 - 1.0 / oversampling as f64) / t - 1.0;
        let mut best = (f64::INFINITY, 0u64);
        // Delay must not be negative: start where it reaches 0; residuals repeat every `p`.
        let first = (t - 1.0 + 1.0 / oversampling as f64 - 1e-9).ceil().max(0.0) as u64;
        for pp in first..first + p.min(200_000) {
            let d = delay_for(pp);
            if d < -1e-9 {
                continue;
            }
            let residual = (d - d.round()).abs();
            if residual < best.0 - 1e-12 {
                best = (residual, pp);
                if residual < 1e-9 {
                    break;
                }
            }
        }
        let pre_pad = best.1;
        Design {
            f_cutoff,
            sinc_len,
            oversampling,
            exact,
            pre_pad: pre_pad as usize,
            delay: delay_for(pre_pad).round() as usize,
        }
    }
}

impl StreamResampler {
    /// A resampler from `in_rate` Hz to 48 kHz (pass-through when `in_rate` is 48 kHz).
    pub fn new(in_rate: u32) -> Result<Self> {
        if !(crate::decode::MIN_SAMPLE_RATE..=crate::decode::MAX_SAMPLE_RATE).contains(&in_rate) {
            return Err(resample_err(format!(
                "input sample rate {in_rate} Hz is out of range"
            )));
        }
        let engine = if in_rate == MODEL_SAMPLE_RATE {
            None
        } else {
            let d = Design::for_rate(in_rate);
            Some(if d.exact {
                Engine::Blocks(BlockEngine::new(in_rate, d))
            } else {
                Engine::Sinc(SincEngine::new(in_rate, d)?)
            })
        };
        Ok(StreamResampler {
            in_rate,
            engine,
            n_in: 0,
            n_out: 0,
        })
    }

    /// A resampler on a given engine (the tests compare engines).
    #[cfg(test)]
    fn with_engine(in_rate: u32, engine: Engine) -> Self {
        StreamResampler {
            in_rate,
            engine: Some(engine),
            n_in: 0,
            n_out: 0,
        }
    }

    /// The input rate this resampler was built for.
    pub fn input_rate(&self) -> u32 {
        self.in_rate
    }

    /// True when the input is already 48 kHz and samples are passed through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.engine.is_none()
    }

    /// Input samples accepted since the start of the stream.
    pub fn samples_in(&self) -> u64 {
        self.n_in
    }

    /// Output samples produced since the start of the stream.
    pub fn samples_out(&self) -> u64 {
        self.n_out
    }

    /// Output length for `n_in` input samples: `round(n_in · 48000 / rate)`.
    pub fn expected_output_len(&self, n_in: u64) -> u64 {
        let rate = u64::from(self.in_rate);
        (n_in * u64::from(MODEL_SAMPLE_RATE) + rate / 2) / rate
    }

    /// Feeds input samples; returns whatever 48 kHz output is ready (may be empty).
    ///
    /// Input is expected as [`crate::AudioDecoder`] hands it out: finite, within
    /// ±[`crate::MAX_SAMPLE_MAGNITUDE`], subnormals flushed. Anything else is still resampled
    /// without a panic (NaN and ∞ spread through the filter to nearby output; subnormals are
    /// slow), and [`Self::finish`] clears the state, so the next stream is clean.
    pub fn process(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        self.n_in += input.len() as u64;
        let Some(e) = self.engine.as_mut() else {
            self.n_out += input.len() as u64;
            return Ok(input.to_vec());
        };
        let mut result = Vec::with_capacity(
            (input.len() as f64 * f64::from(MODEL_SAMPLE_RATE) / f64::from(self.in_rate)) as usize
                + 16,
        );
        match e {
            Engine::Blocks(e) => e.process(input, &mut result),
            Engine::Sinc(e) => e.process(input, &mut result)?,
        }
        self.n_out += result.len() as u64;
        Ok(result)
    }

    /// Ends the stream: flushes the filter tail and returns the last samples, so the total output
    /// is exactly [`expected_output_len`](Self::expected_output_len)`(samples_in())`. The
    /// resampler is then reset and can take a new stream.
    pub fn finish(&mut self) -> Result<Vec<f32>> {
        let target = self.expected_output_len(self.n_in);
        let mut result = Vec::new();
        if let Some(e) = self.engine.as_mut() {
            let want = target.saturating_sub(self.n_out) as usize;
            match e {
                Engine::Blocks(e) => e.finish(want, &mut result),
                Engine::Sinc(e) => e.finish(want, &mut result)?,
            }
        }
        self.n_in = 0;
        self.n_out = 0;
        Ok(result)
    }
}

impl BlockEngine {
    fn new(in_rate: u32, d: Design) -> BlockEngine {
        let bank = blocks::shared(in_rate, || d.bank(in_rate, blocks::Isa::best()));
        BlockEngine::with_bank(bank, d)
    }

    fn with_bank(bank: std::sync::Arc<Bank>, d: Design) -> BlockEngine {
        let mut e = BlockEngine {
            bank,
            input: Vec::new(),
            start: 0,
            next: 0,
            pre_pad: d.pre_pad,
            delay: d.delay,
            skip: 0,
        };
        e.reset();
        e
    }

    /// A new stream: silence before it, then the alignment zeros.
    fn reset(&mut self) {
        let history = (-self.bank.reads_from).max(0) as usize;
        self.input.clear();
        self.input.resize(history + self.pre_pad, 0.0);
        self.start = -(history as isize);
        self.next = 0;
        self.skip = self.delay;
    }

    /// Blocks from `next` on that the input held so far covers.
    fn ready(&self) -> usize {
        let end = self.start + self.input.len() as isize;
        let last = end - self.bank.reads_to;
        if last < 0 {
            return 0;
        }
        (last as usize / self.bank.step_in + 1).saturating_sub(self.next)
    }

    fn process(&mut self, input: &[f32], result: &mut Vec<f32>) {
        self.input.extend_from_slice(input);
        let ready = self.ready();
        if ready >= MIN_BLOCKS {
            self.compute(ready, result);
        }
    }

    /// The next `blocks` blocks onto `result`, less the outputs still to skip.
    fn compute(&mut self, blocks: usize, result: &mut Vec<f32>) {
        let from = result.len();
        result.resize(from + blocks * self.bank.step_out, 0.0);
        self.bank
            .run(&self.input, self.start, self.next, &mut result[from..]);
        self.next += blocks;
        let drop = self.skip.min(blocks * self.bank.step_out);
        if drop > 0 {
            result.drain(from..from + drop);
            self.skip -= drop;
        }
        // Keep only what the next block reads.
        let keep = (self.next * self.bank.step_in) as isize + self.bank.reads_from - self.start;
        if keep > 0 {
            let keep = (keep as usize).min(self.input.len());
            self.input.drain(..keep);
            self.start += keep as isize;
        }
    }

    fn finish(&mut self, want: usize, result: &mut Vec<f32>) {
        // Silence after the end pushes the filter tail out.
        let blocks = (self.skip + want).div_ceil(self.bank.step_out);
        if blocks > 0 {
            let end = ((self.next + blocks - 1) * self.bank.step_in) as isize + self.bank.reads_to;
            let len = (end - self.start).max(0) as usize;
            if self.input.len() < len {
                self.input.resize(len, 0.0);
            }
            self.compute(blocks, result);
        }
        result.truncate(want);
        self.reset();
    }
}

impl SincEngine {
    fn new(in_rate: u32, d: Design) -> Result<SincEngine> {
        let chunk = MIN_CHUNK.max(4 * d.sinc_len);
        let ratio = f64::from(MODEL_SAMPLE_RATE) / f64::from(in_rate);
        let rs = d
            .resampler(ratio, chunk)
            .map_err(|e| resample_err(e.to_string()))?;
        let out = rs.output_buffer_allocate(true);
        Ok(SincEngine {
            rs,
            chunk,
            staging: vec![0.0; d.pre_pad],
            out,
            pre_pad: d.pre_pad,
            delay: d.delay,
            skip: d.delay,
        })
    }

    fn process(&mut self, input: &[f32], result: &mut Vec<f32>) -> Result<()> {
        self.staging.extend_from_slice(input);
        let mut used = 0;
        while self.staging.len() - used >= self.chunk {
            let (_, produced) = self
                .rs
                .process_into_buffer(
                    &[&self.staging[used..used + self.chunk]],
                    &mut self.out,
                    None,
                )
                .map_err(|err| resample_err(err.to_string()))?;
            used += self.chunk;
            self.take_output(produced, result);
        }
        // One drain per call, not per rubato chunk: a whole file passed at once stays linear.
        self.staging.drain(..used);
        Ok(())
    }

    fn finish(&mut self, want: usize, result: &mut Vec<f32>) -> Result<()> {
        let staged = std::mem::take(&mut self.staging);
        let mut first = (!staged.is_empty()).then_some([&staged[..]]);
        let mut rounds = 0;
        while result.len() < want {
            // The staged remainder goes first; zero padding then pushes the filter tail out.
            let input = first.take();
            let (_, produced) = self
                .rs
                .process_partial_into_buffer(input.as_ref().map(|c| &c[..]), &mut self.out, None)
                .map_err(|err| resample_err(err.to_string()))?;
            self.take_output(produced, result);
            rounds += 1;
            if rounds > 1000 {
                return Err(resample_err(
                    "the resampler stopped producing output while flushing",
                ));
            }
        }
        result.truncate(want);
        self.rs.reset();
        self.staging = vec![0.0; self.pre_pad];
        self.skip = self.delay;
        Ok(())
    }

    fn take_output(&mut self, produced: usize, into: &mut Vec<f32>) {
        let out = &self.out[0][..produced];
        let drop = self.skip.min(produced);
        self.skip -= drop;
        into.extend_from_slice(&out[drop..]);
    }
}

/// The resampler's filter, the same windowed sincs as rubato's own
/// interpolators make (`make_sincs`, BlackmanHarris2, the same f32
/// arithmetic), with a faster dot product: rubato's AVX one chains every
/// FMA on one accumulator, so each output sample waits 256 FMA latencies
/// (measured: ~40 % of the CPU time of ingesting a 10 s MP3 beside a tiny
/// model). Four accumulators keep the FMA units busy; the sum order differs
/// from rubato's by rounding only (`tests::taps_match_rubato`).
struct Taps {
    /// `phases` filters of `len` taps each, phase-major.
    sincs: Vec<f32>,
    len: usize,
    phases: usize,
    /// AVX2 and FMA here (asked once, not per output sample).
    avx2: bool,
}

impl Taps {
    fn new(params: &SincInterpolationParameters, ratio: f64) -> Self {
        // As rubato's `make_interpolator`: length up to a multiple of 8, the
        // cutoff scaled down when downsampling.
        let len = params.sinc_len.div_ceil(8) * 8;
        let f_cutoff = if ratio >= 1.0 {
            params.f_cutoff
        } else {
            params.f_cutoff * ratio as f32
        };
        let factor = params.oversampling_factor;
        let total = len * factor;
        let window = blackman_harris2(total);
        let sinc = |v: f32| {
            if v == 0.0 {
                1.0
            } else {
                (v * std::f32::consts::PI).sin() / (v * std::f32::consts::PI)
            }
        };
        let mut y = Vec::with_capacity(total);
        let mut sum = 0f32;
        for (x, w) in window.iter().enumerate() {
            let val = w * sinc((x as f32 - (total / 2) as f32) * f_cutoff / factor as f32);
            sum += val;
            y.push(val);
        }
        sum /= factor as f32;
        let mut sincs = vec![0f32; total];
        for p in 0..len {
            for n in 0..factor {
                sincs[(factor - n - 1) * len + p] = y[factor * p + n] / sum;
            }
        }
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        Self {
            sincs,
            len,
            phases: factor,
            avx2,
        }
    }
}

/// rubato's periodic Blackman-Harris window, squared, in f32.
fn blackman_harris2(n: usize) -> Vec<f32> {
    use std::f32::consts::PI;
    let (pi2, pi4, pi6) = (2.0 * PI, 4.0 * PI, 6.0 * PI);
    let np = n as f32;
    (0..n)
        .map(|x| {
            let x = x as f32;
            let w = 0.35875 - 0.48829 * (pi2 * x / np).cos() + 0.14128 * (pi4 * x / np).cos()
                - 0.01168 * (pi6 * x / np).cos();
            w * w
        })
        .collect()
}

impl SincInterpolator<f32> for Taps {
    fn get_sinc_interpolated(&self, wave: &[f32], index: usize, subindex: usize) -> f32 {
        let taps = &self.sincs[subindex * self.len..(subindex + 1) * self.len];
        let wave = &wave[index..index + self.len];
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 and FMA checked; both slices hold `len` (a multiple of 8) values.
            return unsafe { dot_avx2(wave, taps) };
        }
        let mut acc = [0f32; 8];
        for (w, t) in wave.chunks_exact(8).zip(taps.chunks_exact(8)) {
            for ((a, &w), &t) in acc.iter_mut().zip(w).zip(t) {
                *a += w * t;
            }
        }
        acc.iter().sum()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn nbr_sincs(&self) -> usize {
        self.phases
    }
}

/// `Σ a·b` over a multiple of 8 values, on four accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len()) / 8 * 8;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let at = i + 8 * k;
            *acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(at)),
                _mm256_loadu_ps(pb.add(at)),
                *acc,
            );
        }
        i += 32;
    }
    while i < n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    _mm_cvtss_f32(q)
}

/// Resamples a whole signal to 48 kHz in one call (convenience for tests and small inputs).
pub fn resample_to_model_rate(input: &[f32], in_rate: u32) -> Result<Vec<f32>> {
    let mut rs = StreamResampler::new(in_rate)?;
    let mut out = rs.process(input)?;
    out.extend(rs.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_rates_get_exact_designs_with_whole_sample_delay() {
        for rate in [
            8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 88_200, 96_000, 176_400,
            192_000, 384_000,
        ] {
            let d = Design::for_rate(rate);
            assert!(d.exact, "{rate}: {d:?}");
            let t = f64::from(rate) / 48_000.0;
            let delay = (d.pre_pad as f64 + 1.0 - 1.0 / d.oversampling as f64) / t - 1.0;
            assert!(
                (delay - d.delay as f64).abs() < 1e-9,
                "{rate}: {d:?} (delay {delay})"
            );
        }
    }

    #[test]
    fn odd_rates_get_a_near_whole_delay() {
        for rate in [44_056, 44_101, 47_999, 48_001, 100_003] {
            let d = Design::for_rate(rate);
            assert!(!d.exact, "{rate}");
            let t = f64::from(rate) / 48_000.0;
            let delay = (d.pre_pad as f64 + 1.0 - 1.0 / d.oversampling as f64) / t - 1.0;
            assert!(
                (delay - d.delay as f64).abs() < 1e-3,
                "{rate}: {d:?} (delay {delay})"
            );
        }
    }

    /// Our dot product over our copy of the taps gives rubato's own
    /// interpolator's output, up to rounding: the filter is unchanged.
    #[test]
    fn taps_match_rubato() {
        for rate in [44_100u32, 96_000, 44_101, 22_050] {
            let d = Design::for_rate(rate);
            let ratio = 48_000.0 / f64::from(rate);
            let chunk = 4096;
            let mut theirs =
                SincFixedIn::<f32>::new(ratio, 1.0, d.sinc_params(), chunk, 1).unwrap();
            let mut ours = d.resampler(ratio, chunk).unwrap();
            let input = noisy_tone(chunk);
            let a = theirs.process(&[&input], None).unwrap();
            let b = ours.process(&[&input], None).unwrap();
            assert_eq!(a[0].len(), b[0].len());
            let worst = a[0]
                .iter()
                .zip(&b[0])
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            eprintln!("{rate} Hz: ours vs rubato max abs {worst:e}");
            assert!(worst < 1e-6, "{rate} Hz: outputs differ by {worst:e}");
            assert!(a[0].iter().any(|v| v.abs() > 0.1), "{rate} Hz: no signal");
        }
    }

    /// A test signal: a tone plus white noise, deterministic.
    fn noisy_tone(n: usize) -> Vec<f32> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                0.5 * (i as f32 * 0.05).sin() + (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The block engine (every microkernel this CPU runs) gives what rubato gives with the same
    /// filter, fed in uneven chunks, to the last sample of the flushed tail.
    #[test]
    fn blocks_match_rubato() {
        // Common rates, and exact ratios whose block is not a multiple of 16 outputs (47 952 Hz:
        // 1000 phases, the last row group half full) or is several ratio periods (44 160 Hz:
        // 50 phases, 400 a block; 8 kHz: 6, 48).
        for rate in [
            8_000u32, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 44_160, 47_952, 88_200,
            96_000, 176_400, 192_000, 384_000,
        ] {
            let d = Design::for_rate(rate);
            assert!(d.exact, "{rate}");
            let input = noisy_tone(rate as usize * 3 / 2);
            let feed = |r: &mut StreamResampler| {
                let mut out = Vec::new();
                let mut rest = &input[..];
                for size in [1usize, 1152, 7, 40_000, 4096].iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                    out.extend(r.process(chunk).unwrap());
                    rest = tail;
                }
                out.extend(r.finish().unwrap());
                out
            };
            let stream = |engine| StreamResampler::with_engine(rate, engine);
            let theirs = feed(&mut stream(Engine::Sinc(SincEngine::new(rate, d).unwrap())));
            assert_eq!(
                theirs.len(),
                (input.len() as u64 * 48_000).div_ceil(u64::from(rate)) as usize,
                "{rate}"
            );
            // Summation order only, on outputs up to ~1.05: measured 1.1e-6 (9 ulps) with 256
            // taps, 1.9e-6 with 2048 (384 kHz); rounding grows with the filter's length.
            let tolerance = 2e-6 * (d.sinc_len as f32 / 256.0).sqrt();
            for isa in blocks::Isa::available() {
                let bank = std::sync::Arc::new(d.bank(rate, isa));
                let mut ours = stream(Engine::Blocks(BlockEngine::with_bank(bank, d)));
                // Twice: a finished stream starts again clean.
                for round in 0..2 {
                    let out = feed(&mut ours);
                    assert_eq!(out.len(), theirs.len(), "{rate} Hz, {isa:?}");
                    let worst = out
                        .iter()
                        .zip(&theirs)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    if round == 0 {
                        eprintln!("{rate} Hz, {isa:?}: blocks vs rubato max abs {worst:e}");
                    }
                    assert!(worst <= tolerance, "{rate} Hz, {isa:?}: {worst:e}");
                }
            }
        }
    }

    /// Milliseconds per 10 s of input, rubato against the block engine (each microkernel), on
    /// one thread: `cargo test --release -p traum-audio --lib resample_speed -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn resample_speed() {
        for rate in [44_100u32, 22_050, 96_000] {
            let d = Design::for_rate(rate);
            let input = noisy_tone(rate as usize * 10);
            let time = |mut r: StreamResampler| {
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    for chunk in input.chunks(1152) {
                        std::hint::black_box(r.process(chunk).unwrap());
                    }
                    std::hint::black_box(r.finish().unwrap());
                    best = best.min(t.elapsed().as_secs_f64() * 1e3);
                }
                best
            };
            let stream = |engine| StreamResampler::with_engine(rate, engine);
            let rubato = time(stream(Engine::Sinc(SincEngine::new(rate, d).unwrap())));
            print!("{rate} Hz, ms per 10 s: rubato (own dot) {rubato:.1}");
            for isa in blocks::Isa::available() {
                let bank = std::sync::Arc::new(d.bank(rate, isa));
                let ms = time(stream(Engine::Blocks(BlockEngine::with_bank(bank, d))));
                print!(", blocks {isa:?} {ms:.1}");
            }
            println!();
        }
    }

    #[test]
    fn downsampling_lengthens_the_filter() {
        assert_eq!(Design::for_rate(44_100).sinc_len, SINC_LEN);
        assert_eq!(Design::for_rate(96_000).sinc_len, 2 * SINC_LEN);
        assert_eq!(Design::for_rate(192_000).sinc_len, 4 * SINC_LEN);
    }
}
