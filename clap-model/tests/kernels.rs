//! The CPU kernels (`clap_model::kernels`: packed weights, fused matmul
//! epilogues, window-parallel Swin blocks) against candle's generic ops, on
//! whole models: the same weights and inputs through both paths.
//!
//! Tolerances (f32, CPU): embeddings within 2e-5 max abs (they are unit
//! vectors) and pooled outputs within 1e-4 max abs. The two paths differ
//! only in rounding (summation order, the polynomial `exp`/`erf`, the
//! LayerNorm applied as the matmul reads its rows): measured worst 6.7e-6
//! (audio embeddings), 2.7e-5 (pooled), 7.6e-7 (text) on the tiny models. A wrong stride, head,
//! window order, mask or edge tile moves them by 1e-2 to 1. The tiny models'
//! widths (12–96) and head sizes (6–16) are not multiples of the 16-wide
//! tiles, so edge tiles are covered.
//!
//! Each comparison runs on one thread and on four: with one, every Swin
//! block is split step by step; with four and four clips, blocks with
//! enough windows go window by window on each thread, and the last stages
//! (one window a clip) step by step.
//! The transformers reference itself is checked by `tests/parity.rs`, which
//! runs the CPU kernels.

mod common;

use candle_core::{DType, Device, Tensor};
use clap_model::{ClapEmbedder, ClapModel, Kernels, ModelFiles};
use common::{fixtures_dir, signal};

const EMBEDDING_MAX_ABS: f32 = 2e-5;
const POOLED_MAX_ABS: f32 = 1e-4;

fn files(model: &str) -> ModelFiles {
    let dir = fixtures_dir().join("models").join(model);
    ModelFiles::resolve(dir.to_str().unwrap()).unwrap()
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

fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn check_model(name: &str) {
    let files = files(name);
    let e = ClapEmbedder::from_files(&files, Device::Cpu, DType::F32, 8).unwrap();
    let model = e.model();
    let generic = ClapModel::load_with(&files, &Device::Cpu, DType::F32, Kernels::Generic).unwrap();
    // A short clip (repeat-padded), a full window, another seed, silence.
    let waves = [
        signal(40_000, Some(3)),
        signal(480_000, Some(4)),
        signal(300_000, Some(9)),
        signal(480_000, None),
    ];
    let windows: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let features = e.front_end().batch(&windows, e.device()).unwrap();
    let want = generic.audio_embeddings(&features).unwrap();
    let want_pooled = generic.audio_pooled(&features).unwrap();
    let one = features.narrow(0, 1, 1).unwrap();
    let want_one = generic.audio_embeddings(&one).unwrap();
    for threads in [1, 4] {
        let (got, pooled, got_one) = on_threads(threads, || {
            (
                model.audio_embeddings(&features).unwrap(),
                model.audio_pooled(&features).unwrap(),
                model.audio_embeddings(&one).unwrap(),
            )
        });
        let d = max_abs(&got, &want);
        eprintln!(
            "{name}, {threads} threads: audio embeddings, CPU kernels vs candle: max abs {d:e}"
        );
        assert!(
            d < EMBEDDING_MAX_ABS,
            "{name}, {threads} threads: audio embeddings differ by {d:e}"
        );
        let d = max_abs(&pooled, &want_pooled);
        eprintln!("{name}, {threads} threads: audio pooled: max abs {d:e}");
        assert!(
            d < POOLED_MAX_ABS,
            "{name}, {threads} threads: audio pooled differs by {d:e}"
        );
        let d = max_abs(&got_one, &want_one);
        assert!(
            d < EMBEDDING_MAX_ABS,
            "{name}, {threads} threads: one clip differs by {d:e}"
        );
        // The comparison means something: different clips give different vectors.
        let rows = got.to_vec2::<f32>().unwrap();
        let dot: f32 = rows[0].iter().zip(&rows[1]).map(|(a, b)| a * b).sum();
        assert!(dot < 0.999, "{name}: clips 0 and 1 embed alike ({dot})");
    }

    // Texts of different lengths in one padded batch, one alone, and the
    // batch padded on the left (the masked attention instead of the packed).
    let texts = [
        "warm analog bass with slow attack",
        "rain",
        "a choir singing in a cathedral with long reverb and distant bells",
    ];
    let tokens = e.tokenizer().encode_batch(&texts).unwrap();
    let left = |rows: &[Vec<u32>], fill: u32| -> Vec<Vec<u32>> {
        rows.iter()
            .zip(&tokens.attention_mask)
            .map(|(r, m)| {
                let n = m.iter().filter(|&&v| v != 0).count();
                let mut out = vec![fill; r.len() - n];
                out.extend_from_slice(&r[..n]);
                out
            })
            .collect()
    };
    let pad = tokens.input_ids[1][tokens.input_ids[1].len() - 1];
    let left_ids = left(&tokens.input_ids, pad);
    let left_mask = left(&tokens.attention_mask, 0);
    let one_ids = &tokens.input_ids[..1];
    let first_len = tokens.attention_mask[0].iter().filter(|&&v| v != 0).count();
    let one_ids: Vec<Vec<u32>> = one_ids.iter().map(|r| r[..first_len].to_vec()).collect();
    let one_mask = vec![vec![1u32; first_len]];
    type Case<'a> = (&'a str, &'a [Vec<u32>], &'a [Vec<u32>]);
    let cases: [Case; 3] = [
        ("right-padded", &tokens.input_ids, &tokens.attention_mask),
        ("one text", &one_ids, &one_mask),
        ("left-padded", &left_ids, &left_mask),
    ];
    for (what, ids, mask) in cases {
        let want = generic.text_embeddings(ids, mask).unwrap();
        for threads in [1, 4] {
            let got = on_threads(threads, || model.text_embeddings(ids, mask).unwrap());
            let d = max_abs(&got, &want);
            eprintln!("{name}, {threads} threads: text embeddings ({what}): max abs {d:e}");
            assert!(
                d < EMBEDDING_MAX_ABS,
                "{name}: text embeddings ({what}) differ by {d:e}"
            );
        }
    }
}

#[test]
fn tiny_a_cpu_kernels_match_candle_ops() {
    check_model("tiny-a");
}

#[test]
fn tiny_b_cpu_kernels_match_candle_ops() {
    check_model("tiny-b");
}
