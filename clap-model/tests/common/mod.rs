//! Shared test support: the deterministic fixture signal, window starts and
//! the reference-fixture loader used by the parity tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// Sample rate of every fixture clip.
pub const SAMPLE_RATE: usize = 48_000;

/// The fixture clip: `n` samples at 48 kHz, computed in f64 and cast to f32.
/// `seed: None` gives digital silence.
///
/// `x = (0.6 + 0.4·sin(2π·0.37·t)) · (0.4·sin(2π·f0·t) + 0.2·sin(2π·3.1·f0·t + 0.3)
///      + 0.15·sin(2π·(200·t + 200·t²)) + 0.05·noise)`, `f0 = 110·(1 + seed)`,
/// noise from a 64-bit LCG seeded with `seed`, stepped before each sample.
pub fn signal(n: usize, seed: Option<u64>) -> Vec<f32> {
    let Some(seed) = seed else {
        return vec![0.0; n];
    };
    let two_pi = 2.0 * std::f64::consts::PI;
    let f0 = 110.0 * (1.0 + seed as f64);
    let mut state = seed;
    (0..n)
        .map(|i| {
            let t = i as f64 / SAMPLE_RATE as f64;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let noise = 2.0 * u - 1.0;
            let envelope = 0.6 + 0.4 * (two_pi * 0.37 * t).sin();
            let tone = 0.4 * (two_pi * f0 * t).sin()
                + 0.2 * (two_pi * 3.1 * f0 * t + 0.3).sin()
                + 0.15 * (two_pi * (200.0 * t + 200.0 * t * t)).sin()
                + 0.05 * noise;
            (envelope * tone) as f32
        })
        .collect()
}

/// Window starts for a clip of `n` samples: one window at 0 when it fits,
/// otherwise `0, hop, 2·hop, …` while a full window fits, plus an end-aligned
/// last window at `n − window` when those stop short of the end.
pub fn window_starts(n: usize, window: usize, hop: usize) -> Vec<usize> {
    if n <= window {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..)
        .map(|k| k * hop)
        .take_while(|s| s + window <= n)
        .collect();
    if starts.last().is_some_and(|&s| s + window < n) {
        starts.push(n - window);
    }
    starts
}

/// `tests/fixtures/clap` at the workspace root.
/// Found from the crate using this module (a member crate or the workspace root).
pub fn fixtures_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("tests/fixtures/clap"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| manifest.join("../tests/fixtures/clap"))
}

/// Loads `tests/fixtures/clap/reference/<name>.safetensors` on the CPU.
///
/// Panics with the path and how to regenerate it when the file is missing.
pub fn load_reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir()
        .join("reference")
        .join(format!("{name}.safetensors"));
    load_reference_file(&path)
}

/// Loads a reference safetensors file (any of the Python reference scripts'
/// outputs) on the CPU, panicking with the path when it cannot be read.
pub fn load_reference_file(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "cannot load reference fixture {}: {e}; generate the reference fixtures \
             (tests/fixtures/clap/reference) with the project's Python reference script",
            path.display()
        )
    })
}
