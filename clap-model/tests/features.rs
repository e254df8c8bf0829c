//! Tests of the CLAP mel front end: golden values from CLAP_SPEC.md §2.4/§2.6,
//! parity with the transformers reference fixtures, padding modes, errors and
//! config parsing.

mod common;

use std::sync::OnceLock;

use candle_core::Device;
use clap_model::features::{FeatureExtractorConfig, FeaturesError, MelFrontEnd};

/// The default (LAION unfused) front end, built once for all tests.
fn front_end() -> &'static MelFrontEnd {
    static FE: OnceLock<MelFrontEnd> = OnceLock::new();
    FE.get_or_init(|| MelFrontEnd::new(FeatureExtractorConfig::default()).unwrap())
}

fn front_end_with_padding(padding: &str) -> MelFrontEnd {
    MelFrontEnd::new(FeatureExtractorConfig {
        padding: padding.to_owned(),
        ..Default::default()
    })
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// CLAP_SPEC.md §2.6 input: 440 Hz + 3 kHz, exactly 10 s.
fn two_tones() -> Vec<f32> {
    (0..480_000)
        .map(|n| {
            let n = n as f64;
            let pi = std::f64::consts::PI;
            (0.5 * (2.0 * pi * 440.0 * n / 48000.0).sin()
                + 0.25 * (2.0 * pi * 3000.0 * n / 48000.0).sin()) as f32
        })
        .collect()
}

/// Checks `actual` against a value printed with a few decimals, within half a
/// unit of its last printed digit (plus a hair for our own rounding).
fn assert_printed(actual: f64, printed: &str, what: &str) {
    let expected: f64 = printed.parse().unwrap();
    let decimals = printed.split('.').nth(1).map_or(0, str::len) as i32;
    let tol = 0.5 * 10f64.powi(-decimals) + 1e-6;
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, reference prints {printed} (tolerance {tol})"
    );
}

#[test]
fn golden_two_tones_match_spec() {
    let fe = front_end();
    assert_eq!((fe.n_frames(), fe.n_mels()), (1001, 64));
    assert_eq!((fe.max_samples(), fe.sample_rate()), (480_000, 48_000));
    let f = fe.features(&two_tones()).unwrap();
    assert_eq!(f.len(), 1001 * 64);

    let n = f.len() as f64;
    let mean = f.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = f
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let min = f.iter().copied().fold(f32::INFINITY, f32::min);
    let max = f.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // numpy printed these from float32 reductions, good to ~1e-6 relative;
    // here they are summed in f64 (the features themselves match bit for bit).
    assert!((mean - -65.400764).abs() < 1e-4, "mean {mean}");
    assert!((var.sqrt() - 37.537846).abs() < 1e-4, "std {}", var.sqrt());
    assert_eq!(min, -100.0, "digital silence floors at exactly -100 dB");
    assert_printed(f64::from(max), "24.2691", "max");

    // (frame, first eight values, last four values) as printed in §2.6.
    let frames: [(usize, &str, &str); 4] = [
        (
            0,
            "9.1951 9.8977 11.0175 12.6358 15.7295 21.5653 17.6357 18.9117",
            "-33.2478 -34.0834 -34.8804 -35.6513",
        ),
        (
            1,
            "-33.6323 -30.2513 -25.0379 -17.7469 -7.2977 16.438 24.269 21.4946",
            "-73.6046 -74.4266 -75.2301 -76.0006",
        ),
        (
            500,
            "-37.5654 -31.6488 -25.3696 -17.7591 -7.2719 16.4388 24.2679 21.4969",
            "-100 -100 -100 -100",
        ),
        (
            1000,
            "9.1404 9.8457 10.9666 12.6033 15.6654 21.7421 18.2307 18.3354",
            "-33.7856 -34.6203 -35.4165 -36.1867",
        ),
    ];
    for (t, head, tail) in frames {
        let row = &f[t * 64..(t + 1) * 64];
        for (m, printed) in head.split_whitespace().enumerate() {
            assert_printed(f64::from(row[m]), printed, &format!("frame {t} mel {m}"));
        }
        for (k, printed) in tail.split_whitespace().enumerate() {
            let m = 60 + k;
            assert_printed(f64::from(row[m]), printed, &format!("frame {t} mel {m}"));
        }
    }
}

