//! Resampling quality: SNR against the ideal 48 kHz signal, stop-band rejection, exact lengths,
//! time alignment and chunking independence.

mod common;

use common::*;
use traum_audio::{resample_to_model_rate, StreamResampler};

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Resamples a 1 s tone at `rate` and returns the SNR (dB) of the 48 kHz result against the ideal
/// 48 kHz tone, ignoring 50 ms at each edge.
fn tone_snr(rate: u32, freq: f64) -> f64 {
    let x = to_f32(&sine(rate, freq, 0.5, rate as usize));
    let y = resample_to_model_rate(&x, rate).unwrap();
    assert_eq!(y.len(), 48_000, "{rate} Hz: wrong length");
    snr_db(&y, 48_000, freq, 0.5, 2_400)
}

#[test]
fn cd_rate_tones_match_the_ideal_48k_tone() {
    // The ideal comparison is only possible if the output is time-aligned to a fraction of a
    // sample: a 0.01-sample shift at 15 kHz alone would cap the SNR near 30 dB.
    for freq in [1_000.0, 15_000.0] {
        let snr = tone_snr(44_100, freq);
        eprintln!("44.1 kHz -> 48 kHz, {freq} Hz: SNR {snr:.1} dB");
        assert!(snr >= 100.0, "{freq} Hz: SNR {snr:.1} dB");
    }
}

#[test]
fn other_rates_match_the_ideal_tone() {
    for (rate, freq) in [
        (8_000, 1_000.0),
        (16_000, 3_000.0),
        (22_050, 1_000.0),
        (22_050, 9_000.0),
        (32_000, 12_000.0),
        (88_200, 15_000.0),
        (96_000, 15_000.0),
        (192_000, 1_000.0),
    ] {
        let snr = tone_snr(rate, freq);
        eprintln!("{rate} Hz -> 48 kHz, {freq} Hz: SNR {snr:.1} dB");
        assert!(snr >= 90.0, "{rate} Hz, {freq} Hz: SNR {snr:.1} dB");
    }
    // A rate with no small exact ratio takes the interpolated path.
    for freq in [1_000.0, 15_000.0] {
        let snr = tone_snr(44_056, freq);
        eprintln!("44.056 kHz -> 48 kHz, {freq} Hz: SNR {snr:.1} dB");
        assert!(snr >= 70.0, "44056 Hz, {freq} Hz: SNR {snr:.1} dB");
    }
}

#[test]
fn passband_is_flat_to_20_khz() {
    for (rate, freq) in [(44_100, 18_000.0), (44_100, 20_000.0), (96_000, 20_000.0)] {
        let x = to_f32(&sine(rate, freq, 0.5, rate as usize / 2));
        let y = resample_to_model_rate(&x, rate).unwrap();
        let gain_db =
            20.0 * (tone_amplitude(&y[2_400..y.len() - 2_400], 48_000, freq) / 0.5).log10();
        eprintln!("{rate} Hz in, {freq} Hz: {gain_db:+.4} dB");
        assert!(
            gain_db.abs() < 0.01,
            "{rate} Hz, {freq} Hz: {gain_db:+.4} dB"
        );
    }
}

#[test]
fn content_above_the_new_nyquist_band_edge_is_removed() {
    // 96 kHz in: a 23 kHz tone (just below 24 kHz, so it would pass unaltered if the filter let
    // it) and a 30 kHz tone (would alias to 18 kHz) next to a 1 kHz tone that must survive.
    let rate = 96_000;
    let n = rate as usize;
    let wanted = sine(rate, 1_000.0, 0.3, n);
    let hi = sine(rate, 23_000.0, 0.3, n);
    let alias = sine(rate, 30_000.0, 0.3, n);
    let x: Vec<f32> = (0..n)
        .map(|k| (wanted[k] + hi[k] + alias[k]) as f32)
        .collect();
    let y = resample_to_model_rate(&x, rate).unwrap();
    let mid = &y[2_400..y.len() - 2_400];
    let db = |a: f64| 20.0 * (a / 0.3).log10();
    let at_23k = db(tone_amplitude(mid, 48_000, 23_000.0));
    let at_18k = db(tone_amplitude(mid, 48_000, 18_000.0));
    eprintln!("96 kHz in: 23 kHz at {at_23k:.1} dB, 30 kHz alias (18 kHz) at {at_18k:.1} dB");
    assert!(at_23k < -60.0, "23 kHz only {at_23k:.1} dB down");
    assert!(at_18k < -60.0, "30 kHz alias only {at_18k:.1} dB down");
    let snr = snr_db(&y, 48_000, 1_000.0, 0.3, 2_400);
    eprintln!("96 kHz in: 1 kHz + 23 kHz + 30 kHz -> SNR against pure 1 kHz {snr:.1} dB");
    assert!(snr >= 60.0, "SNR {snr:.1} dB");
}

