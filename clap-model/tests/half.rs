//! bf16 and f16 against f32 on the same weights and inputs (the GPU's half
//! types, checked here on the CPU with the tiny models; candle's CPU runs
//! them slowly but with the same arithmetic per op).
//!
//! The model keeps LayerNorm, softmax and the final normalisation in f32 in
//! both half types; matmuls, GELU and residual adds run in the half type.
//!
//! Tolerances: the worst cosine of any embedding with its f32 counterpart.
//! The tiny fixture models are built to be sensitive (sharp attention, see
//! tools/make_clap_fixtures.py), so half precision moves their audio
//! embeddings far more than it moves a real checkpoint's; transformers
//! itself, on tiny-a and the same two clips, gives cosine 0.875 / 0.945 in
//! bf16 and 0.9961 / 0.9966 in f16 against its f32 (PyTorch 2.15, CPU). The
//! limits sit below what we measure and at or below transformers' own:
//!
//! | | audio (measured tiny-a / tiny-b) | text (measured) |
//! |---|---|---|
//! | bf16 | ≥ 0.88 (0.911 / 0.992) | ≥ 0.999 (0.99970 / 0.99969) |
//! | f16 | ≥ 0.995 (0.99602 / 0.99973) | ≥ 0.9999 (0.999982 / 0.999996) |
//!
//! Non-finite values fail at once (an overflow in f16, a mask of −inf).

mod common;

use candle_core::{DType, Device, Tensor};
use clap_model::{ClapModel, ClapTokenizer, FeatureExtractorConfig, MelFrontEnd, ModelFiles};
use common::{fixtures_dir, signal};

/// (dtype, least audio cosine, least text cosine).
const LIMITS: [(DType, f32, f32); 2] = [(DType::BF16, 0.88, 0.999), (DType::F16, 0.995, 0.9999)];

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn worst(a: &Tensor, b: &Tensor) -> f32 {
    rows(a)
        .iter()
        .zip(rows(b))
        .map(|(x, y)| {
            assert!(x.iter().all(|v| v.is_finite()), "non-finite embedding");
            cosine(x, &y)
        })
        .fold(1.0, f32::min)
}

fn check(model_name: &str) {
    let dir = fixtures_dir().join("models").join(model_name);
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let f32_model = ClapModel::load(&files, &Device::Cpu, DType::F32).unwrap();
    let cfg = f32_model.config().clone();
    let tokenizer = ClapTokenizer::from_dir(
        &files.dir,
        cfg.max_text_tokens(),
        cfg.text_config.pad_token_id,
    )
    .unwrap();
    let fe = FeatureExtractorConfig::from_file(files.preprocessor.as_ref().unwrap()).unwrap();
    let front_end = MelFrontEnd::new(fe).unwrap();
    let waves = [signal(480_000, Some(4)), signal(100_000, Some(8))];
    let windows: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let features = front_end.batch(&windows, &Device::Cpu).unwrap();
    let tokens = tokenizer
        .encode_batch(&[
            "warm analog bass with slow attack",
            "rain on a tin roof at night",
        ])
        .unwrap();
    let audio = f32_model.audio_embeddings(&features).unwrap();
    let text = f32_model
        .text_embeddings(&tokens.input_ids, &tokens.attention_mask)
        .unwrap();
    for (dtype, min_audio, min_text) in LIMITS {
        let half = ClapModel::load(&files, &Device::Cpu, dtype).unwrap();
        let a = half.audio_embeddings(&features).unwrap();
        let t = half
            .text_embeddings(&tokens.input_ids, &tokens.attention_mask)
            .unwrap();
        assert_eq!(a.dtype(), DType::F32, "embeddings are returned in f32");
        let (wa, wt) = (worst(&a, &audio), worst(&t, &text));
        eprintln!("{model_name} {dtype:?}: worst cosine audio {wa:.6}, text {wt:.6}");
        assert!(
            wa >= min_audio,
            "{model_name} {dtype:?}: audio cosine {wa} < {min_audio}"
        );
        assert!(
            wt >= min_text,
            "{model_name} {dtype:?}: text cosine {wt} < {min_text}"
        );
    }
}

#[test]
fn tiny_a_half_types_match_f32() {
    check("tiny-a");
}

#[test]
fn tiny_b_half_types_match_f32() {
    check("tiny-b");
}