#[test]
fn golden_slaney_filter_bank() {
    let fe = front_end();
    let bins = fe.n_freq_bins();
    assert_eq!(bins, 513);
    let bank = fe.mel_filters();
    assert_eq!(bank.len(), 64 * bins);
    let filter = |m: usize| &bank[m * bins..(m + 1) * bins];
    let nonzero = |m: usize| -> Vec<usize> {
        filter(m)
            .iter()
            .enumerate()
            .filter(|(_, &w)| w != 0.0)
            .map(|(k, _)| k)
            .collect()
    };

    // Filter 0: bins {2: 0.015, 3: 0.006}.
    assert_eq!(nonzero(0), vec![2, 3]);
    assert_printed(filter(0)[2], "0.015", "filter 0 bin 2");
    assert_printed(filter(0)[3], "0.006", "filter 0 bin 3");
    // Filter 63: bins 268..=298, column sum 0.0213283.
    let nz = nonzero(63);
    assert_eq!((nz[0], *nz.last().unwrap(), nz.len()), (268, 298, 31));
    assert_printed(filter(63).iter().sum(), "0.0213283", "filter 63 sum");
}

/// Parity with `ClapFeatureExtractor` on the shared tiny-a fixtures
/// (tests/fixtures/clap/reference, written by the Python reference script).
/// The port computes in f64 in the reference's order and rounds the spectrum
/// to f32 where it does; against transformers 5.24 / numpy 2.4.6 run directly
/// the f32 output was bit-identical (max |Δ| = 0 dB) on all these windows, so
/// the 1e-3 dB bound leaves room for other numpy/BLAS builds.
#[test]
fn parity_with_reference_fixtures() {
    let dir = common::fixtures_dir();
    let cfg = FeatureExtractorConfig::from_file(dir.join("models/tiny-a/preprocessor_config.json"))
        .unwrap();
    let fe = MelFrontEnd::new(cfg).unwrap();
    let manifest_path = dir.join("reference/tiny-a.json");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest_path.display())),
    )
    .unwrap();
    let reference = common::load_reference("features");

    let clips = manifest["clips"].as_array().expect("manifest has clips");
    assert!(!clips.is_empty());
    let mut windows_checked = 0;
    let mut worst = 0.0f32;
    for clip in clips {
        let name = clip["name"].as_str().unwrap();
        let n = clip["n_samples"].as_u64().unwrap() as usize;
        let seed = clip["seed"].as_u64();
        assert_eq!(
            n,
            (clip["seconds"].as_f64().unwrap() * 48_000.0).round() as usize,
            "{name}: n_samples"
        );
        let x = common::signal(n, seed);
        let window = fe.max_samples();
        let starts = common::window_starts(n, window, window);
        let listed: Vec<usize> = clip["window_starts"]
            .as_array()
            .expect("clip has window_starts")
            .iter()
            .map(|s| s.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(starts, listed, "{name}: window starts");
        for (i, &start) in starts.iter().enumerate() {
            let key = format!("clip.{name}.window.{i}.input_features");
            let expected = reference
                .get(&key)
                .unwrap_or_else(|| panic!("fixture has no tensor {key}"));
            assert_eq!(expected.dims(), [1001, 64], "{key}");
            let expected: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
            let got = fe.features(&x[start..n.min(start + window)]).unwrap();
            let diff = max_abs_diff(&got, &expected);
            worst = worst.max(diff);
            assert!(diff <= 1e-3, "{key}: max |Δ| = {diff} dB > 1e-3 dB");
            windows_checked += 1;
        }
        assert!(
            !reference.contains_key(&format!(
                "clip.{name}.window.{}.input_features",
                starts.len()
            )),
            "{name}: the fixture has more windows than window_starts gives"
        );
    }
    assert!(windows_checked >= 5);
    eprintln!("parity: {windows_checked} windows, max |Δ| = {worst:e} dB");
}