#[test]
fn images_of_cd_rate_content_are_removed() {
    // 44.1 kHz in, 20 kHz tone: its image at 24.1 kHz would fold to 23.9 kHz at 48 kHz.
    let x = to_f32(&sine(44_100, 20_000.0, 0.5, 44_100));
    let y = resample_to_model_rate(&x, 44_100).unwrap();
    let image_db =
        20.0 * (tone_amplitude(&y[2_400..y.len() - 2_400], 48_000, 23_900.0) / 0.5).log10();
    eprintln!("44.1 kHz in, 20 kHz tone: image at 23.9 kHz {image_db:.1} dB");
    assert!(image_db < -60.0, "image only {image_db:.1} dB down");
}

#[test]
fn output_length_is_exact_for_any_input_length() {
    for rate in [8_000u32, 22_050, 44_100, 96_000, 44_056] {
        for n in [0usize, 1, 2, 7, 147, 1_000, 12_345, 100_003] {
            let x = vec![0.25f32; n];
            let y = resample_to_model_rate(&x, rate).unwrap();
            let want = ((n as u64 * 48_000 + u64::from(rate) / 2) / u64::from(rate)) as usize;
            assert_eq!(y.len(), want, "{rate} Hz, {n} samples");
        }
    }
}

#[test]
fn chunking_does_not_change_the_output() {
    let rate = 44_100;
    let x = to_f32(&sine(rate, 3_000.0, 0.5, 70_000));
    let whole = resample_to_model_rate(&x, rate).unwrap();
    let mut rs = StreamResampler::new(rate).unwrap();
    let mut out = Vec::new();
    let sizes = [1usize, 2, 3, 500, 4_096, 17, 10_000];
    let mut pos = 0;
    let mut i = 0;
    while pos < x.len() {
        let end = (pos + sizes[i % sizes.len()]).min(x.len());
        out.extend(rs.process(&x[pos..end]).unwrap());
        pos = end;
        i += 1;
    }
    out.extend(rs.finish().unwrap());
    assert_eq!(out, whole);

    // finish() resets: a second stream through the same resampler gives the same result.
    let mut again = rs.process(&x).unwrap();
    again.extend(rs.finish().unwrap());
    assert_eq!(again, whole);
}

#[test]
fn impulse_lands_at_the_same_time() {
    // A click at input sample 4410 (0.1 s at 44.1 kHz) must peak at output sample 4800.
    let mut x = vec![0.0f32; 44_100];
    x[4_410] = 1.0;
    let y = resample_to_model_rate(&x, 44_100).unwrap();
    let peak = y
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(peak, 4_800);
}

#[test]
fn rate_48k_passes_through_untouched() {
    let x = to_f32(&sine(48_000, 1_234.0, 0.7, 10_001));
    let mut rs = StreamResampler::new(48_000).unwrap();
    assert!(rs.is_passthrough());
    let mut y = rs.process(&x[..5_000]).unwrap();
    y.extend(rs.process(&x[5_000..]).unwrap());
    y.extend(rs.finish().unwrap());
    assert_eq!(y, x);
}

#[test]
fn invalid_rates_are_rejected() {
    for rate in [0, 768_001, u32::MAX] {
        let err = StreamResampler::new(rate).unwrap_err();
        assert_eq!(err.code(), "RESAMPLE_FAILED");
    }
}
