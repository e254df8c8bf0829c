//! Content sniffing: what a file's first bytes say it is.
//!
//! Symphonia's probe scans up to 1 MiB for *any* format marker, so on its own it happily "finds"
//! an MP3 frame sync inside random bytes or a text file. We only hand a file to symphonia when its
//! start looks like a supported container, and otherwise say what it looked like instead.

/// Verdict on a file's leading bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// A container this crate reads; the name goes into `AudioInfo::container`.
    Audio(&'static str),
    /// The file starts with an ID3v2 tag of `len` bytes (header included); look after it.
    Id3 { len: u64 },
    /// Audio, but in a container we do not read.
    OtherAudio(&'static str),
    /// Not audio at all; a description for the error message.
    NotAudio(String),
    /// Zero bytes.
    Empty,
}

/// How many leading bytes [`sniff`] wants to see.
pub(crate) const SNIFF_LEN: usize = 64 * 1024;

/// Classifies a file from its first bytes (up to [`SNIFF_LEN`]).
pub(crate) fn sniff(head: &[u8]) -> Sniff {
    if head.is_empty() {
        return Sniff::Empty;
    }
    let at = |off: usize, magic: &[u8]| {
        head.len() >= off + magic.len() && &head[off..off + magic.len()] == magic
    };

    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Sniff::Audio("wav");
    }
    if at(0, b"fLaC") {
        return Sniff::Audio("flac");
    }
    if at(0, b"OggS") {
        return Sniff::Audio("ogg");
    }
    if head.len() >= 8
        && matches!(
            &head[4..8],
            b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide" | b"skip"
        )
    {
        // Brand tells plain MP4 (often video) from M4A audio; both go to the same reader.
        let brand = head.get(8..12).unwrap_or(b"");
        return Sniff::Audio(if matches!(brand, b"M4A " | b"M4B " | b"M4P ") {
            "m4a"
        } else {
            "mp4"
        });
    }
    if at(0, b"ID3") && head.len() >= 10 {
        // Syncsafe size: 7 bits per byte; bit 4 of the flags adds a 10-byte footer.
        let size = head[6..10]
            .iter()
            .fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7f));
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        return Sniff::Id3 {
            len: 10 + size + footer,
        };
    }

    if let Some(other) = other_audio(&at) {
        return Sniff::OtherAudio(other);
    }
    if let Some(not_audio) = not_audio(head, &at) {
        return Sniff::NotAudio(not_audio.to_string());
    }
    // Raw MPEG audio / ADTS AAC have no magic: require two consecutive valid frame headers so
    // random bytes (or a stray 0xFFF sync) are not mistaken for audio.
    if let Some(kind) = scan_frames(head) {
        return Sniff::Audio(kind);
    }
    if looks_like_text(head) {
        return Sniff::NotAudio("plain text".to_string());
    }
    Sniff::NotAudio("unrecognised binary data".to_string())
}

fn other_audio(at: &dyn Fn(usize, &[u8]) -> bool) -> Option<&'static str> {
    Some(if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        "AIFF audio, which is not supported"
    } else if at(0, b"RF64") || at(0, b"BW64") {
        "64-bit RF64/BW64 WAV, which is not supported"
    } else if at(0, b"caff") {
        "Apple CAF audio, which is not supported"
    } else if at(0, &[0x1a, 0x45, 0xdf, 0xa3]) {
        "Matroska/WebM, which is not supported"
    } else if at(0, b"wvpk") {
        "WavPack audio, which is not supported"
    } else if at(0, b"MAC ") {
        "Monkey's Audio (APE), which is not supported"
    } else if at(0, b".snd") {
        "Sun AU audio, which is not supported"
    } else if at(0, b"#!AMR") {
        "AMR speech audio, which is not supported"
    } else if at(0, b"MThd") {
        "a MIDI file (notes, not recorded audio)"
    } else if at(0, &[0x30, 0x26, 0xb2, 0x75]) {
        "Windows Media (ASF/WMA), which is not supported"
    } else if at(0, b"FRM8") || at(0, b"DSD ") {
        "DSD audio, which is not supported"
    } else {
        return None;
    })
}

