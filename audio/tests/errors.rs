//! Every way a file can fail gives the right error kind and a message that names the file.

mod common;

use std::path::Path;

use common::*;
use traum_audio::{decode_to_vec, windows_from_file, AudioDecoder, AudioError, ErrorKind};

/// Decodes `path` to the end and returns the error it must produce.
fn decode_err(path: &Path) -> AudioError {
    match decode_to_vec(path) {
        Ok((samples, info)) => panic!(
            "{} decoded ({} samples, {info:?}) but should fail",
            path.display(),
            samples.len()
        ),
        Err(e) => e,
    }
}

fn assert_err(path: &Path, kind: ErrorKind, code: &str, needles: &[&str]) -> AudioError {
    let err = decode_err(path);
    let msg = err.to_string();
    eprintln!("{code}: {msg}");
    assert_eq!(err.kind(), kind, "{msg}");
    assert_eq!(err.code(), code);
    let file_name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(file_name),
        "message does not name the file: {msg}"
    );
    for needle in needles {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    err
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn noise_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn pcm16(n: usize) -> Vec<u8> {
    sine(44_100, 440.0, 0.5, n)
        .iter()
        .flat_map(|v| ((v * 32767.0) as i16).to_le_bytes())
        .collect()
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.wav");
    let err = assert_err(&path, ErrorKind::NotFound, "NOT_FOUND", &["not found"]);
    assert_eq!(err.path(), Some(path.as_path()));
}

#[test]
fn unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "locked.wav",
        &wav_bytes(Fmt::S16, 44_100, &[vec![0.0; 100]]),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything; only check where permissions are enforced.
    if std::fs::read(&path).is_err() {
        assert_err(
            &path,
            ErrorKind::PermissionDenied,
            "PERMISSION_DENIED",
            &["permission denied"],
        );
    }
}

#[test]
fn text_file_named_wav() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "notes.wav", b"shopping list:\n- milk\n- eggs\n");
    assert_err(
        &path,
        ErrorKind::UnsupportedFormat,
        "UNSUPPORTED_FORMAT",
        &[
            "not a recognised audio file",
            "looked like plain text",
            "supported: wav (pcm, float, adpcm), aiff/aifc, flac, mp3, ogg (vorbis, opus, flac), m4a (aac, alac)",
        ],
    );
}

#[test]
fn random_bytes_named_mp3() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=20u64 {
        let path = write_file(
            dir.path(),
            &format!("noise{seed}.mp3"),
            &noise_bytes(64 * 1024, seed),
        );
        assert_err(
            &path,
            ErrorKind::UnsupportedFormat,
            "UNSUPPORTED_FORMAT",
            &["unrecognised binary data"],
        );
    }
}

#[test]
fn other_known_files() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_file(dir.path(), "cover.mp3", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    assert_err(
        &png,
        ErrorKind::UnsupportedFormat,
        "UNSUPPORTED_FORMAT",
        &["a PNG image"],
    );
    let caf = write_file(dir.path(), "loop.aiff", b"caff\0\x01\0\0desc");
    assert_err(
        &caf,
        ErrorKind::UnsupportedFormat,
        "UNSUPPORTED_FORMAT",
        &["Apple CAF audio"],
    );
    // AIFF is read; one cut off inside its header is damage, not an unknown format.
    let aiff = write_file(dir.path(), "track.aiff", b"FORM\0\0\0\x20AIFFCOMM");
    let err = decode_err(&aiff);
    assert_ne!(err.kind(), ErrorKind::UnsupportedFormat, "{err}");
    assert!(err.to_string().contains("track.aiff"), "{err}");
}

#[test]
fn wav_with_sample_rate_zero() {
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 1,
        channels: 1,
        sample_rate: 0,
        bits: 16,
    };
    let path = write_file(
        dir.path(),
        "rate0.wav",
        &wav_bytes_raw(h, &pcm16(1000), false),
    );
    assert_err(
        &path,
        ErrorKind::InvalidHeader,
        "INVALID_HEADER",
        &["sample rate is 0 Hz"],
    );
}

#[test]
fn wav_with_absurd_sample_rate() {
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 1,
        channels: 1,
        sample_rate: 4_000_000_000,
        bits: 16,
    };
    let path = write_file(
        dir.path(),
        "rate4g.wav",
        &wav_bytes_raw(h, &pcm16(1000), false),
    );
    assert_err(
        &path,
        ErrorKind::InvalidHeader,
        "INVALID_HEADER",
        &["sample rate is 4000000000 Hz"],
    );
}

#[test]
fn wav_with_zero_channels() {
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 1,
        channels: 0,
        sample_rate: 44_100,
        bits: 16,
    };
    let path = write_file(
        dir.path(),
        "ch0.wav",
        &wav_bytes_raw(h, &pcm16(1000), false),
    );
    assert_err(
        &path,
        ErrorKind::InvalidHeader,
        "INVALID_HEADER",
        &["channel count is 0"],
    );
}

