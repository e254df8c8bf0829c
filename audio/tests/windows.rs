//! Window policy, streaming equivalence and bounded memory.

mod common;

use common::*;
use traum_audio::{
    decode_to_vec, window_starts, windows_from_file, Window, Windower, MODEL_SAMPLE_RATE,
    WINDOW_SAMPLES,
};

const W: u64 = WINDOW_SAMPLES as u64;
const SR: u64 = MODEL_SAMPLE_RATE as u64;

#[test]
fn window_starts_policy() {
    assert_eq!(window_starts(0, W, W), Vec::<u64>::new());
    // Shorter than a window: one short window from 0.
    assert_eq!(window_starts(1, W, W), vec![0]);
    assert_eq!(window_starts(3 * SR, W, W), vec![0]);
    // Exactly one window.
    assert_eq!(window_starts(W, W, W), vec![0]);
    // One sample more: the end-aligned window starts at 1.
    assert_eq!(window_starts(W + 1, W, W), vec![0, 1]);
    // 17.3 s: 0 and 7.3 s (end-aligned).
    assert_eq!(
        window_starts(17_300 * SR / 1000, W, W),
        vec![0, 7_300 * SR / 1000]
    );
    // Exact multiples: no extra window.
    assert_eq!(window_starts(20 * SR, W, W), vec![0, 10 * SR]);
    assert_eq!(window_starts(30 * SR, W, W), vec![0, 10 * SR, 20 * SR]);
    // Hop < window: 23 s, hop 5 s -> 0, 5, 10, then end-aligned 13.
    assert_eq!(
        window_starts(23 * SR, W, 5 * SR),
        vec![0, 5 * SR, 10 * SR, 13 * SR]
    );
    // Hop < window landing exactly on the end: 20 s, hop 5 s -> 0, 5, 10.
    assert_eq!(window_starts(20 * SR, W, 5 * SR), vec![0, 5 * SR, 10 * SR]);
    // Every window is full length and inside the signal; the last ends at n.
    for n in [W + 1, 2 * W - 1, 2 * W + 12_345, 7 * W + 3] {
        for hop in [W, W / 2, W / 3 + 7, 1_000] {
            let starts = window_starts(n, W, hop);
            assert!(starts.iter().all(|&s| s + W <= n), "n={n} hop={hop}");
            assert_eq!(starts.last().unwrap() + W, n, "n={n} hop={hop}");
            assert!(
                starts.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= hop),
                "n={n} hop={hop}"
            );
        }
    }
}

#[test]
fn invalid_window_and_hop_are_rejected() {
    for (w, h) in [(0, 0), (10, 0), (10, 11), (0, 5)] {
        let err = Windower::new(w, h).unwrap_err();
        assert_eq!(err.code(), "INVALID_ARGUMENT", "{w}/{h}");
        assert!(err.to_string().contains("hop"), "{err}");
    }
}

#[test]
fn window_times() {
    let w = Window {
        index: 1,
        start_sample: 7_300 * SR / 1000,
        samples: vec![0.0; WINDOW_SAMPLES],
    };
    assert!((w.start_s(MODEL_SAMPLE_RATE) - 7.3).abs() < 1e-12);
    assert!((w.end_s(MODEL_SAMPLE_RATE) - 17.3).abs() < 1e-12);
}

/// Deterministic chunk sizes in `1..=max`.
fn chunk_sizes(max: usize, seed: u64) -> impl Iterator<Item = usize> {
    let mut s = seed;
    std::iter::repeat_with(move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        1 + (s >> 33) as usize % max
    })
}

fn stream_windows(
    signal: &[f32],
    window: usize,
    hop: usize,
    max_chunk: usize,
    seed: u64,
) -> (Vec<Window>, usize) {
    let mut w = Windower::new(window, hop).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut biggest = 0;
    for size in chunk_sizes(max_chunk, seed) {
        if pos >= signal.len() {
            break;
        }
        let end = (pos + size).min(signal.len());
        biggest = biggest.max(end - pos);
        out.extend(w.push(&signal[pos..end]));
        pos = end;
    }
    out.extend(w.finish());
    assert!(
        w.peak_buffered() <= window + biggest,
        "peak {} > {window} + {biggest}",
        w.peak_buffered()
    );
    (out, w.peak_buffered())
}