#[test]
fn repeatpad_equals_tiled_and_zero_padded_waveform() {
    let fe = front_end();
    // 150 001 samples: three whole copies (450 003), then zeros.
    let clip = common::signal(150_001, Some(5));
    let mut explicit: Vec<f32> = clip.iter().copied().cycle().take(3 * clip.len()).collect();
    explicit.resize(fe.max_samples(), 0.0);
    assert_eq!(fe.features(&clip).unwrap(), fe.features(&explicit).unwrap());

    // More than half a window: a single copy, i.e. plain zero padding.
    let long = common::signal(300_000, Some(6));
    let mut padded = long.clone();
    padded.resize(fe.max_samples(), 0.0);
    assert_eq!(fe.features(&long).unwrap(), fe.features(&padded).unwrap());
}

#[test]
fn pad_and_repeat_modes() {
    let clip = common::signal(150_001, Some(7));
    let max = 480_000;

    let pad = front_end_with_padding("pad");
    let mut zero_padded = clip.clone();
    zero_padded.resize(max, 0.0);
    let padded_features = pad.features(&clip).unwrap();
    assert_eq!(padded_features, pad.features(&zero_padded).unwrap());
    // The zero tail is digital silence: the last frames sit at the floor.
    assert!(padded_features[1000 * 64..].iter().all(|&v| v == -100.0));

    // "repeat": tile and cut at max (a partial fourth copy here).
    let repeat = front_end_with_padding("repeat");
    let tiled: Vec<f32> = clip.iter().copied().cycle().take(max).collect();
    assert_eq!(
        repeat.features(&clip).unwrap(),
        repeat.features(&tiled).unwrap()
    );
    assert_ne!(
        repeat.features(&clip).unwrap(),
        front_end().features(&clip).unwrap()
    );
}

#[test]
fn batch_stacks_windows() {
    let fe = front_end();
    let a = common::signal(480_000, Some(1));
    let b = common::signal(24_000, Some(2));
    let t = fe.batch(&[&a, &b], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), [2, 1, 1001, 64]);
    assert_eq!(t.dtype(), candle_core::DType::F32);
    let rows: Vec<Vec<f32>> = (0..2)
        .map(|i| t.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(rows[0], fe.features(&a).unwrap());
    assert_eq!(rows[1], fe.features(&b).unwrap());

    let err = fe.batch(&[&a, &[]], &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, FeaturesError::InBatch { index: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        fe.batch(&[], &Device::Cpu),
        Err(FeaturesError::EmptyBatch)
    ));
}