#[test]
fn wav_with_too_many_channels() {
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 1,
        channels: 65,
        sample_rate: 44_100,
        bits: 16,
    };
    let path = write_file(
        dir.path(),
        "ch65.wav",
        &wav_bytes_raw(h, &pcm16(65 * 10), false),
    );
    assert_err(
        &path,
        ErrorKind::InvalidHeader,
        "INVALID_HEADER",
        &["channel count is 65 (must be 1 to 64)"],
    );
}

#[test]
fn wav_with_no_frames() {
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 1,
        channels: 2,
        sample_rate: 44_100,
        bits: 16,
    };
    let path = write_file(dir.path(), "empty.wav", &wav_bytes_raw(h, &[], false));
    assert_err(&path, ErrorKind::Empty, "EMPTY", &["contains no audio"]);
}

#[test]
fn zero_byte_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "zero.flac", b"");
    assert_err(&path, ErrorKind::Empty, "EMPTY", &["0 bytes"]);
}

#[test]
fn wav_with_unsupported_codec() {
    // Format tag 0x0055 is MP3-in-WAV, which symphonia's WAV reader does not take.
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 0x55,
        channels: 1,
        sample_rate: 44_100,
        bits: 16,
    };
    let path = write_file(
        dir.path(),
        "mp3inwav.wav",
        &wav_bytes_raw(h, &pcm16(1000), false),
    );
    assert_err(
        &path,
        ErrorKind::UnsupportedCodec,
        "UNSUPPORTED_CODEC",
        &[
            "the audio codec MP3 (WAV format tag 0x0055) is not supported (container: wav)",
            "convert it",
        ],
    );
}

#[test]
fn truncated_wav() {
    // Header promises 1 s, the data stops after 0.25 s.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = wav_bytes(Fmt::S16, 44_100, &[sine(44_100, 440.0, 0.5, 44_100)]);
    bytes.truncate(44 + 2 * 11_025);
    let path = write_file(dir.path(), "cut.wav", &bytes);
    let err = assert_err(
        &path,
        ErrorKind::Corrupt,
        "CORRUPT",
        &["truncated", "header declares 1.00 s"],
    );
    match err {
        AudioError::Corrupt { at_s: Some(at), .. } => {
            assert!((at - 0.25).abs() < 0.01, "broke at {at}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_flac() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_1k_stereo_44k.flac")).unwrap();
    let path = write_file(dir.path(), "cut.flac", &bytes[..bytes.len() / 2]);
    let err = assert_err(
        &path,
        ErrorKind::Corrupt,
        "CORRUPT",
        &["corrupt or truncated"],
    );
    let AudioError::Corrupt { at_s: Some(at), .. } = err else {
        panic!("{err:?}")
    };
    // Half the bytes of a 1 s file: the decoder stops about half-way (frames are not all equal).
    assert!(at > 0.3 && at < 0.7, "broke at {at} s");
}

#[test]
fn truncated_mp3() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_1k_stereo_44k.mp3")).unwrap();
    let path = write_file(dir.path(), "cut.mp3", &bytes[..bytes.len() / 3]);
    assert_err(
        &path,
        ErrorKind::Corrupt,
        "CORRUPT",
        &["corrupt or truncated"],
    );
}

#[test]
fn flac_header_only() {
    // Cut inside the first audio frame: the header parses, nothing decodes.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_440_mono_22k.flac")).unwrap();
    let path = write_file(dir.path(), "stub.flac", &bytes[..100]);
    let err = decode_err(&path);
    assert!(
        matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Empty),
        "{err}"
    );
}

#[test]
fn garbage_after_a_valid_header() {
    // A FLAC header followed by noise instead of frames.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("tone_440_mono_22k.flac")).unwrap();
    bytes.truncate(42); // "fLaC" + the STREAMINFO block; drop later metadata and all frames
    bytes[4] |= 0x80; // mark STREAMINFO as the last metadata block
    bytes.extend(noise_bytes(20_000, 7));
    let path = write_file(dir.path(), "noisy.flac", &bytes);
    assert_err(&path, ErrorKind::Corrupt, "CORRUPT", &[]);
}

#[test]
fn windows_from_file_reports_open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = windows_from_file(dir.path().join("missing.ogg"), 480_000, 480_000).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let path = write_file(
        dir.path(),
        "ok.wav",
        &wav_bytes(Fmt::S16, 48_000, &[vec![0.1; 10]]),
    );
    let err = windows_from_file(&path, 1000, 2000).unwrap_err();
    assert_eq!(err.code(), "INVALID_ARGUMENT");
    assert!(AudioDecoder::open(&path).is_ok());
}

/// `bytes` with `len` bytes from `from` (fraction of the length) overwritten by a fixed pattern.
fn damage(mut bytes: Vec<u8>, from: f64, len: usize) -> Vec<u8> {
    let at = (bytes.len() as f64 * from) as usize;
    for (i, b) in bytes[at..at + len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(97).wrapping_add(13);
    }
    bytes
}

