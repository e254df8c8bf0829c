//! Inputs real libraries and hostile uploads hold: metadata blocks and extra tracks that must
//! not fail audio that decodes, codecs we do not read inside known containers, NaN/Inf floats,
//! and crafted files that once made the decoder hold gigabytes.

mod common;

use common::*;
use traum_audio::{
    decode_to_vec, sniff_container, windows_from_file, AudioDecoder, Container, ErrorKind, Sniffed,
    FLUSH_TO_ZERO_BELOW, MAX_SAMPLE_MAGNITUDE, WINDOW_SAMPLES,
};

/// A file libFLAC, ffmpeg and every player read must decode here too, with its real length.
fn assert_decodes(name: &str, container: Container, seconds: f64) {
    let path = fixture(name);
    let head = std::fs::read(&path).unwrap();
    assert_eq!(
        sniff_container(&head[..head.len().min(traum_audio::SNIFF_LEN)]),
        Sniffed::Audio(container),
        "{name}"
    );
    let (samples, info) =
        decode_to_vec(&path).unwrap_or_else(|e| panic!("{name} must decode: {e}"));
    let decoded_s = samples.len() as f64 / 48_000.0;
    // Lossy codecs keep encoder delay and padding (symphonia ignores MP4 edit lists).
    assert!(
        (decoded_s - seconds).abs() < 0.15,
        "{name}: decoded {decoded_s:.3} s, the file holds {seconds} s ({info:?})"
    );
    assert!(
        (dominant_freq(&samples, 48_000) - 330.0).abs() < 5.0,
        "{name}"
    );
    let mut windows = windows_from_file(&path, WINDOW_SAMPLES, WINDOW_SAMPLES).unwrap();
    assert_eq!(windows.by_ref().count(), 1);
    assert!(
        (windows.decoded_seconds() - decoded_s).abs() < 0.05,
        "{name}"
    );
}

#[test]
fn flac_with_a_cuesheet_block_decodes() {
    assert_decodes("real_flac_cuesheet.flac", Container::Flac, 4.0);
}

/// libFLAC ignores reserved bits in a CUESHEET; symphonia refused the whole file.
#[test]
fn flac_with_a_cuesheet_symphonia_dislikes_decodes() {
    assert_decodes(
        "real_flac_cuesheet_reserved_bits.flac",
        Container::Flac,
        4.0,
    );
}

#[test]
fn m4b_with_a_chapter_track_decodes() {
    assert_decodes("real_m4b_chapters.m4b", Container::Mp4, 4.0);
}

/// A chapter track symphonia cannot parse (two sample entries) must not fail the audio.
#[test]
fn m4b_with_an_odd_chapter_track_decodes() {
    assert_decodes(
        "real_m4b_chapter_track_two_entries.m4b",
        Container::Mp4,
        4.0,
    );
}

/// Its length is in no header: only decoding tells it, and the decoder reports it.
#[test]
fn mp3_without_a_length_header_reports_its_decoded_length() {
    let path = fixture("real_mp3_no_xing.mp3");
    let dec = AudioDecoder::open(&path).unwrap();
    assert_eq!(dec.info().duration_s, None, "no header states the length");
    assert_decodes("real_mp3_no_xing.mp3", Container::Mp3, 4.0);
}

#[test]
fn speex_in_ogg_is_an_unsupported_codec_not_corruption() {
    let err = decode_to_vec(fixture("unsupported_speex.ogg")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedCodec, "{err}");
    assert!(err.to_string().contains("Speex"), "{err}");
}

#[test]
fn adts_aac_is_sniffed_as_the_decoder_reads_it() {
    let head = std::fs::read(fixture("tone_440_mono_22k.aac")).unwrap();
    assert_eq!(sniff_container(&head), Sniffed::Audio(Container::Aac));
    decode_to_vec(fixture("tone_440_mono_22k.aac")).unwrap();
}

fn float_wav(samples: &[f32], rate: u32) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    wav_bytes_raw(
        WavHeader {
            format_tag: 3,
            channels: 1,
            sample_rate: rate,
            bits: 32,
        },
        &data,
        false,
    )
}

