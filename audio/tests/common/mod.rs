//! Test helpers: WAV writing, tones, and simple spectral measurements.
#![allow(dead_code)]

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

/// WAV sample encodings the tests write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fmt {
    U8,
    S16,
    S24,
    S32,
    F32,
    F64,
    /// 24-bit PCM in a WAVE_FORMAT_EXTENSIBLE header (what pro tools write).
    S24Ext,
}

pub const ALL_FMTS: [Fmt; 7] = [
    Fmt::U8,
    Fmt::S16,
    Fmt::S24,
    Fmt::S32,
    Fmt::F32,
    Fmt::F64,
    Fmt::S24Ext,
];

impl Fmt {
    pub fn bits(self) -> u16 {
        match self {
            Fmt::U8 => 8,
            Fmt::S16 => 16,
            Fmt::S24 | Fmt::S24Ext => 24,
            Fmt::S32 | Fmt::F32 => 32,
            Fmt::F64 => 64,
        }
    }

    /// The value a decoder should give back for `x` (after quantisation), as f64.
    pub fn quantise(self, x: f64) -> f64 {
        let q = |scale: f64| (x * scale).round().clamp(-scale, scale - 1.0) / scale;
        match self {
            Fmt::U8 => q(128.0),
            Fmt::S16 => q(32768.0),
            Fmt::S24 | Fmt::S24Ext => q(8_388_608.0),
            Fmt::S32 => q(2_147_483_648.0),
            Fmt::F32 => x as f32 as f64,
            Fmt::F64 => x,
        }
    }

