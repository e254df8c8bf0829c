//! Test audio the tests (and the service benchmark) make: tones, noise,
//! chirps, written as WAV in memory.

#![allow(dead_code)]

/// 16-bit PCM mono WAV.
pub fn wav_i16(rate: u32, samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    b
}

/// 32-bit float mono WAV at 48 kHz: decoded back exactly.
pub fn wav_f32(samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 4) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 4);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&48_000u32.to_le_bytes());
    b.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// A sine at `hz` for `secs` at 48 kHz.
pub fn tone(hz: f32, secs: f32, amp: f32) -> Vec<f32> {
    let n = (secs * 48_000.0) as usize;
    (0..n)
        .map(|i| amp * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
        .collect()
}

/// Deterministic white noise (xorshift) for `secs` at 48 kHz.
pub fn noise(secs: f32, amp: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..(secs * 48_000.0) as usize)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            amp * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        })
        .collect()
}

/// A linear chirp from `f0` to `f1` Hz.
pub fn chirp(f0: f32, f1: f32, secs: f32, amp: f32) -> Vec<f32> {
    let n = (secs * 48_000.0) as usize;
    let k = (f1 - f0) / secs;
    (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            amp * (2.0 * std::f32::consts::PI * (f0 * t + 0.5 * k * t * t)).sin()
        })
        .collect()
}
