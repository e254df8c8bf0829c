//! What a clip costs before the model (`cargo bench -p traum-server --bench front_end -- DIR`):
//! every audio file in DIR is decoded (with downmix and sanitising), resampled to 48 kHz, cut
//! into 10 s windows and turned into log-mel features, one stage after the other on one thread,
//! and the table gives each stage's milliseconds per file (the mean of a second pass, the first
//! warming the page cache and the filter banks). Beside a model at its clips/s on N cores,
//! `1000 · N / (clips/s)` core-ms per clip, it says what ingest adds (`tools/bench_ingest.sh`
//! measures the two together).
//!
//! Options: `--features-config FILE` (a `preprocessor_config.json`; default CLAP's).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap_model::{FeatureExtractorConfig, MelFrontEnd};
use traum_audio::{AudioDecoder, StreamResampler, Windower, WINDOW_SAMPLES};

#[derive(Default, Clone, Copy)]
struct Stages {
    decode: f64,
    resample: f64,
    windows: f64,
    features: f64,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut dir = None;
    let mut config = FeatureExtractorConfig::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--features-config" => {
                let path = PathBuf::from(args.next().context("--features-config FILE")?);
                config = FeatureExtractorConfig::from_file(&path)?;
            }
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let Some(dir) = dir else {
        bail!("usage: front_end DIR [--features-config FILE]");
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no files in {}", dir.display());
    }
    let front_end = MelFrontEnd::new(config)?;
    let mut totals = Stages::default();
    let mut windows_total = 0;
    for pass in 0..2 {
        totals = Stages::default();
        windows_total = 0;
        for path in &files {
            let (s, windows) = one_file(path, &front_end)
                .with_context(|| format!("processing {}", path.display()))?;
            if pass == 1 {
                totals.decode += s.decode;
                totals.resample += s.resample;
                totals.windows += s.windows;
                totals.features += s.features;
                windows_total += windows;
            }
        }
    }
    let n = files.len() as f64;
    let ms = |s: f64| s * 1e3 / n;
    let all = totals.decode + totals.resample + totals.windows + totals.features;
    println!(
        "{} files, {windows_total} windows, one thread; ms per file:",
        files.len()
    );
    println!("| decode | resample | windows | features | total |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        ms(totals.decode),
        ms(totals.resample),
        ms(totals.windows),
        ms(totals.features),
        ms(all)
    );
    Ok(())
}

fn one_file(path: &std::path::Path, front_end: &MelFrontEnd) -> Result<(Stages, usize)> {
    let mut s = Stages::default();
    let t = Instant::now();
    let mut decoder = AudioDecoder::open(path)?;
    let rate = decoder.info().sample_rate;
    let mut chunks = Vec::new();
    while let Some(chunk) = decoder.next_chunk()? {
        chunks.push(chunk);
    }
    s.decode = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut resampler = StreamResampler::new(rate)?;
    let mut mono = Vec::new();
    for chunk in &chunks {
        mono.push(resampler.process(chunk)?);
    }
    mono.push(resampler.finish()?);
    s.resample = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut windower = Windower::new(WINDOW_SAMPLES, WINDOW_SAMPLES)?;
    let mut windows = Vec::new();
    for chunk in &mono {
        windows.extend(windower.push(chunk));
    }
    windows.extend(windower.finish());
    s.windows = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for w in &windows {
        std::hint::black_box(front_end.features(&w.samples)?);
    }
    s.features = t.elapsed().as_secs_f64();
    Ok((s, windows.len()))
}
