//! Throughput of the CLAP port on CPU, printed as a table:
//! mel frames/s of the front end, audio clips/s (10 s windows) and texts/s at
//! batch 1, 8 and 32, for the tiny fixture model and a full-size
//! `larger_clap_music_and_speech`-shaped model (zero weights: the cost of a
//! forward pass does not depend on the values).
//!
//! Run: `cargo bench -p clap-model --bench throughput` (add `-- --quick` for
//! batch 1 and 8 only). Set `RAYON_NUM_THREADS`/`CANDLE_NUM_THREADS` to pin threads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use clap_model::{
    ClapConfig, ClapModel, ClapTokenizer, FeatureExtractorConfig, MelFrontEnd, ModelFiles,
};

const TEXTS: [&str; 8] = [
    "warm analog bass with slow attack",
    "a dog barking in the distance",
    "crisp hi-hat loop at 120 bpm",
    "rain on a tin roof",
    "a choir singing in a cathedral with long reverb",
    "distorted electric guitar riff",
    "footsteps on gravel",
    "a woman speaking softly in french",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/clap")
}

/// A deterministic 10 s test window (tones + chirp).
fn window(seed: usize) -> Vec<f32> {
    let f0 = 110.0 * (1 + seed) as f64;
    (0..480_000)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            (0.4 * (std::f64::consts::TAU * f0 * t).sin()
                + 0.15 * (std::f64::consts::TAU * (200.0 * t + 200.0 * t * t)).sin())
                as f32
        })
        .collect()
}

/// Runs `f` at least once and until `min_time` has passed; returns seconds per run.
fn time_it(min_time: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: allocations, caches, lazy matrices
    let start = Instant::now();
    let mut runs = 0u32;
    while runs == 0 || start.elapsed() < min_time {
        f();
        runs += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(runs)
}

fn main() {
    clap_model::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let batches: &[usize] = if quick { &[1, 8] } else { &[1, 8, 32] };
    let device = Device::Cpu;
    let front_end = MelFrontEnd::new(FeatureExtractorConfig::default()).expect("front end");
    let tiny_files = ModelFiles::resolve(fixtures().join("models/tiny-a").to_str().unwrap())
        .expect("tiny-a fixture");
    let tokenizer = ClapTokenizer::from_dir(&tiny_files.dir, 512, 1).expect("tokenizer");
    let tiny = ClapModel::load(&tiny_files, &device, DType::F32).expect("tiny-a loads");
    let full_cfg = ClapConfig::from_json(
        &std::fs::read_to_string(fixtures().join("configs/larger_clap_music_and_speech.json"))
            .expect("config"),
    )
    .expect("config parses");
    let full = ClapModel::new(
        full_cfg,
        VarBuilder::zeros(DType::F32, &device),
        clap_model::Kernels::Auto,
    )
    .expect("full-size model");

    let windows: Vec<Vec<f32>> = (0..32).map(window).collect();
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!();
    println!(
        "{:<34} {:>6} {:>14} {:>12}",
        "what", "batch", "per second", "ms / batch"
    );

    // Front end: frames of 1001 x 64 per window.
    for &b in batches {
        let refs: Vec<&[f32]> = windows[..b].iter().map(Vec::as_slice).collect();
        let s = time_it(Duration::from_secs(2), || {
            front_end.batch(&refs, &device).expect("features");
        });
        let frames = (b * front_end.n_frames()) as f64 / s;
        println!(
            "{:<34} {:>6} {:>14.0} {:>12.1}",
            "mel frames",
            b,
            frames,
            s * 1e3
        );
    }

    for (name, model, min_time) in [
        ("tiny-a", &tiny, Duration::from_secs(2)),
        ("larger_clap (full size)", &full, Duration::from_secs(5)),
    ] {
        for &b in batches {
            let refs: Vec<&[f32]> = windows[..b].iter().map(Vec::as_slice).collect();
            let features = front_end.batch(&refs, &device).expect("features");
            let s = time_it(min_time, || {
                model.audio_embeddings(&features).expect("audio forward");
            });
            println!(
                "{:<34} {:>6} {:>14.2} {:>12.1}",
                format!("{name} audio clips"),
                b,
                b as f64 / s,
                s * 1e3
            );
        }
        for &b in batches {
            let texts: Vec<&str> = (0..b).map(|i| TEXTS[i % TEXTS.len()]).collect();
            let tokens = tokenizer.encode_batch(&texts).expect("tokens");
            let s = time_it(min_time, || {
                model
                    .text_embeddings(&tokens.input_ids, &tokens.attention_mask)
                    .expect("text forward");
            });
            println!(
                "{:<34} {:>6} {:>14.2} {:>12.1}",
                format!("{name} texts"),
                b,
                b as f64 / s,
                s * 1e3
            );
        }
    }
}
