//! End to end: the real `traum embed` binary on audio files the test writes,
//! with the tiny fixture checkpoint, checked against transformers' outputs.

#[path = "../clap-model/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures_dir, load_reference, signal};

/// The `traum` binary, built by cargo for this test.
fn traum() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_traum"))
}

/// 32-bit float mono WAV at 48 kHz: the decoder returns these samples exactly.
fn write_f32_wav(path: &Path, samples: &[f32]) {
    std::fs::write(path, support::wav_f32(samples)).unwrap();
}

fn run(args: &[&str]) -> Output {
    let model = fixtures_dir().join("models/tiny-a");
    Command::new(traum())
        .arg("embed")
        .arg("--model")
        .arg(&model)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
        * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

#[test]
fn files_and_texts_match_the_reference_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let n_mid = (17.3f64 * 48_000.0).round() as usize;
    let mid = dir.path().join("mid.wav");
    write_f32_wav(&mid, &signal(n_mid, Some(4)));
    let short = dir.path().join("short.wav");
    write_f32_wav(
        &short,
        &signal((3.7f64 * 48_000.0).round() as usize, Some(2)),
    );

    let out = run(&[
        "--text",
        "warm analog bass with slow attack",
        mid.to_str().unwrap(),
        short.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    assert_eq!(lines.len(), 3);
    let reference = load_reference("tiny-a");
    let ref_vec =
        |key: &str| -> Vec<f32> { reference[key].flatten_all().unwrap().to_vec1().unwrap() };

    assert_eq!(lines[0]["kind"], "text");
    assert!(
        cosine(
            &floats(&lines[0]["embedding"]),
            &ref_vec("text.0.embedding")
        ) >= 0.9999
    );

    let m = &lines[1];
    assert_eq!(m["kind"], "audio");
    assert!((m["duration_s"].as_f64().unwrap() - 17.3).abs() < 1e-3);
    let windows = m["windows"].as_array().unwrap();
    assert_eq!(
        windows.len(),
        2,
        "17.3 s → a window at 0 s and an end-aligned one at 7.3 s"
    );
    assert_eq!(windows[0]["start_s"].as_f64().unwrap(), 0.0);
    assert!((windows[1]["start_s"].as_f64().unwrap() - 7.3).abs() < 1e-6);
    assert!((windows[1]["end_s"].as_f64().unwrap() - 17.3).abs() < 1e-6);
    for (i, w) in windows.iter().enumerate() {
        let cos = cosine(
            &floats(&w["embedding"]),
            &ref_vec(&format!("clip.mid.window.{i}.embedding")),
        );
        assert!(cos >= 0.9999, "window {i}: cosine {cos}");
    }
    let file = floats(&m["embedding"]);
    assert!(
        (file.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4,
        "file vector is unit length"
    );
    assert!(cosine(&file, &ref_vec("clip.mid.embedding")) >= 0.9999);

    let s = &lines[2];
    assert_eq!(s["windows"].as_array().unwrap().len(), 1);
    assert!(cosine(&floats(&s["embedding"]), &ref_vec("clip.short.embedding")) >= 0.9999);
}

#[test]
fn a_bad_file_fails_alone_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.wav");
    write_f32_wav(&good, &signal(48_000, Some(1)));
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "this is not audio, just text that ends in .wav\n").unwrap();
    let missing = dir.path().join("missing.flac");

    let out = run(&[
        text.to_str().unwrap(),
        good.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "exit status reports the failures");
    let lines = lines(&out);
    assert_eq!(lines.len(), 1, "the good file is still embedded");
    assert!(lines[0]["input"].as_str().unwrap().ends_with("good.wav"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.wav"),
        "stderr names the bad file: {stderr}"
    );
    assert!(
        stderr.contains("missing.flac"),
        "stderr names the missing file: {stderr}"
    );
}

#[test]
fn a_missing_model_says_what_to_download() {
    let out = Command::new(traum())
        .args([
            "embed",
            "--model",
            "laion/no-such-clap-model",
            "--text",
            "hi",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("huggingface-cli download laion/no-such-clap-model"),
        "{stderr}"
    );
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}

/// Copies a fixture model into a fake Hugging Face cache laid out as
/// `huggingface_hub` writes it: `hub/models--{org}--{name}/{refs/main, snapshots/<rev>/…}`.
fn fake_hf_cache(home: &Path, repo_id: &str) {
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = home
        .join("hub")
        .join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), rev).unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join("models/tiny-b")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_hub_id_is_found_in_the_hf_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    fake_hf_cache(home.path(), "laion/tiny-clap-test");
    let out = Command::new(traum())
        .args([
            "embed",
            "--model",
            "laion/tiny-clap-test",
            "--text",
            "rain on a tin roof",
        ])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    let reference = load_reference("tiny-b");
    let text3: Vec<f32> = reference["text.3.embedding"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(cosine(&floats(&lines[0]["embedding"]), &text3) >= 0.9999);
}

#[test]
fn every_supported_format_embeds() {
    let audio = fixtures_dir().join("../audio");
    let files: Vec<PathBuf> = ["flac", "mp3", "ogg", "m4a", "aac"]
        .iter()
        .map(|ext| audio.join(format!("tone_440_mono_22k.{ext}")))
        .chain(std::iter::once(audio.join("tone_1k_stereo_44k.m4a")))
        .collect();
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    assert_eq!(lines.len(), files.len());
    let vectors: Vec<Vec<f32>> = lines.iter().map(|l| floats(&l["embedding"])).collect();
    for (line, v) in lines.iter().zip(&vectors) {
        let duration = line["duration_s"].as_f64().unwrap();
        assert!(
            (0.95..1.7).contains(&duration),
            "{}: {duration} s",
            line["input"]
        );
        assert_eq!(v.len(), 24);
    }
    // The same 440 Hz tone in different codecs embeds alike; the 1 kHz stereo one less so.
    let same = cosine(&vectors[0], &vectors[1]);
    let other = cosine(&vectors[0], &vectors[5]);
    assert!(
        same > other,
        "flac~mp3 {same} should exceed 440 Hz~1 kHz {other}"
    );
}
