//! clap.cpp (the `clap-cpp` crate) timed as the side-by-side benchmark times
//! transformers, ONNX Runtime and traum: the same model (converted to GGUF by
//! `tools/bench_side_by_side.py`), the same clips and captions, the same
//! threads.
//!
//! ```text
//! clap-cpp-bench MODEL.gguf THREADS MIN_SECONDS OUT.json CAPTIONS.json CLIP.wav...
//! ```
//!
//! clap.cpp embeds one item per call from a file path (audio: decode,
//! resample, mel front end, model) or a string (text: tokenise, model); it
//! has no batch API. Its audio time therefore includes the front end, which
//! the other implementations are given ready-made (~1 % of a call here).
//! Writes seconds per call and every embedding to OUT.json.

use std::time::Instant;

use clap_cpp::CLAP;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Seconds per call: one warm-up call, then calls until `min` seconds pass.
fn time_it(min: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    f()?;
    let (start, mut runs) = (Instant::now(), 0usize);
    while runs == 0 || start.elapsed().as_secs_f64() < min {
        f()?;
        runs += 1;
    }
    Ok((start.elapsed().as_secs_f64() / runs as f64, runs))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, threads, min, out, captions, clips @ ..] = args.as_slice() else {
        return Err("usage: clap-cpp-bench MODEL.gguf THREADS MIN_SECONDS OUT.json CAPTIONS.json CLIP.wav...".into());
    };
    let threads: i32 = threads.parse()?;
    let min: f64 = min.parse()?;
    let captions: Vec<String> = serde_json::from_str(&std::fs::read_to_string(captions)?)?;
    let mut clap = CLAP::new(model, threads)?;
    let audio: Vec<Vec<f32>> = clips
        .iter()
        .map(|c| clap.encode_audio(c, 0))
        .collect::<Result<_>>()?;
    let text: Vec<Vec<f32>> = captions
        .iter()
        .map(|c| clap.encode_text(c))
        .collect::<Result<_>>()?;
    // Batch 1 as every implementation times it: the first clip, the first caption.
    let (audio_s, audio_runs) = time_it(min, || clap.encode_audio(&clips[0], 0).map(drop))?;
    let (text_s, text_runs) = time_it(min, || clap.encode_text(&captions[0]).map(drop))?;
    println!(
        "clap.cpp audio b1: {:.2} clips/s ({:.1} ms), text b1: {:.2} texts/s ({:.1} ms)",
        1.0 / audio_s,
        audio_s * 1e3,
        1.0 / text_s,
        text_s * 1e3
    );
    let report = serde_json::json!({
        "threads": threads,
        "audio": {"s_per_call": audio_s, "runs": audio_runs, "embeddings": audio},
        "text": {"s_per_call": text_s, "runs": text_runs, "embeddings": text},
    });
    std::fs::write(out, serde_json::to_string(&report)?)?;
    Ok(())
}
