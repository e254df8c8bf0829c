//! Parity of the candle port with Hugging Face transformers' `ClapModel` on
//! the tiny random-weight checkpoints made by `tools/make_clap_fixtures.py`.
//!
//! Tolerances (f32, CPU): every audio-window, file and text embedding has
//! cosine ≥ 0.9999 with the reference, and the pre-projection audio pooler
//! output is within 1e-3 max abs; token ids match exactly.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use clap_model::{mean_embedding, ClapEmbedder, ModelFiles};
use common::{fixtures_dir, load_reference, signal, window_starts};

const MIN_COSINE: f32 = 0.9999;
const POOLED_MAX_ABS: f32 = 1e-3;
const WINDOW: usize = 480_000;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn vec1(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

struct Fixture {
    embedder: ClapEmbedder,
    reference: HashMap<String, Tensor>,
    manifest: serde_json::Value,
}

fn load(model: &str) -> Fixture {
    let dir = fixtures_dir().join("models").join(model);
    let files = ModelFiles::resolve(dir.to_str().unwrap()).expect("fixture model resolves");
    let embedder =
        ClapEmbedder::from_files(&files, Device::Cpu, DType::F32, 4).expect("fixture model loads");
    let manifest_path = fixtures_dir()
        .join("reference")
        .join(format!("{model}.json"));
    let manifest = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    Fixture {
        embedder,
        reference: load_reference(model),
        manifest,
    }
}

fn clips(manifest: &serde_json::Value) -> Vec<(String, usize, Option<u64>)> {
    manifest["clips"]
        .as_array()
        .expect("manifest lists clips")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let n = c["n_samples"].as_u64().unwrap() as usize;
            (name, n, c["seed"].as_u64())
        })
        .collect()
}

fn check_audio(model: &str) {
    let fx = load(model);
    let mut worst = 1f32;
    let mut worst_pooled = 0f32;
    for (name, n, seed) in clips(&fx.manifest) {
        let wave = signal(n, seed);
        let starts = window_starts(n, WINDOW, WINDOW);
        let windows: Vec<&[f32]> = starts
            .iter()
            .map(|&s| &wave[s..(s + WINDOW).min(n)])
            .collect();
        let ours = fx.embedder.embed_windows(&windows).unwrap();
        for (i, emb) in ours.iter().enumerate() {
            let key = format!("clip.{name}.window.{i}.embedding");
            let reference = vec1(
                fx.reference
                    .get(&key)
                    .unwrap_or_else(|| panic!("missing {key}")),
            );
            let cos = cosine(emb, &reference);
            worst = worst.min(cos);
            assert!(cos >= MIN_COSINE, "{model} {key}: cosine {cos}");
        }
        // Pre-projection pooled output, one window at a time.
        for (i, w) in windows.iter().enumerate() {
            let feats = fx.embedder.front_end().batch(&[w], &Device::Cpu).unwrap();
            let pooled = vec1(&fx.embedder.model().audio_pooled(&feats).unwrap());
            let key = format!("clip.{name}.window.{i}.pooled");
            let reference = vec1(&fx.reference[&key]);
            let max_abs = pooled
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst_pooled = worst_pooled.max(max_abs);
            assert!(
                max_abs <= POOLED_MAX_ABS,
                "{model} {key}: max abs {max_abs}"
            );
        }
        let file = mean_embedding(&ours).unwrap();
        let reference = vec1(&fx.reference[&format!("clip.{name}.embedding")]);
        let cos = cosine(&file, &reference);
        assert!(
            cos >= MIN_COSINE,
            "{model} clip {name} file embedding: cosine {cos}"
        );
    }
    eprintln!("{model}: worst audio cosine {worst:.7}, worst pooled max abs {worst_pooled:.2e}");
}

fn check_text(model: &str) {
    let fx = load(model);
    let texts: Vec<String> = fx.manifest["texts"]
        .as_array()
        .expect("manifest lists texts")
        .iter()
        .map(|t| {
            t["text"]
                .as_str()
                .or_else(|| t.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = fx.embedder.embed_texts(&refs).unwrap();
    let mut worst = 1f32;
    for (j, text) in texts.iter().enumerate() {
        let ids = fx.embedder.tokenizer().encode(text).unwrap();
        let ref_ids: Vec<i64> = fx.reference[&format!("text.{j}.input_ids")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        assert_eq!(ids, ref_ids, "{model} token ids of text {j} ({text:?})");
        let reference = vec1(&fx.reference[&format!("text.{j}.embedding")]);
        let cos = cosine(&ours[j], &reference);
        worst = worst.min(cos);
        assert!(
            cos >= MIN_COSINE,
            "{model} text {j} ({text:?}): cosine {cos}"
        );
    }
    eprintln!(
        "{model}: worst text cosine {worst:.7} over {} texts",
        texts.len()
    );
}

#[test]
fn tiny_a_audio_matches_transformers() {
    check_audio("tiny-a");
}

#[test]
fn tiny_a_text_matches_transformers() {
    check_text("tiny-a");
}

#[test]
fn tiny_b_audio_matches_transformers() {
    check_audio("tiny-b");
}

#[test]
fn tiny_b_text_matches_transformers() {
    check_text("tiny-b");
}

#[test]
fn batching_does_not_change_embeddings() {
    let fx = load("tiny-a");
    let waves: Vec<Vec<f32>> = [(48_000, Some(5)), (200_000, Some(6)), (WINDOW, Some(7))]
        .into_iter()
        .map(|(n, s)| signal(n, s))
        .collect();
    let windows: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let batched = fx.embedder.embed_windows(&windows).unwrap();
    for (w, b) in windows.iter().zip(&batched) {
        let single = fx.embedder.embed_windows(&[w]).unwrap();
        assert!(cosine(&single[0], b) > 0.99999);
    }
    // Different inputs stay apart: the check above must not pass on a constant output.
    assert!(cosine(&batched[0], &batched[1]) < 0.999);
}
