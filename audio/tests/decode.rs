//! Decoding real files: generated WAVs in every sample format, committed FLAC/MP3/Ogg/M4A
//! fixtures, and chained Ogg streams.

mod common;

use common::*;
use traum_audio::{decode_to_vec, AudioDecoder, MonoStream, MODEL_SAMPLE_RATE};

/// Expected 48 kHz length for `n` native samples.
fn out_len(n: usize, rate: u32) -> usize {
    ((n as u64 * 48_000 + u64::from(rate) / 2) / u64::from(rate)) as usize
}

#[test]
fn wav_every_format_rate_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let freq = 997.0;
    let amp = 0.5;
    for fmt in ALL_FMTS {
        for rate in [44_100u32, 48_000, 22_050] {
            for n_ch in [1usize, 2] {
                let n = rate as usize; // 1 s
                let left = sine(rate, freq, amp, n);
                // Right = half of left, so the mean is 0.75·left (not left, not the sum).
                let chans: Vec<Vec<f64>> = if n_ch == 1 {
                    vec![left.clone()]
                } else {
                    vec![left.clone(), left.iter().map(|v| v / 2.0).collect()]
                };
                let gain = if n_ch == 1 { 1.0 } else { 0.75 };
                let name = format!("t_{fmt:?}_{rate}_{n_ch}.wav");
                let path = write_file(dir.path(), &name, &wav_bytes(fmt, rate, &chans));

                // Native rate: exact samples (up to quantisation) from the decoder.
                let dec = AudioDecoder::open(&path).unwrap();
                let info = dec.info().clone();
                assert_eq!(info.container, "wav", "{name}");
                assert_eq!(info.sample_rate, rate, "{name}");
                assert_eq!(usize::from(info.channels), n_ch, "{name}");
                assert_eq!(info.n_frames, Some(n as u64), "{name}");
                assert!((info.duration_s.unwrap() - 1.0).abs() < 1e-9, "{name}");
                let native: Vec<f32> = dec.flat_map(|c| c.unwrap()).collect();
                assert_eq!(native.len(), n, "{name}");
                let mean_q =
                    |k: usize| chans.iter().map(|c| fmt.quantise(c[k])).sum::<f64>() / n_ch as f64;
                let max_err = (0..n)
                    .map(|k| (f64::from(native[k]) - mean_q(k)).abs())
                    .fold(0.0, f64::max);
                assert!(max_err < 1e-6, "{name}: native samples off by {max_err}");

                // 48 kHz output: length, level, pitch and fidelity.
                let (out, _) = decode_to_vec(&path).unwrap();
                assert_eq!(out.len(), out_len(n, rate), "{name}");
                let level = rms(&out[4800..out.len() - 4800]);
                let want = gain * amp / 2f64.sqrt();
                assert!(
                    (level / want - 1.0).abs() < 0.01,
                    "{name}: rms {level}, want {want}"
                );
                let f = dominant_freq(&out, MODEL_SAMPLE_RATE);
                assert!((f - freq).abs() <= 5.0, "{name}: dominant {f} Hz");
                // Quantisation noise bounds the SNR: ~6 dB/bit; 8-bit gives ~45 dB.
                let snr = snr_db(&out, MODEL_SAMPLE_RATE, freq, gain * amp, 2400);
                let floor = if fmt == Fmt::U8 { 35.0 } else { 70.0 };
                assert!(snr > floor, "{name}: SNR {snr:.1} dB");
            }
        }
    }
}

#[test]
fn stereo_downmix_is_the_mean_of_different_channels() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 48_000;
    let n = 24_000;
    let left = sine(rate, 440.0, 0.6, n);
    let right = sine(rate, 3000.0, 0.2, n);
    let path = write_file(
        dir.path(),
        "lr.wav",
        &wav_bytes(Fmt::F32, rate, &[left.clone(), right.clone()]),
    );
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.channels, 2);
    assert_eq!(out.len(), n);
    for k in 0..n {
        let want = (left[k] as f32 + right[k] as f32) / 2.0;
        assert!(
            (out[k] - want).abs() < 1e-6,
            "sample {k}: {} vs {want}",
            out[k]
        );
    }
    // Each tone at half its amplitude.
    assert!((tone_amplitude(&out, rate, 440.0) - 0.3).abs() < 1e-3);
    assert!((tone_amplitude(&out, rate, 3000.0) - 0.1).abs() < 1e-3);
}

#[test]
fn stream_chunks_are_bounded() {
    // 20 s of 44.1 kHz: chunks stay packet-sized and add up to the whole.
    let dir = tempfile::tempdir().unwrap();
    let n = 44_100 * 20;
    let path = write_file(
        dir.path(),
        "long.wav",
        &wav_bytes(Fmt::S16, 44_100, &[sine(44_100, 500.0, 0.3, n)]),
    );
    let stream = MonoStream::open(&path).unwrap();
    let mut total = 0;
    let mut biggest = 0;
    for chunk in stream {
        let chunk = chunk.unwrap();
        biggest = biggest.max(chunk.len());
        total += chunk.len();
    }
    assert_eq!(total, out_len(n, 44_100));
    assert!(biggest < 48_000, "largest chunk {biggest} samples");
}