#[test]
fn damaged_flac_frame_becomes_silence_and_keeps_time() {
    let dir = tempfile::tempdir().unwrap();
    let clean_bytes = std::fs::read(fixture("tone_1k_stereo_44k.flac")).unwrap();
    let (clean, _) = decode_to_vec(fixture("tone_1k_stereo_44k.flac")).unwrap();
    let path = write_file(dir.path(), "hurt.flac", &damage(clean_bytes, 0.5, 300));

    let mut dec = AudioDecoder::open(&path).unwrap();
    let native: usize = dec.by_ref().map(|c| c.unwrap().len()).sum();
    assert_eq!(native, 44_100, "length kept");
    assert!(
        dec.filled_seconds() > 0.05,
        "some audio was replaced: {}",
        dec.filled_seconds()
    );

    let (out, _) = decode_to_vec(&path).unwrap();
    assert_eq!(out.len(), clean.len());
    // A silent stretch where the frames were lost...
    let quiet = out.windows(2400).map(rms).fold(f64::INFINITY, f64::min);
    assert!(quiet < 1e-4, "no silent stretch (min rms {quiet})");
    // ...and the audio after it sits exactly where it was: same samples as the clean decode.
    let tail = out.len() - 4800..out.len() - 480;
    let max_diff = tail
        .map(|k| (out[k] - clean[k]).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-5,
        "audio after the hole moved (max diff {max_diff})"
    );
}

#[test]
fn damaged_aac_packets_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_1k_stereo_44k.m4a")).unwrap();
    let (clean, _) = decode_to_vec(fixture("tone_1k_stereo_44k.m4a")).unwrap();
    let path = write_file(dir.path(), "hurt.m4a", &damage(bytes, 0.5, 300));
    let mut dec = AudioDecoder::open(&path).unwrap();
    dec.by_ref().for_each(|c| drop(c.unwrap()));
    assert!(dec.skipped_packets() >= 1);
    let (out, _) = decode_to_vec(&path).unwrap();
    assert_eq!(out.len(), clean.len());
    assert!((dominant_freq(&out, 48_000) - 1000.0).abs() <= 5.0);
}

#[test]
fn mostly_damaged_flac_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tone_1k_stereo_44k.flac")).unwrap();
    let path = write_file(dir.path(), "wrecked.flac", &damage(bytes, 0.3, 5000));
    assert_err(&path, ErrorKind::Corrupt, "CORRUPT", &["could be decoded"]);
}

#[test]
fn unsupported_codecs_in_known_containers() {
    // GSM 6.10 in WAV (old telephony recordings): a codec no feature of ours decodes.
    let dir = tempfile::tempdir().unwrap();
    let h = WavHeader {
        format_tag: 0x31,
        channels: 1,
        sample_rate: 8_000,
        bits: 8,
    };
    let path = write_file(dir.path(), "gsm.wav", &wav_bytes_raw(h, &[0u8; 650], false));
    assert_err(
        &path,
        ErrorKind::UnsupportedCodec,
        "UNSUPPORTED_CODEC",
        &["GSM 6.10", "container: wav"],
    );
}

#[test]
fn video_without_audio() {
    assert_err(
        &fixture("video_only.mp4"),
        ErrorKind::NoAudioTrack,
        "NO_AUDIO_TRACK",
        &["has no audio track"],
    );
}

/// The formats read since sample packs and collections asked for them: cut short or
/// overwritten anywhere, each fails that file alone with a coded error that names it, or
/// decodes what is left; it never panics or hangs.
#[test]
fn damaged_aiff_adpcm_alac_and_opus_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "tone_1k_stereo_44k.aiff",
        "tone_440_mono_22k.aifc",
        "tone_1k_stereo_44k_ms_adpcm.wav",
        "tone_440_mono_22k_ima_adpcm.wav",
        "tone_1k_stereo_44k_alac.m4a",
        "tone_1k_stereo_48k.opus",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let ext = name.rsplit('.').next().unwrap();
        let mut cases = Vec::new();
        for cut in [0.0, 0.01, 0.1, 0.5, 0.9] {
            let at = ((bytes.len() as f64 * cut) as usize).max(1);
            cases.push((format!("cut{cut}"), bytes[..at].to_vec()));
        }
        for from in [0.0, 0.02, 0.3, 0.7] {
            let len = 200.min(bytes.len() - (bytes.len() as f64 * from) as usize);
            cases.push((format!("hurt{from}"), damage(bytes.clone(), from, len)));
        }
        for (what, case) in cases {
            let path = write_file(dir.path(), &format!("{what}-{name}"), &case);
            match decode_to_vec(&path) {
                Ok((samples, _)) => assert!(
                    samples.iter().all(|s| s.is_finite()),
                    "{what} {name}: non-finite samples"
                ),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{what}-{name}")), "{msg}");
                    assert!(!e.code().is_empty(), "{msg}");
                    // A damaged file of a format we read is never called an unknown format,
                    // unless its very first bytes (the magic) are gone.
                    if what != "cut0" && what != "hurt0" {
                        assert_ne!(
                            e.kind(),
                            ErrorKind::UnsupportedFormat,
                            "{what}.{ext}: {msg}"
                        );
                    }
                }
            }
        }
    }
}