fn not_audio(head: &[u8], at: &dyn Fn(usize, &[u8]) -> bool) -> Option<&'static str> {
    let lower: Vec<u8> = head.iter().take(64).map(u8::to_ascii_lowercase).collect();
    let text_start = {
        let skip = lower
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(lower.len());
        &lower[skip..]
    };
    Some(if at(0, b"%PDF") {
        "a PDF document"
    } else if at(0, &[0x89, b'P', b'N', b'G']) {
        "a PNG image"
    } else if at(0, &[0xff, 0xd8, 0xff]) {
        "a JPEG image"
    } else if at(0, b"GIF8") {
        "a GIF image"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "a WebP image"
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        "an AVI video"
    } else if at(0, b"PK\x03\x04") {
        "a ZIP archive"
    } else if at(0, &[0x1f, 0x8b]) {
        "gzip-compressed data"
    } else if at(0, b"7z\xbc\xaf") {
        "a 7-Zip archive"
    } else if at(0, b"\x7fELF") || at(0, b"MZ") {
        "an executable program"
    } else if text_start.starts_with(b"<!doctype html") || text_start.starts_with(b"<html") {
        "an HTML page"
    } else if text_start.starts_with(b"<?xml") {
        "an XML document"
    } else {
        return None;
    })
}

/// Printable UTF-8 (allowing whitespace) over the whole sample.
fn looks_like_text(head: &[u8]) -> bool {
    // A multi-byte character may be cut at the end of the sample.
    let s = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.valid_up_to() + 4 > head.len() && e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !s.is_empty() && s.chars().all(|c| !c.is_control() || c.is_whitespace())
}

/// Whether an MP3 stream (starting within `buf`) carries a Xing/Info or VBRI header in its first
/// frame, i.e. an exact frame count. Without one, symphonia estimates the length from the bitrate
/// and file size, which trailing tags or VBR can throw off by seconds.
pub(crate) fn mp3_has_length_header(buf: &[u8]) -> bool {
    let Some(pos) = first_frame_pair(buf) else {
        return false;
    };
    let Some((len, _)) = mpeg_frame(&buf[pos..]) else {
        return false;
    };
    let frame = &buf[pos..(pos + len).min(buf.len())];
    frame
        .windows(4)
        .any(|w| w == b"Xing" || w == b"Info" || w == b"VBRI")
}

fn first_frame_pair(buf: &[u8]) -> Option<usize> {
    (0..buf.len().saturating_sub(3)).find(|&i| {
        buf[i] == 0xff
            && mpeg_frame(&buf[i..]).is_some_and(|(len, key)| {
                buf.get(i + len..)
                    .and_then(mpeg_frame)
                    .is_some_and(|(_, key2)| key == key2)
            })
    })
}

/// Finds the first position with two back-to-back valid MPEG-audio or ADTS frame headers.
fn scan_frames(buf: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    while i + 4 <= buf.len() {
        if buf[i] == 0xff && buf[i + 1] & 0xe0 == 0xe0 {
            if let Some((len, key)) = mpeg_frame(&buf[i..]) {
                if let Some((_, key2)) = buf.get(i + len..).and_then(mpeg_frame) {
                    if key == key2 {
                        return Some("mp3");
                    }
                }
            }
            if let Some(len) = adts_frame(&buf[i..]) {
                if buf.get(i + len..).and_then(adts_frame).is_some() {
                    return Some("aac");
                }
            }
        }
        i += 1;
    }
    None
}