struct Fixture {
    file: &'static str,
    container: &'static str,
    codec: &'static str,
    rate: u32,
    channels: u16,
    seconds: f64,
    freq: f64,
    /// Allowed length error in seconds (encoder delay/padding for lossy codecs).
    tolerance_s: f64,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        file: "tone_1k_stereo_44k.flac",
        container: "flac",
        codec: "flac",
        rate: 44_100,
        channels: 2,
        seconds: 1.0,
        freq: 1000.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_440_mono_22k.flac",
        container: "flac",
        codec: "flac",
        rate: 22_050,
        channels: 1,
        seconds: 1.0,
        freq: 440.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_1k_stereo_44k.mp3",
        container: "mp3",
        codec: "mp3",
        rate: 44_100,
        channels: 2,
        seconds: 1.5,
        freq: 1000.0,
        tolerance_s: 0.06,
    },
    Fixture {
        file: "tone_440_mono_22k.mp3",
        container: "mp3",
        codec: "mp3",
        rate: 22_050,
        channels: 1,
        seconds: 1.5,
        freq: 440.0,
        tolerance_s: 0.06,
    },
    Fixture {
        file: "tone_1k_stereo_44k.ogg",
        container: "ogg",
        codec: "vorbis",
        rate: 44_100,
        channels: 2,
        seconds: 1.5,
        freq: 1000.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_440_mono_22k.ogg",
        container: "ogg",
        codec: "vorbis",
        rate: 22_050,
        channels: 1,
        seconds: 1.5,
        freq: 440.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_1k_stereo_44k.m4a",
        container: "m4a",
        codec: "aac",
        rate: 44_100,
        channels: 2,
        seconds: 1.5,
        freq: 1000.0,
        tolerance_s: 0.1,
    },
    Fixture {
        file: "tone_440_mono_22k.m4a",
        container: "m4a",
        codec: "aac",
        rate: 22_050,
        channels: 1,
        seconds: 1.5,
        freq: 440.0,
        tolerance_s: 0.1,
    },
    Fixture {
        file: "tone_1k_stereo_44k.aiff",
        container: "aiff",
        codec: "pcm_s16be",
        rate: 44_100,
        channels: 2,
        seconds: 0.5,
        freq: 1000.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_440_mono_22k.aifc",
        container: "aiff",
        codec: "pcm_f32be",
        rate: 22_050,
        channels: 1,
        seconds: 0.5,
        freq: 440.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_1k_stereo_44k_sowt.aifc",
        container: "aiff",
        codec: "pcm_s16le",
        rate: 44_100,
        channels: 2,
        seconds: 0.5,
        freq: 1000.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_1k_stereo_44k_ms_adpcm.wav",
        container: "wav",
        codec: "adpcm_ms",
        rate: 44_100,
        channels: 2,
        seconds: 1.0,
        freq: 1000.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_440_mono_22k_ima_adpcm.wav",
        container: "wav",
        codec: "adpcm_ima_wav",
        rate: 22_050,
        channels: 1,
        seconds: 1.0,
        freq: 440.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_1k_stereo_44k_alac.m4a",
        container: "m4a",
        codec: "alac",
        rate: 44_100,
        channels: 2,
        seconds: 1.0,
        freq: 1000.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_440_mono_22k_alac.m4a",
        container: "m4a",
        codec: "alac",
        rate: 22_050,
        channels: 1,
        seconds: 1.0,
        freq: 440.0,
        tolerance_s: 0.0,
    },
    Fixture {
        file: "tone_1k_stereo_48k.opus",
        container: "ogg",
        codec: "opus",
        rate: 48_000,
        channels: 2,
        seconds: 1.5,
        freq: 1000.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_440_mono_16k.opus",
        container: "ogg",
        codec: "opus",
        rate: 48_000,
        channels: 1,
        seconds: 1.5,
        freq: 440.0,
        tolerance_s: 0.03,
    },
    Fixture {
        file: "tone_440_mono_22k.aac",
        container: "aac",
        codec: "aac",
        rate: 22_050,
        channels: 1,
        seconds: 1.5,
        freq: 440.0,
        tolerance_s: 0.13,
    },
];