    fn encode(self, x: f64, out: &mut Vec<u8>) {
        let int = |scale: f64| (x * scale).round().clamp(-scale, scale - 1.0) as i64;
        match self {
            Fmt::U8 => out.push((int(128.0) + 128) as u8),
            Fmt::S16 => out.extend_from_slice(&(int(32768.0) as i16).to_le_bytes()),
            Fmt::S24 | Fmt::S24Ext => {
                out.extend_from_slice(&(int(8_388_608.0) as i32).to_le_bytes()[..3])
            }
            Fmt::S32 => out.extend_from_slice(&(int(2_147_483_648.0) as i32).to_le_bytes()),
            Fmt::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Fmt::F64 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Raw fields of a WAV header, so tests can write impossible ones.
#[derive(Debug, Clone, Copy)]
pub struct WavHeader {
    pub format_tag: u16,
    pub channels: u16,
    pub sample_rate: u32,
    pub bits: u16,
}

/// A WAV file's bytes: `header` fields as given, `data` as the data chunk.
pub fn wav_bytes_raw(h: WavHeader, data: &[u8], extensible: bool) -> Vec<u8> {
    let block_align = h.channels.wrapping_mul(h.bits / 8);
    let mut fmt = Vec::new();
    let tag = if extensible { 0xfffe } else { h.format_tag };
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&h.channels.to_le_bytes());
    fmt.extend_from_slice(&h.sample_rate.to_le_bytes());
    fmt.extend_from_slice(
        &h.sample_rate
            .wrapping_mul(u32::from(block_align))
            .to_le_bytes(),
    );
    fmt.extend_from_slice(&block_align.to_le_bytes());
    fmt.extend_from_slice(&h.bits.to_le_bytes());
    if extensible {
        fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        fmt.extend_from_slice(&h.bits.to_le_bytes()); // valid bits
        let mask: u32 = if h.channels == 2 { 0x3 } else { 0x4 };
        fmt.extend_from_slice(&mask.to_le_bytes());
        // KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: {0000000X-0000-0010-8000-00AA00389B71}
        fmt.extend_from_slice(&u32::from(h.format_tag).to_le_bytes());
        fmt.extend_from_slice(&[
            0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
        ]);
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// A valid WAV of planar `channels` (all the same length) in encoding `fmt`.
pub fn wav_bytes(fmt: Fmt, rate: u32, channels: &[Vec<f64>]) -> Vec<u8> {
    let n = channels[0].len();
    let mut data = Vec::with_capacity(n * channels.len() * usize::from(fmt.bits() / 8));
    for i in 0..n {
        for ch in channels {
            fmt.encode(ch[i], &mut data);
        }
    }
    let format_tag = if matches!(fmt, Fmt::F32 | Fmt::F64) {
        3
    } else {
        1
    };
    let h = WavHeader {
        format_tag,
        channels: channels.len() as u16,
        sample_rate: rate,
        bits: fmt.bits(),
    };
    wav_bytes_raw(h, &data, fmt == Fmt::S24Ext)
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `amp · sin(2π f t)` sampled at `rate` for `n` samples.
pub fn sine(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|k| amp * (2.0 * PI * freq * k as f64 / f64::from(rate)).sin())
        .collect()
}

pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
}

fn bh_window(n: usize) -> Vec<f64> {
    (0..n)
        .map(|k| {
            let p = 2.0 * PI * k as f64 / n as f64;
            0.35875 - 0.48829 * p.cos() + 0.14128 * (2.0 * p).cos() - 0.01168 * (3.0 * p).cos()
        })
        .collect()
}

fn windowed_amplitude(x: &[f32], win: &[f64], rate: u32, freq: f64) -> f64 {
    // Rotating phasor instead of sin/cos per sample.
    let omega = 2.0 * PI * freq / f64::from(rate);
    let (dc, ds) = (omega.cos(), omega.sin());
    let (mut c, mut s) = (1.0f64, 0.0f64);
    let (mut re, mut im) = (0.0, 0.0);
    for (&v, &w) in x.iter().zip(win) {
        let v = w * f64::from(v);
        re += v * c;
        im += v * s;
        (c, s) = (c * dc - s * ds, s * dc + c * ds);
    }
    2.0 * (re * re + im * im).sqrt() / win.iter().sum::<f64>()
}

/// Amplitude of the component at `freq` (Blackman-Harris-windowed single-bin DFT; other
/// components more than ~4 bins away leak in below -90 dB).
pub fn tone_amplitude(x: &[f32], rate: u32, freq: f64) -> f64 {
    windowed_amplitude(x, &bh_window(x.len()), rate, freq)
}

/// The strongest frequency between 50 Hz and 0.45·rate (to ±5 Hz), measured on (up to) 0.25 s
/// from the middle of `x`: a 50 Hz-step scan, refined in 5 Hz steps around the peak.
pub fn dominant_freq(x: &[f32], rate: u32) -> f64 {
    let len = x.len().min(rate as usize / 4);
    let start = (x.len() - len) / 2;
    let seg = &x[start..start + len];
    let win = bh_window(len);
    let peak = |freqs: &mut dyn Iterator<Item = f64>| {
        freqs
            .map(|f| (f, windowed_amplitude(seg, &win, rate, f)))
            .fold(
                (0.0, -1.0),
                |best, fa| if fa.1 > best.1 { fa } else { best },
            )
            .0
    };
    let top = 0.45 * f64::from(rate);
    let coarse = peak(&mut (1..).map(|k| 50.0 * k as f64).take_while(|&f| f < top));
    peak(
        &mut (-10..=10)
            .map(|k| coarse + 5.0 * k as f64)
            .filter(|&f| f > 0.0),
    )
}

/// Signal-to-error ratio in dB of `y` against `amp · sin(2π f k / rate + phase)`, over `y[skip..len-skip]`.
pub fn snr_db(y: &[f32], rate: u32, freq: f64, amp: f64, skip: usize) -> f64 {
    let (mut sig, mut err) = (0.0, 0.0);
    for (k, &v) in y.iter().enumerate().take(y.len() - skip).skip(skip) {
        let r = amp * (2.0 * PI * freq * k as f64 / f64::from(rate)).sin();
        sig += r * r;
        err += (f64::from(v) - r).powi(2);
    }
    10.0 * (sig / err).log10()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/audio")
        .join(name)
}
