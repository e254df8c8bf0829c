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
//!     --out traum.safetensors --json traum.json [--min-time 5] [--batches 1,8] \
//!     [--device cpu|cuda|cuda:N] [--dtype f32|bf16|f16] [--only audio|text|mel]
//! ```
//! Batches larger than the eight inputs repeat them.
//! Threads: `RAYON_NUM_THREADS` (the script sets it to its `--threads`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap_model::{
    ClapModel, DeviceSpec, FeatureExtractorConfig, MelFrontEnd, ModelFiles, Precision,
};

struct Args {
    model: PathBuf,
    inputs: PathBuf,
    out: PathBuf,
    json: PathBuf,
    min_time: Duration,
    batches: Vec<usize>,
    /// Only "audio" or "text" (for profiling one tower).
    only: Option<String>,
    device: DeviceSpec,
    precision: Precision,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut inputs, mut out, mut json) = (None, None, None, None);
    let mut min_time = Duration::from_secs(5);
    let mut batches = vec![1, 8];
    let mut only = None;
    let mut device = DeviceSpec::Cpu;
    let mut precision = Precision::F32;
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
            "--device" => device = value()?.parse().map_err(anyhow::Error::msg)?,
            "--dtype" => precision = value()?.parse().map_err(anyhow::Error::msg)?,
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
        device,
        precision,
    })
}

/// Per-call seconds of a timed run.
struct Timing {
    mean: f64,
    p50: f64,
    /// The fastest call: on a shared machine, the least disturbed.
    min: f64,
    runs: usize,
}

impl Timing {
    fn json(&self, what: &str, batch: usize) -> serde_json::Value {
        serde_json::json!({"what": what, "batch": batch, "s_per_batch": self.mean,
            "p50_s": self.p50, "min_s": self.min, "runs": self.runs})
    }
}

/// One warm-up call of `f`, then calls until `min_time` has passed.
fn time_it(min_time: Duration, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    let start = Instant::now();
    let mut calls = Vec::new();
    while calls.is_empty() || start.elapsed() < min_time {
        let t = Instant::now();
        f()?;
        calls.push(t.elapsed().as_secs_f64());
    }
    let mean = start.elapsed().as_secs_f64() / calls.len() as f64;
    calls.sort_by(f64::total_cmp);
    Ok(Timing {
        mean,
        p50: calls[calls.len() / 2],
        min: calls[0],
        runs: calls.len(),
    })
}

/// The machine's f32 FMA peak, measured: every thread runs independent
/// FMAs of the widest vectors it has (AVX-512 or AVX2) on registers for
/// `secs` (no memory traffic), GFLOP/s summed.
/// Stated beside the model's rate as the share of the peak it reaches.
fn measured_peak_gflops(threads: usize, secs: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return None;
        }
        let per_thread: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(move || unsafe {
                        if std::arch::is_x86_feature_detected!("avx512f") {
                            fma_loop_avx512(secs)
                        } else {
                            fma_loop(secs)
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .collect()
        });
        Some(per_thread.iter().sum())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, secs);
        None
    }
}