/// Policy: NaN and infinite samples are damage. Each becomes silence and counts towards the
/// damaged share: a few stray ones and the file decodes; mostly NaN and it is corrupt.
#[test]
fn nan_and_inf_samples_become_silence_or_fail_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut few: Vec<f32> = sine(48_000, 440.0, 0.5, 48_000)
        .iter()
        .map(|&v| v as f32)
        .collect();
    for i in (0..few.len()).step_by(997) {
        few[i] = if i % 2 == 0 {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    few[100] = 1e30; // finite but absurd: clamped
    let path = write_file(dir.path(), "few.wav", &float_wav(&few, 48_000));
    let mut dec = AudioDecoder::open(&path).unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = dec.next_chunk().unwrap() {
        all.extend(chunk);
    }
    assert!(all
        .iter()
        .all(|s| s.is_finite() && s.abs() <= MAX_SAMPLE_MAGNITUDE));
    assert_eq!(dec.nonfinite_samples(), few.len().div_ceil(997) as u64);

    let mostly: Vec<f32> = (0..48_000)
        .map(|i| if i % 3 == 0 { 0.1 } else { f32::NAN })
        .collect();
    let path = write_file(dir.path(), "mostly.wav", &float_wav(&mostly, 48_000));
    let err = decode_to_vec(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("NaN"), "{err}");

    let all_nan = vec![f32::NAN; 4800];
    let path = write_file(dir.path(), "nan.wav", &float_wav(&all_nan, 48_000));
    let err = decode_to_vec(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
}

/// Subnormal floats (a float WAV can hold them) become exact zeros at decode, so the resampler
/// and the mel front end never run on the FPU's slow path; real signal, however quiet, stays.
#[test]
fn subnormal_samples_are_flushed_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = f32::MIN_POSITIVE / 4.0; // subnormal
    assert!(tiny.is_subnormal());
    let mut samples: Vec<f32> = (0..48_000)
        .map(|i| if i % 2 == 0 { tiny } else { -tiny * 3.0 })
        .collect();
    // Quiet but real: a 24-bit LSB, and -300 dBFS.
    samples[1000] = 1.0 / 8_388_608.0;
    samples[1001] = 1e-15;
    samples[1002] = FLUSH_TO_ZERO_BELOW * 0.5;
    let path = write_file(dir.path(), "subnormal.wav", &float_wav(&samples, 48_000));
    let mut dec = AudioDecoder::open(&path).unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = dec.next_chunk().unwrap() {
        all.extend(chunk);
    }
    assert_eq!(all.len(), samples.len());
    assert_eq!(all[1000], 1.0 / 8_388_608.0);
    assert_eq!(all[1001], 1e-15);
    let flushed: Vec<usize> = (0..all.len()).filter(|&i| all[i] == 0.0).collect();
    assert_eq!(
        flushed.len(),
        samples.len() - 2,
        "every other sample is flushed"
    );
    assert!(all.iter().all(|s| !s.is_subnormal()));
    assert_eq!(dec.nonfinite_samples(), 0, "flushing is not damage");
}

/// A crafted MP3 (valid frames, then a long run of frames whose data is garbage) at the
/// highest rate: the decoder may fill holes with silence, but pays it out in bounded pieces
/// and gives up on a long hole, instead of building one huge buffer.
#[test]
fn long_runs_of_bad_packets_never_make_a_big_chunk() {
    let mut bytes = std::fs::read(fixture("tone_1k_stereo_44k.mp3")).unwrap();
    // Corrupt the frames' payload (keep the headers) after the first third.
    let start = bytes.len() / 3;
    let mut seed = 0x9e37_79b9u32;
    for b in &mut bytes[start..] {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        if *b != 0xff && seed.is_multiple_of(3) {
            *b = (seed >> 8) as u8 & 0x7f;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "garbled.mp3", &bytes);
    let mut dec = AudioDecoder::open(&path).expect("the first third is intact");
    let mut biggest = 0;
    while let Ok(Some(chunk)) = dec.next_chunk() {
        biggest = biggest.max(chunk.len());
    }
    assert!(biggest <= 16_384, "a chunk of {biggest} samples");
}
