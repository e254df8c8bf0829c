//! `traum embed`: decode → window → features → embed, printed as JSON lines.
//!
//! Each input is processed on its own: a file that fails is reported on
//! stderr and the others still come out; the exit status says whether any
//! failed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap_model::{mean_embedding, ClapEmbedder, EmbedderOptions};
use serde::Serialize;

use crate::cli::{EmbedArgs, ModelArgs};

/// One output line.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EmbedLine<'a> {
    Text {
        input: &'a str,
        embedding: Vec<f32>,
    },
    Audio {
        input: String,
        duration_s: f64,
        embedding: Vec<f32>,
        windows: Vec<WindowLine>,
    },
}

/// A window of an audio line: where it starts and ends, and its vector.
#[derive(Debug, Serialize)]
pub struct WindowLine {
    pub start_s: f64,
    pub end_s: f64,
    pub embedding: Vec<f32>,
}

/// Loads the model named by the arguments.
pub fn load_embedder(args: &ModelArgs) -> Result<ClapEmbedder> {
    let options = EmbedderOptions {
        model: args.model.clone(),
        device: args.device,
        precision: args.dtype,
        max_batch: args.batch_size(),
    };
    ClapEmbedder::load(&options).context("loading the CLAP model")
}

/// Runs the command; `Ok(FAILURE)` when some inputs failed.
pub fn run(args: &EmbedArgs) -> Result<ExitCode> {
    if args.texts.is_empty() && args.files.is_empty() {
        bail!("nothing to embed: pass audio files and/or --text \"…\"");
    }
    if !(args.hop_s > 0.0 && args.hop_s <= 10.0) {
        bail!("--hop-s must be in (0, 10], got {}", args.hop_s);
    }
    let embedder = load_embedder(&args.model)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0usize;

    if !args.texts.is_empty() {
        let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
        match embedder.embed_texts(&texts) {
            Ok(vectors) => {
                for (input, embedding) in texts.iter().zip(vectors) {
                    write_line(&mut out, &EmbedLine::Text { input, embedding })?;
                }
            }
            Err(e) => {
                failures += texts.len();
                eprintln!("error: texts: {e}");
            }
        }
    }
    for path in &args.files {
        match embed_file(&embedder, path, args.hop_s) {
            Ok(line) => write_line(&mut out, &line)?,
            Err(e) => {
                failures += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_line(out: &mut impl Write, line: &EmbedLine) -> Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Streams one file through the windows and embeds them batch by batch, so a
/// long file never sits in memory whole.
pub fn embed_file(embedder: &ClapEmbedder, path: &Path, hop_s: f64) -> Result<EmbedLine<'static>> {
    let info = embedder.info();
    let rate = f64::from(info.sample_rate);
    let window_len = info.window_samples;
    let hop_len = ((hop_s * rate).round() as usize).clamp(1, window_len);
    let mut stream = traum_audio::windows_from_file(path, window_len, hop_len)?;
    let batch = embedder.max_batch();
    let mut pending: Vec<traum_audio::Window> = Vec::with_capacity(batch);
    let mut windows = Vec::new();
    let flush =
        |pending: &mut Vec<traum_audio::Window>, windows: &mut Vec<WindowLine>| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let slices: Vec<&[f32]> = pending.iter().map(|w| w.samples.as_slice()).collect();
            let vectors = embedder.embed_windows(&slices)?;
            for (w, embedding) in pending.drain(..).zip(vectors) {
                windows.push(WindowLine {
                    start_s: w.start_sample as f64 / rate,
                    end_s: (w.start_sample as f64 + w.samples.len() as f64) / rate,
                    embedding,
                });
            }
            Ok(())
        };
    let mut total_samples = 0u64;
    for window in stream.by_ref() {
        let window = window?;
        total_samples = total_samples.max(window.start_sample + window.samples.len() as u64);
        pending.push(window);
        if pending.len() == batch {
            flush(&mut pending, &mut windows)?;
        }
    }
    flush(&mut pending, &mut windows)?;
    let vectors: Vec<&[f32]> = windows.iter().map(|w| w.embedding.as_slice()).collect();
    let embedding = mean_embedding(&vectors).context("the file produced no audio windows")?;
    Ok(EmbedLine::Audio {
        input: path.display().to_string(),
        duration_s: total_samples as f64 / rate,
        embedding,
        windows,
    })
}