/// Parses an MPEG-1/2/2.5 layer I/II/III header; returns (frame length, stream identity).
fn mpeg_frame(h: &[u8]) -> Option<(usize, u8)> {
    if h.len() < 4 || h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 0: 2.5, 1: reserved, 2: MPEG-2, 3: MPEG-1
    let layer = (h[1] >> 1) & 3; // 1: III, 2: II, 3: I
    let bitrate_idx = usize::from(h[2] >> 4);
    let rate_idx = usize::from((h[2] >> 2) & 3);
    let padding = usize::from((h[2] >> 1) & 1);
    if version == 1 || layer == 0 || bitrate_idx == 0 || bitrate_idx == 15 || rate_idx == 3 {
        return None;
    }
    const RATES: [[u32; 3]; 4] = [
        [11025, 12000, 8000],
        [0, 0, 0],
        [22050, 24000, 16000],
        [44100, 48000, 32000],
    ];
    const BR_V1: [[u32; 15]; 3] = [
        [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ], // layer I
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ], // layer II
        [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ], // layer III
    ];
    const BR_V2: [[u32; 15]; 2] = [
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ], // layer I
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160], // layers II, III
    ];
    let rate = RATES[usize::from(version)][rate_idx];
    let kbps = match (version, layer) {
        (3, 3) => BR_V1[0][bitrate_idx],
        (3, 2) => BR_V1[1][bitrate_idx],
        (3, _) => BR_V1[2][bitrate_idx],
        (_, 3) => BR_V2[0][bitrate_idx],
        _ => BR_V2[1][bitrate_idx],
    };
    let br = kbps as usize * 1000;
    let rate = rate as usize;
    let len = match (version, layer) {
        (_, 3) => (12 * br / rate + padding) * 4,
        (3, _) | (_, 2) => 144 * br / rate + padding,
        _ => 72 * br / rate + padding, // MPEG-2/2.5 layer III: half the samples per frame
    };
    // Version, layer and sample rate must stay the same from frame to frame.
    (len >= 24).then_some((len, (h[1] & 0x1e) | ((h[2] >> 2) & 3) << 5))
}

/// Parses an ADTS (raw AAC) header; returns the frame length.
fn adts_frame(h: &[u8]) -> Option<usize> {
    if h.len() < 7 || h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
        return None;
    }
    let rate_idx = (h[2] >> 2) & 0x0f;
    let len = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    (rate_idx < 13 && len >= 7).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(sniff(b""), Sniff::Empty);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), Sniff::Audio("wav"));
        assert_eq!(sniff(b"fLaC\0\0\0\x22"), Sniff::Audio("flac"));
        assert_eq!(sniff(b"OggS\0\x02"), Sniff::Audio("ogg"));
        assert_eq!(sniff(b"\0\0\0\x20ftypM4A \0\0\0\0"), Sniff::Audio("m4a"));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom\0\0\0\0"), Sniff::Audio("mp4"));
        assert_eq!(
            sniff(b"ID3\x04\0\0\0\0\x02\x01rest"),
            Sniff::Id3 { len: 10 + 257 }
        );
        assert_eq!(
            sniff(b"hello, world\n"),
            Sniff::NotAudio("plain text".into())
        );
        assert_eq!(
            sniff(b"%PDF-1.7\n"),
            Sniff::NotAudio("a PDF document".into())
        );
        assert!(matches!(sniff(b"FORM\0\0\0\0AIFF"), Sniff::OtherAudio(_)));
    }

    #[test]
    fn mpeg_needs_two_frames() {
        // MPEG-1 layer III, 128 kbps, 44.1 kHz, no padding: 417-byte frames.
        let hdr = [0xff, 0xfb, 0x90, 0x00];
        let mut two = vec![0u8; 417 * 2];
        two[..4].copy_from_slice(&hdr);
        two[417..421].copy_from_slice(&hdr);
        assert_eq!(sniff(&two), Sniff::Audio("mp3"));
        let mut one = vec![0u8; 417 * 2];
        one[..4].copy_from_slice(&hdr);
        assert_eq!(
            sniff(&one),
            Sniff::NotAudio("unrecognised binary data".into())
        );
    }
}
