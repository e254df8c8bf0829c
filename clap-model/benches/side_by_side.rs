//! traum's half of the side-by-side benchmark (`tools/bench_side_by_side.py`).
//!
//! The Python script makes the model and the inputs (mel features of eight
//! 10 s clips, token ids of eight captions) and runs transformers and ONNX
//! Runtime on them; this binary runs the same inputs through clap-model on the
//! same threads, times batch 1 and 8, and writes its embeddings so the script
//! can compare them with transformers'.
//!
//! ```text
//! cargo bench --bench side_by_side -- --model DIR --inputs inputs.safetensors \
//!     --out traum.safetensors --json traum.json [--min-time 5] [--batches 1,8]
//! ```
//! Threads: `RAYON_NUM_THREADS` (the script sets it to its `--threads`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap_model::{ClapModel, ModelFiles};

struct Args {
    model: PathBuf,
    inputs: PathBuf,
    out: PathBuf,
    json: PathBuf,
    min_time: Duration,
    batches: Vec<usize>,
    /// Only "audio" or "text" (for profiling one tower).
    only: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut inputs, mut out, mut json) = (None, None, None, None);
    let mut min_time = Duration::from_secs(5);
    let mut batches = vec![1, 8];
    let mut only = None;
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--inputs" => inputs = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--min-time" => min_time = Duration::from_secs_f64(value()?.parse()?),
            "--batches" => {
                batches = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?
            }
            "--only" => only = Some(value()?),
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        model: model.context("--model DIR is required")?,
        inputs: inputs.context("--inputs FILE is required")?,
        out: out.context("--out FILE is required")?,
        json: json.context("--json FILE is required")?,
        min_time,
        batches,
        only,
    })
}

/// Seconds per call of `f`: one warm-up call, then calls until `min_time` has passed.
fn time_it(min_time: Duration, mut f: impl FnMut() -> Result<()>) -> Result<(f64, u32)> {
    f()?;
    let start = Instant::now();
    let mut runs = 0u32;
    while runs == 0 || start.elapsed() < min_time {
        f()?;
        runs += 1;
    }
    Ok((start.elapsed().as_secs_f64() / f64::from(runs), runs))
}

fn rows_u32(t: &Tensor) -> Result<Vec<Vec<u32>>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if std::env::var_os("TRAUM_NO_ALLOCATOR_TUNING").is_none() {
        clap_model::tune_allocator();
    }
    let device = Device::Cpu;
    let files = ModelFiles::from_dir(&args.model, "side-by-side")
        .with_context(|| format!("model directory {}", args.model.display()))?;
    let model = ClapModel::load(&files, &device, DType::F32)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    let get = |k: &str| {
        inputs
            .get(k)
            .with_context(|| format!("{} has no tensor {k}", args.inputs.display()))
    };
    let features = get("audio.features")?.to_dtype(DType::F32)?; // (N, 1, T, mels)
    let ids = rows_u32(get("text.input_ids")?)?;
    let mask = rows_u32(get("text.attention_mask")?)?;
    let n_clips = features.dim(0)?;
    let n_texts = ids.len();

    let threads = candle_core::utils::get_num_threads();
    let mut outputs: HashMap<String, Tensor> = HashMap::new();
    let mut rows = Vec::new();
    for &b in &args.batches {
        if b > n_clips || b > n_texts {
            bail!("batch {b} is larger than the {n_clips} clips / {n_texts} texts given");
        }
        // Every clip is embedded at this batch size (for the cosine check);
        // the timing runs the first batch of `b`.
        let run = |what: &str| args.only.as_deref().is_none_or(|o| o == what);
        if run("audio") {
            let mut embs = Vec::new();
            for start in (0..n_clips - n_clips % b).step_by(b) {
                embs.push(model.audio_embeddings(&features.narrow(0, start, b)?)?);
            }
            outputs.insert(format!("audio.b{b}"), Tensor::cat(&embs, 0)?);
            let batch = features.narrow(0, 0, b)?;
            let (s, runs) = time_it(args.min_time, || {
                model.audio_embeddings(&batch)?;
                Ok(())
            })?;
            rows.push(
                serde_json::json!({"what": "audio", "batch": b, "s_per_batch": s, "runs": runs}),
            );
            println!(
                "audio b{b}: {:.2} clips/s, {:.1} ms/batch",
                b as f64 / s,
                s * 1e3
            );
        }
        if !run("text") {
            continue;
        }

        let mut embs = Vec::new();
        for start in (0..n_texts - n_texts % b).step_by(b) {
            let (bi, bm) = trim(&ids[start..start + b], &mask[start..start + b]);
            embs.push(model.text_embeddings(&bi, &bm)?);
        }
        outputs.insert(format!("text.b{b}"), Tensor::cat(&embs, 0)?);
        let (bi, bm) = trim(&ids[..b], &mask[..b]);
        let (s, runs) = time_it(args.min_time, || {
            model.text_embeddings(&bi, &bm)?;
            Ok(())
        })?;
        rows.push(serde_json::json!({"what": "text", "batch": b, "s_per_batch": s, "runs": runs}));
        println!(
            "text b{b}: {:.2} texts/s, {:.1} ms/batch",
            b as f64 / s,
            s * 1e3
        );
    }
    candle_core::safetensors::save(&outputs, &args.out)?;
    let report = serde_json::json!({"threads": threads, "rows": rows});
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

/// Drops the padding columns no row of this batch uses, as a tokenizer
/// padding to the batch's longest text would (the script pads to the longest
/// of all eight).
fn trim(ids: &[Vec<u32>], mask: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let len = mask
        .iter()
        .map(|m| m.iter().rposition(|&v| v != 0).map_or(1, |p| p + 1))
        .max()
        .unwrap_or(1);
    (
        ids.iter().map(|r| r[..len].to_vec()).collect(),
        mask.iter().map(|r| r[..len].to_vec()).collect(),
    )
}
