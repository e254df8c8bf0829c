//! Audio front end: 48 kHz mono waveform → CLAP log-mel features.
//!
//! A port of Hugging Face `ClapFeatureExtractor` (transformers
//! `models/clap/feature_extraction_clap.py` + `audio_utils.spectrogram`) for the
//! unfused `rand_trunc` checkpoints (`laion/larger_clap_music_and_speech`,
//! `laion/larger_clap_music`, `laion/larger_clap_general`,
//! `laion/clap-htsat-unfused`): short input is padded (`repeatpad` by default),
//! then a centred, reflect-padded STFT with a periodic Hann window, the power
//! spectrum, the Slaney mel filter bank and `10·log10(max(mel, 1e-10))`.
//! The output is time-major: `n_frames × n_mels` = 1001 × 64 for 10 s.
//!
//! Unlike the reference, input longer than one window is an error instead of a
//! random crop: the caller splits long audio into windows, so the result is
//! deterministic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

/// Floor applied to the mel energies before the logarithm (`mel_floor` and
/// `min_value` in the reference), which makes digital silence exactly −100 dB.
const MEL_FLOOR: f64 = 1e-10;

/// Errors of the audio front end. Each message names the cause and the remedy.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// `truncation: "fusion"` (or another mode) in `preprocessor_config.json`.
    #[error(
        "unsupported feature-extractor truncation {0:?}: only \"rand_trunc\" (unfused) checkpoints \
         are supported — laion/larger_clap_music_and_speech, laion/larger_clap_music, \
         laion/larger_clap_general, laion/clap-htsat-unfused; fused checkpoints such as \
         laion/clap-htsat-fused are out of scope"
    )]
    UnsupportedTruncation(String),
    /// A `padding` value other than `repeatpad`, `repeat` or `pad`.
    #[error(
        "unknown feature-extractor padding {0:?}: set \"padding\" in preprocessor_config.json \
         to \"repeatpad\" (the checkpoints' value), \"repeat\" or \"pad\""
    )]
    UnknownPadding(String),
    /// Numeric settings that cannot describe a valid front end.
    #[error("invalid feature-extractor config: {0}; fix preprocessor_config.json")]
    InvalidConfig(String),
    /// `preprocessor_config.json` is not valid JSON for [`FeatureExtractorConfig`].
    #[error("cannot parse preprocessor_config.json: {0}")]
    Parse(#[from] serde_json::Error),
    /// The config file could not be read.
    #[error("cannot read feature-extractor config {path}: {source}")]
    Io {
        /// File that was being read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A window with no samples.
    #[error("empty audio window: decode at least one sample before computing features")]
    Empty,
    /// A window longer than the model's input length.
    #[error(
        "audio window has {len} samples, more than the model's {max} (one window): split long \
         audio into windows of at most max_samples() samples before computing features"
    )]
    TooLong {
        /// Samples given.
        len: usize,
        /// Samples allowed ([`MelFrontEnd::max_samples`]).
        max: usize,
    },
    /// NaN or ±infinity in the waveform.
    #[error(
        "audio sample {index} is not finite ({value}): the decoder or resampler produced NaN or \
         infinity; drop or repair the audio before computing features"
    )]
    NonFinite {
        /// Index of the first offending sample.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A sample far beyond full scale: its power would overflow f32 (found by fuzzing).
    #[error(
        "audio sample {index} is {value}, far beyond full scale (at most ±{MAX_SAMPLE_MAGNITUDE}): \
         the waveform is not audio in [-1, 1]; scale or repair it before computing features"
    )]
    TooLoud {
        /// Index of the first offending sample.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// [`MelFrontEnd::batch`] was given no windows.
    #[error("empty batch: pass at least one audio window")]
    EmptyBatch,
    /// A window of a batch failed; `index` says which.
    #[error("audio window {index} of the batch: {source}")]
    InBatch {
        /// Position of the window in the batch.
        index: usize,
        /// Why it failed.
        #[source]
        source: Box<FeaturesError>,
    },
    /// Building the output tensor failed.
    #[error("cannot build the feature tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Largest sample magnitude the front end takes: a 1024-point frame of such samples still
/// has a power well inside f32 (real audio is within ±1; decoders clamp far below this).
pub const MAX_SAMPLE_MAGNITUDE: f32 = 1.0e6;

/// Hugging Face `preprocessor_config.json` of a CLAP checkpoint.
///
/// Unknown keys (`chunk_length_s`, `n_fft`, `nb_max_frames`, …, left over from
/// older transformers versions) are ignored, as the reference ignores them.
/// Missing keys take the LAION unfused checkpoints' values (not the
/// `ClapFeatureExtractor()` class defaults, whose `frequency_min` is 0 and
/// `truncation` is `"fusion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureExtractorConfig {
    /// Number of mel bins.
    pub feature_size: usize,
    /// Expected sample rate in Hz; nothing is resampled.
    pub sampling_rate: u32,
    /// STFT hop in samples.
    pub hop_length: usize,
    /// Window length in seconds; `max_length_s · sampling_rate` samples.
    pub max_length_s: f64,
    /// STFT frame and FFT length in samples.
    pub fft_window_size: usize,
    /// Lowest mel filter edge in Hz.
    pub frequency_min: f64,
    /// Highest mel filter edge in Hz.
    pub frequency_max: f64,
    /// Kept for completeness: the reference pads with a literal 0 and never
    /// reads it, so neither does this port.
    pub padding_value: f64,
    /// Kept for completeness: the reference stores it but never passes it to
    /// the dB conversion, so there is no top-dB clipping.
    pub top_db: Option<f64>,
    /// Long-input mode; only `"rand_trunc"` is supported.
    pub truncation: String,
    /// Short-input mode: `"repeatpad"`, `"repeat"` or `"pad"`.
    pub padding: String,
    /// Informational: the reference recomputes it as
    /// `max_length_s · sampling_rate` and so does this port.
    pub nb_max_samples: Option<usize>,
}