#[test]
fn encoded_fixtures_decode_with_right_length_pitch_and_level() {
    for fx in FIXTURES {
        let (out, info) =
            decode_to_vec(fixture(fx.file)).unwrap_or_else(|e| panic!("{}: {e}", fx.file));
        assert_eq!(info.container, fx.container, "{}", fx.file);
        assert_eq!(info.codec, fx.codec, "{}", fx.file);
        assert_eq!(info.sample_rate, fx.rate, "{}", fx.file);
        assert_eq!(info.channels, fx.channels, "{}", fx.file);
        let secs = out.len() as f64 / 48_000.0;
        eprintln!(
            "{}: decoded {secs:.4} s, header {:?} s",
            fx.file, info.duration_s
        );
        assert!(
            (secs - fx.seconds).abs() <= fx.tolerance_s + 1e-4,
            "{}: decoded {secs:.4} s, want {} s ± {}",
            fx.file,
            fx.seconds,
            fx.tolerance_s
        );
        if let Some(d) = info.duration_s {
            assert!(
                (d - fx.seconds).abs() <= fx.tolerance_s + 1e-4,
                "{}: header says {d} s",
                fx.file
            );
        }
        let f = dominant_freq(&out, 48_000);
        assert!((f - fx.freq).abs() <= 5.0, "{}: dominant {f} Hz", fx.file);
        // ffmpeg's sine source is amplitude 1/8; lossy codecs keep a pure tone's level within 1 dB.
        let mid = &out[out.len() / 4..out.len() * 3 / 4];
        let level_db = 20.0 * (rms(mid) / (0.125 / 2f64.sqrt())).log10();
        assert!(
            level_db.abs() < 1.0,
            "{}: level {level_db:.2} dB off",
            fx.file
        );
        // Tone, not noise: nearly all energy at the tone.
        let a = tone_amplitude(mid, 48_000, fx.freq);
        assert!(
            a / (rms(mid) * 2f64.sqrt()) > 0.97,
            "{}: tone holds too little of the energy",
            fx.file
        );
    }
}

#[test]
fn chained_ogg_with_rate_change_plays_both_links() {
    // Two Ogg streams back to back (44.1 kHz stereo 1 kHz, then 22.05 kHz mono 440 Hz): symphonia
    // signals ResetRequired at the second link; we switch decoder and resampler and carry on.
    let mut bytes = std::fs::read(fixture("tone_1k_stereo_44k.ogg")).unwrap();
    bytes.extend(std::fs::read(fixture("tone_440_mono_22k.ogg")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "chained.ogg", &bytes);
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.sample_rate, 44_100);
    let secs = out.len() as f64 / 48_000.0;
    assert!((secs - 3.0).abs() < 0.06, "decoded {secs} s");
    let first = &out[..48_000];
    let second = &out[out.len() - 48_000..];
    assert!((dominant_freq(first, 48_000) - 1000.0).abs() <= 5.0);
    assert!((dominant_freq(second, 48_000) - 440.0).abs() <= 5.0);
}

#[test]
fn extension_is_only_a_hint() {
    // A FLAC named .mp3 still decodes as FLAC.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_440_mono_22k.flac")).unwrap();
    let path = write_file(dir.path(), "actually_flac.mp3", &bytes);
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.container, "flac");
    assert_eq!(out.len(), 48_000);
}

#[test]
fn id3_tagged_mp3_is_recognised() {
    // A 3000-byte ID3v2 tag in front of the MP3 (syncsafe size 3000 = 0x17, 0x38).
    let mut bytes = b"ID3\x03\x00\x00\x00\x00\x17\x38".to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 3000));
    bytes.extend(std::fs::read(fixture("tone_440_mono_22k.mp3")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "tagged.mp3", &bytes);
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.container, "mp3");
    assert!((out.len() as f64 / 48_000.0 - 1.5).abs() < 0.06);
    // The LAME Info header behind the tag gives the exact length.
    assert_eq!(info.duration_s, Some(1.5));
}

#[test]
fn estimated_lengths_are_not_reported_or_enforced() {
    // Raw AAC (ADTS) has no length field: symphonia's bitrate estimate is not passed on, and a
    // long trailing tag (which throws such estimates off) does not make the file "truncated".
    let mut bytes = std::fs::read(fixture("tone_440_mono_22k.aac")).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 20_000));
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "padded.aac", &bytes);
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.container, "aac");
    assert_eq!(info.duration_s, None);
    assert!((out.len() as f64 / 48_000.0 - 1.5).abs() < 0.13);
}

#[test]
fn piped_wav_with_placeholder_sizes_decodes_fully() {
    // `ffmpeg ... -f wav - > file.wav` leaves 0xFFFFFFFF in the RIFF and data sizes.
    let mut bytes = wav_bytes(Fmt::S16, 44_100, &[sine(44_100, 440.0, 0.5, 44_100)]);
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "piped.wav", &bytes);
    let (out, info) = decode_to_vec(&path).unwrap();
    assert_eq!(info.duration_s, None, "the placeholder is not a length");
    assert_eq!(out.len(), 48_000);
}