#[test]
fn streaming_in_tiny_chunks_matches_slicing_the_whole_signal() {
    // A small window keeps this fast; the policy does not depend on the size.
    let window = 4_800;
    for (n, hop) in [
        (0, 4_800),
        (100, 4_800),
        (4_800, 4_800),
        (4_801, 4_800),
        (8_304, 4_800),
        (9_600, 4_800),
        (11_111, 1_500),
        (9_600, 1_200),
        (20_000, 4_799),
    ] {
        let signal: Vec<f32> = (0..n).map(|k| k as f32).collect(); // sample value = its index
        let whole = Windower::split(&signal, window, hop).unwrap();
        for (max_chunk, seed) in [(1, 1), (3, 2), (50, 3), (5_000, 4), (30_000, 5)] {
            let (streamed, _) = stream_windows(&signal, window, hop, max_chunk, seed);
            assert_eq!(streamed, whole, "n={n} hop={hop} chunks≤{max_chunk}");
        }
        let starts: Vec<u64> = whole.iter().map(|w| w.start_sample).collect();
        assert_eq!(starts, window_starts(n as u64, window as u64, hop as u64));
        for w in &whole {
            assert_eq!(
                w.samples[0], w.start_sample as f32,
                "samples start at the window start"
            );
            assert_eq!(w.samples.len(), window.min(n));
        }
        assert!(whole.iter().enumerate().all(|(i, w)| w.index == i));
    }
}

#[test]
fn ten_minutes_stream_with_bounded_memory() {
    // 10 minutes at 48 kHz, real window size, fed in chunks of up to 4096 samples.
    let n = 10 * 60 * SR as usize;
    let max_chunk = 4_096;
    let mut w = Windower::new(WINDOW_SAMPLES, WINDOW_SAMPLES / 2).unwrap();
    let mut chunk = vec![0.0f32; max_chunk];
    let mut fed = 0;
    let mut starts = Vec::new();
    for size in chunk_sizes(max_chunk, 9) {
        if fed >= n {
            break;
        }
        let size = size.min(n - fed);
        for (k, v) in chunk[..size].iter_mut().enumerate() {
            *v = ((fed + k) % 1_000) as f32;
        }
        for win in w.push(&chunk[..size]) {
            assert_eq!(win.samples.len(), WINDOW_SAMPLES);
            assert_eq!(win.samples[0], (win.start_sample % 1_000) as f32);
            starts.push(win.start_sample);
        }
        fed += size;
    }
    starts.extend(w.finish().map(|win| win.start_sample));
    assert_eq!(starts, window_starts(n as u64, W, W / 2));
    assert!(
        w.peak_buffered() <= WINDOW_SAMPLES + max_chunk,
        "peak {}",
        w.peak_buffered()
    );
    assert!(
        w.peak_buffered() >= WINDOW_SAMPLES,
        "peak {}",
        w.peak_buffered()
    );
}

#[test]
fn windows_from_a_file_match_the_whole_decode() {
    // 17.3 s at 22.05 kHz stereo: two windows, at 0 and 7.3 s, as cut from the full decode.
    let dir = tempfile::tempdir().unwrap();
    let rate = 22_050;
    let n = 17_300 * rate as usize / 1000;
    let left = sine(rate, 440.0, 0.4, n);
    let right: Vec<f64> = sine(rate, 3_000.0, 0.2, n);
    let path = write_file(
        dir.path(),
        "long.wav",
        &wav_bytes(Fmt::S16, rate, &[left, right]),
    );

    let (whole, info) = decode_to_vec(&path).unwrap();
    assert_eq!(whole.len(), 17_300 * 48);
    let mut windows = windows_from_file(&path, WINDOW_SAMPLES, WINDOW_SAMPLES).unwrap();
    assert_eq!(windows.info(), &info);
    let got: Vec<Window> = windows.by_ref().map(|w| w.unwrap()).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].start_sample, 0);
    assert!((got[1].start_s(MODEL_SAMPLE_RATE) - 7.3).abs() < 1e-9);
    assert!((got[1].end_s(MODEL_SAMPLE_RATE) - 17.3).abs() < 1e-9);
    for w in &got {
        let s = w.start_sample as usize;
        assert_eq!(w.samples, whole[s..s + WINDOW_SAMPLES]);
    }
    assert!(windows.peak_buffered() < WINDOW_SAMPLES + 48_000);

    // A short file: one short window with everything.
    let short = write_file(
        dir.path(),
        "short.wav",
        &wav_bytes(Fmt::F32, 44_100, &[sine(44_100, 440.0, 0.4, 44_100 * 3)]),
    );
    let got: Vec<Window> = windows_from_file(&short, WINDOW_SAMPLES, WINDOW_SAMPLES)
        .unwrap()
        .map(|w| w.unwrap())
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples.len(), 3 * 48_000);
}

#[test]
fn windows_from_a_truncated_file_end_with_the_error() {
    // The windows decoded before the damage come out, then the error.
    let dir = tempfile::tempdir().unwrap();
    let rate = 48_000;
    let mut bytes = wav_bytes(
        Fmt::S16,
        rate,
        &[sine(rate, 440.0, 0.4, 25 * rate as usize)],
    );
    bytes.truncate(44 + 2 * 12 * rate as usize); // 12 of 25 s
    let path = write_file(dir.path(), "cut.wav", &bytes);
    let items: Vec<_> = windows_from_file(&path, WINDOW_SAMPLES, WINDOW_SAMPLES)
        .unwrap()
        .collect();
    assert!(items[0].is_ok());
    let last = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(last.code(), "CORRUPT");
    assert!(last.to_string().contains("12.00 s"), "{last}");
}