#[test]
fn rejects_bad_input() {
    let fe = front_end();
    assert!(matches!(fe.features(&[]), Err(FeaturesError::Empty)));

    let err = fe.features(&vec![0.0; 480_001]).unwrap_err();
    assert!(
        matches!(
            err,
            FeaturesError::TooLong {
                len: 480_001,
                max: 480_000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("split long audio"), "{err}");

    let mut x = vec![0.1f32; 1000];
    x[17] = f32::NAN;
    let err = fe.features(&x).unwrap_err();
    assert!(
        matches!(err, FeaturesError::NonFinite { index: 17, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not finite"), "{err}");
    x[17] = f32::INFINITY;
    assert!(fe.features(&x).is_err());
}

/// A laion/larger_clap_general-style preprocessor_config.json, leftover keys included.
const PREPROCESSOR_CONFIG: &str = r#"{
  "chunk_length_s": 10,
  "feature_extractor_type": "ClapFeatureExtractor",
  "feature_size": 64,
  "fft_window_size": 1024,
  "frequency_max": 14000,
  "frequency_min": 50,
  "hop_length": 480,
  "max_length_s": 10,
  "n_fft": 1024,
  "nb_frequency_bins": 513,
  "nb_max_frames": 1000,
  "nb_max_samples": 480000,
  "padding": "repeatpad",
  "padding_side": "right",
  "padding_value": 0.0,
  "processor_class": "ClapProcessor",
  "return_attention_mask": false,
  "sampling_rate": 48000,
  "top_db": null,
  "truncation": "rand_trunc"
}"#;

#[test]
fn parses_checkpoint_config() {
    let cfg = FeatureExtractorConfig::from_json_str(PREPROCESSOR_CONFIG).unwrap();
    assert_eq!(cfg, FeatureExtractorConfig::default());
    let fe = MelFrontEnd::new(cfg).unwrap();
    assert_eq!(
        (fe.n_frames(), fe.n_mels(), fe.max_samples()),
        (1001, 64, 480_000)
    );

    // Missing keys take the unfused checkpoints' values, not the class defaults.
    let cfg = FeatureExtractorConfig::from_json_str("{}").unwrap();
    assert_eq!(
        (cfg.frequency_min, cfg.truncation.as_str()),
        (50.0, "rand_trunc")
    );
}

#[test]
fn rejects_fusion_and_unknown_modes() {
    let fused = PREPROCESSOR_CONFIG.replace("rand_trunc", "fusion");
    let cfg = FeatureExtractorConfig::from_json_str(&fused).unwrap();
    let err = MelFrontEnd::new(cfg).unwrap_err();
    assert!(
        matches!(err, FeaturesError::UnsupportedTruncation(_)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("fusion") && msg.contains("laion/larger_clap_music_and_speech"),
        "{msg}"
    );

    let cfg = FeatureExtractorConfig {
        padding: "mirror".into(),
        ..Default::default()
    };
    assert!(matches!(
        MelFrontEnd::new(cfg),
        Err(FeaturesError::UnknownPadding(_))
    ));
    let cfg = FeatureExtractorConfig {
        frequency_max: 30_000.0,
        ..Default::default()
    };
    assert!(matches!(
        MelFrontEnd::new(cfg),
        Err(FeaturesError::InvalidConfig(_))
    ));
    assert!(FeatureExtractorConfig::from_json_str("{\"feature_size\": \"x\"}").is_err());
}

/// The device front end (STFT as a matmul, f32), run here on the CPU device,
/// against the host front end (FFT, f64) on tones, noise, a short clip
/// (repeat-padded) and silence.
///
/// Tolerances: 0.01 dB max abs on every value above −60 dB (measured worst
/// 1.7e-3 dB), and 0.5 dB on the quiet ones down to the floor (7.4e-2 dB),
/// where f32's ~1e-7 relative rounding of the strong bins leaks into bins
/// 70–100 dB below them (they are floored at −100 dB either way). A wrong
/// window, bin, filter or frame offset moves values by several dB.
#[test]
fn device_front_end_matches_the_host_front_end() {
    let fe = front_end();
    let device = fe.on_device(&Device::Cpu).unwrap();
    let noise: Vec<f32> = common::signal(480_000, Some(5));
    let short: Vec<f32> = common::signal(70_000, Some(2));
    let silence = vec![0f32; 480_000];
    let tones = two_tones();
    let windows: Vec<&[f32]> = vec![&tones, &noise, &short, &silence];
    let host = fe.batch(&windows, &Device::Cpu).unwrap();
    let dev = device.batch(fe, &windows).unwrap();
    assert_eq!(host.dims(), dev.dims());
    let host = host.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dev = dev.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mut loud, mut quiet) = (0f32, 0f32);
    for (h, d) in host.iter().zip(&dev) {
        let diff = (h - d).abs();
        if *h > -60.0 {
            loud = loud.max(diff);
        } else {
            quiet = quiet.max(diff);
        }
    }
    eprintln!("device front end: max abs {loud:e} dB above -60 dB, {quiet:e} dB below");
    assert!(loud < 0.01, "{loud} dB above -60 dB");
    assert!(quiet < 0.5, "{quiet} dB below -60 dB");
    // Errors are checked per window too: the batch is one call.
    let err = device.batch(fe, &[&tones, &[f32::NAN; 10]]).unwrap_err();
    assert!(
        matches!(err, FeaturesError::InBatch { index: 1, .. }),
        "{err}"
    );
}
