//! The fused CPU kernels (`clap_model::kernels`) against candle's generic ops,
//! on whole models: the same weights and inputs through both paths.
//!
//! Tolerances (f32, CPU): embeddings within 2e-5 max abs (they are unit
//! vectors) and pooled outputs within 1e-4 max abs. The two paths differ
//! only in rounding (summation order, the polynomial `exp`/`erf`, fused
//! bias adds): measured worst 4.1e-6 (embeddings), 1.4e-5 (pooled) on the
//! tiny models. A wrong stride, head, window order or mask moves them by 1e-2 to 1.
//! The transformers reference itself is checked by `tests/parity.rs`, which
//! runs the fused path.

mod common;

use candle_core::{DType, Device, Tensor};
use clap_model::{with_generic_kernels, ClapEmbedder, ModelFiles};
use common::{fixtures_dir, signal};

const EMBEDDING_MAX_ABS: f32 = 2e-5;
const POOLED_MAX_ABS: f32 = 1e-4;

fn embedder(model: &str) -> ClapEmbedder {
    let dir = fixtures_dir().join("models").join(model);
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    ClapEmbedder::from_files(&files, Device::Cpu, DType::F32, 8).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check_model(name: &str) {
    let e = embedder(name);
    let model = e.model();
    // A short clip (repeat-padded), a full window, another seed, silence.
    let waves = [
        signal(40_000, Some(3)),
        signal(480_000, Some(4)),
        signal(300_000, Some(9)),
        signal(480_000, None),
    ];
    let windows: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let features = e.front_end().batch(&windows, e.device()).unwrap();
    let fused = model.audio_embeddings(&features).unwrap();
    let generic = with_generic_kernels(|| model.audio_embeddings(&features)).unwrap();
    let d = max_abs(&fused, &generic);
    eprintln!("{name}: audio embeddings, fused vs generic: max abs {d:e}");
    assert!(
        d < EMBEDDING_MAX_ABS,
        "{name}: audio embeddings differ by {d:e}"
    );
    let pooled = model.audio_pooled(&features).unwrap();
    let pooled_generic = with_generic_kernels(|| model.audio_pooled(&features)).unwrap();
    let d = max_abs(&pooled, &pooled_generic);
    eprintln!("{name}: audio pooled, fused vs generic: max abs {d:e}");
    assert!(d < POOLED_MAX_ABS, "{name}: audio pooled differs by {d:e}");
    // The comparison means something: different clips give different vectors.
    let rows = fused.to_vec2::<f32>().unwrap();
    let dot: f32 = rows[0].iter().zip(&rows[1]).map(|(a, b)| a * b).sum();
    assert!(dot < 0.999, "{name}: clips 0 and 1 embed alike ({dot})");

    // Texts of different lengths in one padded batch, and one alone (the
    // few-rows matmul path).
    let texts = [
        "warm analog bass with slow attack",
        "rain",
        "a choir singing in a cathedral with long reverb and distant bells",
    ];
    for batch in [&texts[..], &texts[..1]] {
        let tokens = e.tokenizer().encode_batch(batch).unwrap();
        let fused = model
            .text_embeddings(&tokens.input_ids, &tokens.attention_mask)
            .unwrap();
        let generic = with_generic_kernels(|| {
            model.text_embeddings(&tokens.input_ids, &tokens.attention_mask)
        })
        .unwrap();
        let d = max_abs(&fused, &generic);
        eprintln!(
            "{name}: text embeddings ({} texts), fused vs generic: max abs {d:e}",
            batch.len()
        );
        assert!(
            d < EMBEDDING_MAX_ABS,
            "{name}: text embeddings ({} texts) differ by {d:e}",
            batch.len()
        );
    }
}

#[test]
fn tiny_a_fused_kernels_match_candle_ops() {
    check_model("tiny-a");
}

#[test]
fn tiny_b_fused_kernels_match_candle_ops() {
    check_model("tiny-b");
}