/// GFLOP/s of one thread: 12 chains of 8-wide FMAs (enough to cover the FMA
/// latency on two pipes), 1 000 rounds per clock check.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop(secs: f64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        rounds += 1000;
    }
    let mut keep = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
    _mm256_storeu_ps(keep.as_mut_ptr(), sum);
    std::hint::black_box(keep);
    // 12 FMAs × 8 lanes × 2 FLOP per round.
    (rounds * 12 * 8 * 2) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// [`fma_loop`] with 16-wide FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(secs: f64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 12];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        rounds += 1000;
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
    std::hint::black_box(_mm512_reduce_add_ps(sum));
    // 12 FMAs × 16 lanes × 2 FLOP per round.
    (rounds * 12 * 16 * 2) as f64 / start.elapsed().as_secs_f64() / 1e9
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
    let device = args.device.open()?;
    let dtype = args.precision.resolve(&device)?;
    let files = ModelFiles::from_dir(&args.model, "side-by-side")
        .with_context(|| format!("model directory {}", args.model.display()))?;
    let model = ClapModel::load(&files, &device, dtype)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &Device::Cpu)
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
    // Results come back to the host: that is the end of a call on a GPU too.
    let host = |t: Tensor| t.to_device(&Device::Cpu);
    // The mel front end on 10 s windows: on a GPU, on the device; on the CPU,
    // one window per thread (as decoder threads compute them).
    let front_end = MelFrontEnd::new(match &files.preprocessor {
        Some(path) => FeatureExtractorConfig::from_file(path)?,
        None => FeatureExtractorConfig::default(),
    })?;
    let on_device = if device.is_cpu() {
        None
    } else {
        Some(front_end.on_device(&device)?)
    };
    let clips: Vec<Vec<f32>> = (0..8)
        .map(|k| {
            (0..front_end.max_samples())
                .map(|i| {
                    let t = i as f32 / front_end.sample_rate() as f32;
                    0.3 * (std::f32::consts::TAU * 110.0 * (k + 1) as f32 * t).sin()
                })
                .collect()
        })
        .collect();
    for &b in &args.batches {
        let run = |what: &str| args.only.as_deref().is_none_or(|o| o == what);
        if run("mel") {
            let windows: Vec<&[f32]> = (0..b).map(|i| clips[i % clips.len()].as_slice()).collect();
            let t = time_it(args.min_time.min(Duration::from_secs(2)), || {
                match &on_device {
                    Some(d) => {
                        host(d.batch(&front_end, &windows)?)?;
                    }
                    None => {
                        use rayon::prelude::*;
                        windows
                            .par_iter()
                            .map(|w| front_end.features(w))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                    }
                }
                Ok(())
            })?;
            println!(
                "mel b{b}: {:.0} clips/s, {:.2} ms/batch",
                b as f64 / t.mean,
                t.mean * 1e3
            );
            rows.push(t.json("mel", b));
        }
        if run("audio") {
            // Batches larger than the clips given repeat them.
            let idx: Vec<u32> = (0..b).map(|i| (i % n_clips) as u32).collect();
            let batch = features
                .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?
                .to_device(&device)?;
            // Every clip is embedded at this batch size, for the cosine check.
            let mut embs = Vec::new();
            if b >= n_clips {
                embs.push(host(model.audio_embeddings(&batch)?)?.narrow(0, 0, n_clips)?);
            } else {
                for start in (0..n_clips - n_clips % b).step_by(b) {
                    let part = features.narrow(0, start, b)?.to_device(&device)?;
                    embs.push(host(model.audio_embeddings(&part)?)?);
                }
            }
            outputs.insert(format!("audio.b{b}"), Tensor::cat(&embs, 0)?);
            let t = time_it(args.min_time, || {
                host(model.audio_embeddings(&batch)?)?;
                Ok(())
            })?;
            println!(
                "audio b{b}: {:.2} clips/s, {:.1} ms/batch (p50 {:.1} ms, fastest {:.1} ms)",
                b as f64 / t.mean,
                t.mean * 1e3,
                t.p50 * 1e3,
                t.min * 1e3
            );
            rows.push(t.json("audio", b));
        }
        if run("text") {
            let pick = |v: &[Vec<u32>]| -> Vec<Vec<u32>> {
                (0..b).map(|i| v[i % n_texts].clone()).collect()
            };
            let (bi, bm) = trim(&pick(&ids), &pick(&mask));
            let mut embs = Vec::new();
            if b >= n_texts {
                embs.push(host(model.text_embeddings(&bi, &bm)?)?.narrow(0, 0, n_texts)?);
            } else {
                for start in (0..n_texts - n_texts % b).step_by(b) {
                    let (pi, pm) = trim(&ids[start..start + b], &mask[start..start + b]);
                    embs.push(host(model.text_embeddings(&pi, &pm)?)?);
                }
            }
            outputs.insert(format!("text.b{b}"), Tensor::cat(&embs, 0)?);
            let t = time_it(args.min_time, || {
                host(model.text_embeddings(&bi, &bm)?)?;
                Ok(())
            })?;
            println!(
                "text b{b}: {:.2} texts/s, {:.1} ms/batch (p50 {:.2} ms, fastest {:.2} ms)",
                b as f64 / t.mean,
                t.mean * 1e3,
                t.p50 * 1e3,
                t.min * 1e3
            );
            rows.push(t.json("text", b));
        }
    }
    candle_core::safetensors::save(&outputs, &args.out)?;
    let peak = if device.is_cpu() {
        measured_peak_gflops(threads, 1.0)
    } else {
        None
    };
    if let Some(p) = peak {
        println!("f32 FMA peak of {threads} threads, measured: {p:.0} GFLOP/s");
    }
    let report = serde_json::json!({
        "threads": threads,
        "peak_gflops": peak,
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "rows": rows,
    });
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