impl Default for FeatureExtractorConfig {
    fn default() -> Self {
        Self {
            feature_size: 64,
            sampling_rate: 48_000,
            hop_length: 480,
            max_length_s: 10.0,
            fft_window_size: 1024,
            frequency_min: 50.0,
            frequency_max: 14_000.0,
            padding_value: 0.0,
            top_db: None,
            truncation: "rand_trunc".to_owned(),
            padding: "repeatpad".to_owned(),
            nb_max_samples: Some(480_000),
        }
    }
}

impl FeatureExtractorConfig {
    /// Parses the text of a `preprocessor_config.json`.
    pub fn from_json_str(json: &str) -> Result<Self, FeaturesError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Reads and parses a `preprocessor_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, FeaturesError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FeaturesError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// The short-input padding mode, or an error for an unknown string.
    pub fn padding_mode(&self) -> Result<PaddingMode, FeaturesError> {
        match self.padding.as_str() {
            "repeatpad" => Ok(PaddingMode::RepeatPad),
            "repeat" => Ok(PaddingMode::Repeat),
            "pad" => Ok(PaddingMode::Pad),
            // The reference zero-pads on any other string; an explicit error
            // catches typos instead.
            other => Err(FeaturesError::UnknownPadding(other.to_owned())),
        }
    }

    /// Samples in one model window (`max_length_s · sampling_rate`).
    pub fn max_samples(&self) -> Result<usize, FeaturesError> {
        let n = self.max_length_s * f64::from(self.sampling_rate);
        if !(n.is_finite() && n >= 1.0 && n.fract() == 0.0) {
            return Err(FeaturesError::InvalidConfig(format!(
                "max_length_s ({}) × sampling_rate ({}) must be a positive whole number of samples",
                self.max_length_s, self.sampling_rate
            )));
        }
        Ok(n as usize)
    }

    /// Checks every setting this port relies on.
    pub fn validate(&self) -> Result<(), FeaturesError> {
        if self.truncation != "rand_trunc" {
            return Err(FeaturesError::UnsupportedTruncation(
                self.truncation.clone(),
            ));
        }
        self.padding_mode()?;
        let invalid = |msg: String| Err(FeaturesError::InvalidConfig(msg));
        if self.feature_size == 0 {
            return invalid("feature_size must be at least 1".into());
        }
        if self.sampling_rate == 0 || self.hop_length == 0 {
            return invalid("sampling_rate and hop_length must be positive".into());
        }
        if self.fft_window_size < 2 {
            return invalid("fft_window_size must be at least 2".into());
        }
        let nyquist = f64::from(self.sampling_rate / 2);
        if !(0.0 <= self.frequency_min
            && self.frequency_min < self.frequency_max
            && self.frequency_max <= nyquist)
        {
            return invalid(format!(
                "need 0 <= frequency_min ({}) < frequency_max ({}) <= sampling_rate/2 ({nyquist})",
                self.frequency_min, self.frequency_max
            ));
        }
        let max = self.max_samples()?;
        // The reflect padding mirrors n_fft/2 samples, so the window must be longer.
        if max < self.fft_window_size {
            return invalid(format!(
                "the window ({max} samples) must be at least fft_window_size ({})",
                self.fft_window_size
            ));
        }
        Ok(())
    }
}

/// How a window shorter than [`MelFrontEnd::max_samples`] is filled
/// (reference `_get_input_mel`); the fill is always a literal 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingMode {
    /// Tile the clip `⌊max/len⌋` whole times, then zero-pad (checkpoint default).
    RepeatPad,
    /// Tile the clip and cut it at `max` samples (a partial last copy).
    Repeat,
    /// Zero-pad on the right.
    Pad,
}

/// The Slaney-scale, Slaney-normalised mel filter bank of the reference
/// (`mel_filter_bank(..., norm="slaney", mel_scale="slaney")`, equal to
/// `librosa.filters.mel`), in f64, **filter-major**: `n_mels` rows of
/// `n_freq_bins` weights, element `[m · n_freq_bins + k]`. The FFT bins span
/// `0 … sampling_rate / 2` (integer division, as the reference does).
///
/// Panics if `n_freq_bins < 2`.
pub fn slaney_mel_filter_bank(
    n_freq_bins: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
    sampling_rate: u32,
) -> Vec<f64> {
    assert!(n_freq_bins >= 2, "a filter bank needs at least 2 FFT bins");
    // Operation order follows numpy so that the weights agree to the last bit
    // or two: linspace is `i·step + start` with the last point set to `stop`.
    let fft_freqs = linspace(0.0, f64::from(sampling_rate / 2), n_freq_bins);
    let mel_points = linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2);
    let f: Vec<f64> = mel_points.iter().map(|&m| mel_to_hz_slaney(m)).collect();
    let mut bank = vec![0.0; n_mels * n_freq_bins];
    for (m, row) in bank.chunks_exact_mut(n_freq_bins).enumerate() {
        let (lower, centre, upper) = (f[m], f[m + 1], f[m + 2]);
        // Area normalisation: constant energy per channel.
        let enorm = 2.0 / (upper - lower);
        for (w, &fk) in row.iter_mut().zip(&fft_freqs) {
            let down = -(lower - fk) / (centre - lower);
            let up = (upper - fk) / (upper - centre);
            *w = down.min(up).max(0.0) * enorm;
        }
    }
    bank
}

/// `np.linspace(start, stop, num)` with numpy's exact arithmetic
/// (`i·step + start`, the last point set to `stop`); `num ≥ 2`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// Slaney mel scale: linear below 1 kHz, logarithmic above.
fn hz_to_mel_slaney(hz: f64) -> f64 {
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * hz / 200.0
    }
}

/// Inverse of [`hz_to_mel_slaney`].
fn mel_to_hz_slaney(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Periodic Hann window, built like `np.hanning(len + 1)[:-1]`.
fn periodic_hann(len: usize) -> Vec<f64> {
    let m = len as f64; // = (len + 1) − 1 of np.hanning
    (0..len)
        .map(|j| {
            let n = 2.0 * j as f64 - m;
            0.5 + 0.5 * (std::f64::consts::PI * n / m).cos()
        })
        .collect()
}

/// Reusable buffers for one window; [`MelFrontEnd::batch`] keeps one set for
/// the whole batch.
struct Scratch {
    /// The padded window with the STFT's reflect padding on both sides.
    padded: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    fft_scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

/// CLAP log-mel front end for one checkpoint's `preprocessor_config.json`:
/// the window, filter bank and FFT plan are built once, then
/// [`features`](Self::features) / [`batch`](Self::batch) are called per window.
pub struct MelFrontEnd {
    config: FeatureExtractorConfig,
    padding: PaddingMode,
    max_samples: usize,
    n_fft: usize,
    hop: usize,
    n_freq_bins: usize,
    n_mels: usize,
    n_frames: usize,
    window: Vec<f64>,
    /// Filter-major `n_mels × n_freq_bins`.
    filters: Vec<f64>,
    /// Per filter, the half-open bin range holding its non-zero weights, so
    /// the mel product skips the zeros.
    filter_spans: Vec<(usize, usize)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for MelFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontEnd")
            .field("config", &self.config)
            .field("n_frames", &self.n_frames)
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl MelFrontEnd {
    /// Validates `config` (rejecting `truncation: "fusion"`) and precomputes
    /// the periodic Hann window, the Slaney mel filter bank and the FFT plan.
    pub fn new(config: FeatureExtractorConfig) -> Result<Self, FeaturesError> {
        config.validate()?;
        let padding = config.padding_mode()?;
        let max_samples = config.max_samples()?;
        let n_fft = config.fft_window_size;
        let hop = config.hop_length;
        let n_freq_bins = n_fft / 2 + 1;
        let n_mels = config.feature_size;
        // Centre padding adds n_fft/2 on each side (reference: 1 + L // hop frames).
        let padded_len = max_samples + 2 * (n_fft / 2);
        let n_frames = 1 + (padded_len - n_fft) / hop;
        let filters = slaney_mel_filter_bank(
            n_freq_bins,
            n_mels,
            config.frequency_min,
            config.frequency_max,
            config.sampling_rate,
        );
        let filter_spans = filters
            .chunks_exact(n_freq_bins)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let end = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (first, end.max(first))
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
        Ok(Self {
            window: periodic_hann(n_fft),
            config,
            padding,
            max_samples,
            n_fft,
            hop,
            n_freq_bins,
            n_mels,
            n_frames,
            filters,
            filter_spans,
            fft,
        })
    }

    /// The config this front end was built from.
    pub fn config(&self) -> &FeatureExtractorConfig {
        &self.config
    }

    /// Frames per window (1001 for 10 s at hop 480).
    pub fn n_frames(&self) -> usize {
        self.n_frames
    }

    /// Mel bins per frame (64).
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Most samples one window may have (480 000); shorter windows are padded.
    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// Expected input sample rate in Hz (48 000); nothing is resampled.
    pub fn sample_rate(&self) -> u32 {
        self.config.sampling_rate
    }

    /// FFT bins per frame (`fft_window_size / 2 + 1` = 513).
    pub fn n_freq_bins(&self) -> usize {
        self.n_freq_bins
    }

    /// The mel filter bank, filter-major: `n_mels` rows of `n_freq_bins`
    /// weights (the transpose of the reference's `mel_filters_slaney`).
    pub fn mel_filters(&self) -> &[f64] {
        &self.filters
    }

    /// Log-mel features of one window of at most [`max_samples`](Self::max_samples)
    /// samples: `n_frames × n_mels` f32 in dB, time-major (row `t` is frame `t`).
    /// Shorter input is padded according to the config's padding mode.
    pub fn features(&self, samples: &[f32]) -> Result<Vec<f32>, FeaturesError> {
        let mut out = vec![0.0; self.n_frames * self.n_mels];
        self.with_scratch(|scratch| self.features_into(samples, scratch, &mut out))?;
        Ok(out)
    }

    /// Features of several windows as a `(B, 1, n_frames, n_mels)` f32 tensor
    /// on `device`, the model's `input_features`.
    pub fn batch(&self, windows: &[&[f32]], device: &Device) -> Result<Tensor, FeaturesError> {
        if windows.is_empty() {
            return Err(FeaturesError::EmptyBatch);
        }
        let per_window = self.n_frames * self.n_mels;
        let mut data = vec![0.0f32; windows.len() * per_window];
        self.with_scratch(|scratch| {
            for (index, (window, out)) in windows
                .iter()
                .zip(data.chunks_exact_mut(per_window))
                .enumerate()
            {
                self.features_into(window, scratch, out)
                    .map_err(|e| FeaturesError::InBatch {
                        index,
                        source: Box::new(e),
                    })?;
            }
            Ok::<_, FeaturesError>(())
        })?;
        Ok(Tensor::from_vec(
            data,
            (windows.len(), 1, self.n_frames, self.n_mels),
            device,
        )?)
    }

    /// This front end as tensor ops on `device` (see [`DeviceMelFrontEnd`]).
    pub fn on_device(&self, device: &Device) -> Result<DeviceMelFrontEnd, FeaturesError> {
        let (n_fft, bins) = (self.n_fft, self.n_freq_bins);
        // [Hann·cos | −Hann·sin], (n_fft, 2·bins): one matmul gives the real
        // and imaginary parts of every bin of every frame.
        let mut basis = vec![0f32; n_fft * 2 * bins];
        for (n, row) in basis.chunks_exact_mut(2 * bins).enumerate() {
            for k in 0..bins {
                // n·k mod n_fft keeps the angle small and exact in f64.
                let angle = std::f64::consts::TAU * ((n * k) % n_fft) as f64 / n_fft as f64;
                row[k] = (self.window[n] * angle.cos()) as f32;
                row[bins + k] = (-self.window[n] * angle.sin()) as f32;
            }
        }
        let mut filters_t = vec![0f32; bins * self.n_mels];
        for (m, filter) in self.filters.chunks_exact(bins).enumerate() {
            for (k, &w) in filter.iter().enumerate() {
                filters_t[k * self.n_mels + m] = w as f32;
            }
        }
        let frame_index: Vec<u32> = (0..self.n_frames)
            .flat_map(|t| (0..n_fft).map(move |i| (t * self.hop + i) as u32))
            .collect();
        Ok(DeviceMelFrontEnd {
            basis: Tensor::from_vec(basis, (n_fft, 2 * bins), device)?,
            filters_t: Tensor::from_vec(filters_t, (bins, self.n_mels), device)?,
            frame_index: Tensor::from_vec(frame_index, self.n_frames * n_fft, device)?,
            padded_len: self.max_samples + 2 * (n_fft / 2),
            n_frames: self.n_frames,
            n_fft,
            bins,
            n_mels: self.n_mels,
            device: device.clone(),
        })
    }

    /// The windows checked and padded as the front end's first steps do, as
    /// one `(B, max_samples + n_fft)` f32 buffer.
    fn padded_batch(&self, windows: &[&[f32]]) -> Result<Vec<f32>, FeaturesError> {
        if windows.is_empty() {
            return Err(FeaturesError::EmptyBatch);
        }
        let len = self.max_samples + 2 * (self.n_fft / 2);
        let mut padded = vec![0f64; len];
        let mut out = Vec::with_capacity(windows.len() * len);
        for (index, w) in windows.iter().enumerate() {
            self.pad_into(w, &mut padded)
                .map_err(|e| FeaturesError::InBatch {
                    index,
                    source: Box::new(e),
                })?;
            out.extend(padded.iter().map(|&v| v as f32));
        }
        Ok(out)
    }

    /// Runs `f` with this thread's scratch space, made (or remade, for a
    /// front end of other sizes) when needed: the padded window alone is
    /// 3.8 MB, which a fresh allocation per window pays for in page faults.
    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
        }
        SCRATCH.with(|cell| {
            // A re-entrant call (none today) would find it borrowed: it gets its own.
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return f(&mut self.scratch());
            };
            let fits = slot.as_ref().is_some_and(|s| {
                s.padded.len() == self.max_samples + 2 * (self.n_fft / 2)
                    && s.frame.len() == self.n_fft
                    && s.spectrum.len() == self.n_fft / 2 + 1
                    && s.fft_scratch.len() == self.fft.get_scratch_len()
                    && s.power.len() == self.n_freq_bins
            });
            if !fits {
                *slot = Some(self.scratch());
            }
            f(slot.as_mut().expect("just made"))
        })
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            padded: vec![0.0; self.max_samples + 2 * (self.n_fft / 2)],
            frame: self.fft.make_input_vec(),
            spectrum: self.fft.make_output_vec(),
            fft_scratch: self.fft.make_scratch_vec(),
            power: vec![0.0; self.n_freq_bins],
        }
    }

    /// Checks one window and writes it into `padded` (`max_samples + n_fft`
    /// values): length handling, then centre padding.
    fn pad_into(&self, samples: &[f32], padded: &mut [f64]) -> Result<(), FeaturesError> {
        let len = samples.len();
        if len == 0 {
            return Err(FeaturesError::Empty);
        }
        if len > self.max_samples {
            return Err(FeaturesError::TooLong {
                len,
                max: self.max_samples,
            });
        }
        // One vectorised pass for the common case (NaN and ±∞ fail it too);
        // the searches that name the culprit only when it fails.
        let in_range = samples
            .iter()
            .fold(true, |ok, x| ok & (x.abs() <= MAX_SAMPLE_MAGNITUDE));
        if !in_range {
            if let Some(index) = samples.iter().position(|x| !x.is_finite()) {
                return Err(FeaturesError::NonFinite {
                    index,
                    value: samples[index],
                });
            }
            if let Some(index) = samples.iter().position(|x| x.abs() > MAX_SAMPLE_MAGNITUDE) {
                return Err(FeaturesError::TooLoud {
                    index,
                    value: samples[index],
                });
            }
        }

        // 1. Length handling on the waveform (reference `_get_input_mel`).
        let pad = self.n_fft / 2;
        let max = self.max_samples;
        let body = &mut padded[pad..pad + max];
        let filled = match self.padding {
            PaddingMode::RepeatPad => (max / len) * len,
            PaddingMode::Repeat => max,
            PaddingMode::Pad => len,
        };
        // Whole repetitions, each a plain (vectorised) widening copy.
        for part in body[..filled].chunks_mut(len) {
            for (dst, &src) in part.iter_mut().zip(samples) {
                *dst = f64::from(src);
            }
        }
        body[filled..].fill(0.0);

        // 2. Centre padding, numpy "reflect" (edge sample not repeated).
        let total = padded.len();
        for j in 0..pad {
            padded[j] = padded[2 * pad - j];
            padded[total - 1 - j] = padded[total - 1 - 2 * pad + j];
        }
        Ok(())
    }

    fn features_into(
        &self,
        samples: &[f32],
        s: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), FeaturesError> {
        self.pad_into(samples, &mut s.padded)?;

        // 3. STFT → power → mel → dB, frame by frame.
        for (t, row) in out.chunks_exact_mut(self.n_mels).enumerate() {
            let start = t * self.hop;
            let src = &s.padded[start..start + self.n_fft];
            for ((dst, &x), &w) in s.frame.iter_mut().zip(src).zip(&self.window) {
                *dst = x * w;
            }
            self.fft
                .process_with_scratch(&mut s.frame, &mut s.spectrum, &mut s.fft_scratch)
                .expect("FFT buffers are sized by the plan");
            for (p, c) in s.power.iter_mut().zip(&s.spectrum) {
                // The reference stores the spectrum as complex64, then squares
                // in f64; f32² is exact in f64, so only the sum rounds.
                let re = f64::from(c.re as f32);
                let im = f64::from(c.im as f32);
                *p = re * re + im * im;
            }
            for ((o, filter), &(lo, hi)) in row
                .iter_mut()
                .zip(self.filters.chunks_exact(self.n_freq_bins))
                .zip(&self.filter_spans)
            {
                let mel = dot4(&filter[lo..hi], &s.power[lo..hi]);
                *o = (10.0 * mel.max(MEL_FLOOR).log10()) as f32;
            }
        }
        Ok(())
    }
}

/// `Σ a·b` on four partial sums, so the additions do not wait on each other
/// (the reference's matmul does not sum in order either).
fn dot4(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The mel front end as tensor ops on a device, for a GPU: the STFT is one
/// matmul of the frames against a DFT basis with the Hann window folded in,
/// then power, the mel filter bank as a second matmul, and dB. Checking and
/// padding the waveform stay on the host (one pass over the samples); the
/// frames are gathered on the device. f32 throughout (the CPU front end runs
/// in f64 like the reference); `tests/features.rs` states the difference.
pub struct DeviceMelFrontEnd {
    basis: Tensor,
    filters_t: Tensor,
    frame_index: Tensor,
    padded_len: usize,
    n_frames: usize,
    n_fft: usize,
    bins: usize,
    n_mels: usize,
    device: Device,
}

impl DeviceMelFrontEnd {
    /// Features of several windows, `(B, 1, n_frames, n_mels)` f32 on the
    /// device: what [`MelFrontEnd::batch`] computes on the host.
    pub fn batch(&self, host: &MelFrontEnd, windows: &[&[f32]]) -> Result<Tensor, FeaturesError> {
        let b = windows.len();
        let padded = Tensor::from_vec(
            host.padded_batch(windows)?,
            (b, self.padded_len),
            &self.device,
        )?;
        let frames = padded
            .index_select(&self.frame_index, 1)?
            .reshape((b * self.n_frames, self.n_fft))?;
        let spectrum = frames.matmul(&self.basis)?;
        let re = spectrum.narrow(1, 0, self.bins)?;
        let im = spectrum.narrow(1, self.bins, self.bins)?;
        let power = (re.sqr()? + im.sqr()?)?;
        let mel = power.matmul(&self.filters_t)?;
        let db = (mel.maximum(MEL_FLOOR)?.log()? * (10.0 / std::f64::consts::LN_10))?;
        Ok(db.reshape((b, 1, self.n_frames, self.n_mels))?)
    }
}
