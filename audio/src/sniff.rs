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

/// How many leading bytes [`sniff`] (and [`sniff_container`]) want to see.
pub const SNIFF_LEN: usize = 64 * 1024;

/// A container this crate reads: the one list of formats, shared by uploads (which refuse
/// anything else before storing it) and the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    /// RIFF/WAVE: PCM, IEEE float, A-law, µ-law, Microsoft and IMA ADPCM.
    Wav,
    /// AIFF, and AIFF-C with uncompressed (big- or little-endian), float, A-law or µ-law samples.
    Aiff,
    /// Native FLAC (possibly behind an ID3v2 tag).
    Flac,
    /// MPEG audio layer III (or I/II), raw or behind an ID3v2 tag.
    Mp3,
    /// Ogg with Vorbis, Opus or FLAC inside (other codecs are refused by the decoder with a
    /// codec error).
    Ogg,
    /// ISO base media (MP4, M4A, M4B) with AAC or ALAC (Apple Lossless) inside.
    Mp4,
    /// Raw AAC in ADTS frames.
    Aac,
}

impl Container {
    /// Every container, in the order messages list them.
    pub const ALL: [Container; 7] = [
        Container::Wav,
        Container::Aiff,
        Container::Flac,
        Container::Mp3,
        Container::Ogg,
        Container::Mp4,
        Container::Aac,
    ];

    /// Stable lowercase name ("wav", "aiff", "flac", "mp3", "ogg", "mp4", "aac").
    pub fn name(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Aiff => "aiff",
            Container::Flac => "flac",
            Container::Mp3 => "mp3",
            Container::Ogg => "ogg",
            Container::Mp4 => "mp4",
            Container::Aac => "aac",
        }
    }

    /// The usual file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mp4 => "m4a",
            other => other.name(),
        }
    }

    /// Every file name extension files of this container commonly carry.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Container::Wav => &["wav", "wave"],
            Container::Aiff => &["aiff", "aif", "aifc"],
            Container::Flac => &["flac"],
            Container::Mp3 => &["mp3"],
            Container::Ogg => &["ogg", "oga", "opus"],
            Container::Mp4 => &["m4a", "m4b", "mp4"],
            Container::Aac => &["aac", "adts"],
        }
    }

    /// Content type for playback.
    pub fn mime(self) -> &'static str {
        match self {
            Container::Wav => "audio/wav",
            Container::Aiff => "audio/aiff",
            Container::Flac => "audio/flac",
            Container::Mp3 => "audio/mpeg",
            Container::Ogg => "audio/ogg",
            Container::Mp4 => "audio/mp4",
            Container::Aac => "audio/aac",
        }
    }

    /// From [`Container::name`], or the decoder's [`AudioInfo::container`](crate::AudioInfo)
    /// ("m4a" is MP4 too).
    pub fn from_name(name: &str) -> Option<Container> {
        if name == "m4a" {
            return Some(Container::Mp4);
        }
        Container::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether `ext` (without the dot, any case) is one of [`Container::extensions`] of any
    /// container.
    pub fn is_audio_extension(ext: &str) -> bool {
        let ext = ext.to_ascii_lowercase();
        Container::ALL
            .iter()
            .any(|c| c.extensions().contains(&ext.as_str()))
    }
}

/// What a file's first bytes say, for callers outside this crate (uploads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A container the decoder reads.
    Audio(Container),
    /// Zero bytes.
    Empty,
    /// Not something we read; what it looked like (e.g. "a PDF document").
    Unsupported(String),
}

/// Classifies a file from its first bytes: give it up to [`SNIFF_LEN`] bytes, or the whole file
/// if shorter. The same rules the decoder applies before it opens a file, so an upload accepted
/// here is one the decoder tries (and one refused here, it would refuse).
///
/// Behind an ID3v2 tag, FLAC is recognised when the tag ends within `head`; anything else is
/// taken for MP3 and left to the decoder to confirm (which reads past long tags itself).
pub fn sniff_container(head: &[u8]) -> Sniffed {
    let verdict = match sniff(head) {
        Sniff::Id3 { len } => {
            let behind = usize::try_from(len)
                .ok()
                .and_then(|len| head.get(len..))
                .unwrap_or(&[]);
            match sniff(behind) {
                Sniff::Audio("flac") => Sniff::Audio("flac"),
                _ => Sniff::Audio("mp3"),
            }
        }
        other => other,
    };
    match verdict {
        Sniff::Audio(name) => match Container::from_name(name) {
            Some(c) => Sniffed::Audio(c),
            None => Sniffed::Unsupported(format!("{name} audio")),
        },
        Sniff::Empty => Sniffed::Empty,
        Sniff::OtherAudio(what) => Sniffed::Unsupported(what.to_string()),
        Sniff::NotAudio(what) => Sniffed::Unsupported(what),
        Sniff::Id3 { .. } => Sniffed::Audio(Container::Mp3),
    }
}

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
    if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        return Sniff::Audio("aiff");
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
    Some(if at(0, b"RF64") || at(0, b"BW64") {
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
        assert_eq!(sniff(b"FORM\0\0\0\0AIFFCOMM"), Sniff::Audio("aiff"));
        assert_eq!(sniff(b"FORM\0\0\0\0AIFCFVER"), Sniff::Audio("aiff"));
        // An IFF file that is not sound (an ILBM picture) is not taken for AIFF.
        assert!(matches!(sniff(b"FORM\0\0\0\0ILBMBMHD"), Sniff::NotAudio(_)));
    }

    #[test]
    fn public_sniffer_agrees_with_the_decoder() {
        use super::{sniff_container as sc, Container as C, Sniffed as S};
        assert_eq!(sc(b"RIFF\0\0\0\0WAVEfmt "), S::Audio(C::Wav));
        assert_eq!(sc(b"\0\0\0\x20ftypM4B \0\0\0\0"), S::Audio(C::Mp4));
        assert_eq!(sc(b""), S::Empty);
        // RF64 is refused: the decoder does not read it.
        assert!(
            matches!(sc(b"RF64\xff\xff\xff\xffWAVEds64"), S::Unsupported(w) if w.contains("RF64"))
        );
        // ADTS AAC is read by the decoder, so it is accepted.
        let mut adts = Vec::new();
        for _ in 0..3 {
            let len: usize = 200;
            let mut frame = vec![0u8; len];
            frame[..7].copy_from_slice(&[
                0xff,
                0xf1,
                0x50,
                0x80 | ((len >> 11) as u8 & 3),
                (len >> 3) as u8,
                ((len & 7) as u8) << 5 | 0x1f,
                0xfc,
            ]);
            adts.extend(frame);
        }
        assert_eq!(sc(&adts), S::Audio(C::Aac));
        // FLAC behind an ID3 tag, MP3 otherwise.
        let mut id3_flac = b"ID3\x04\0\0\0\0\0\x02\0\0".to_vec();
        id3_flac.extend_from_slice(b"fLaC\0\0\0\x22");
        assert_eq!(sc(&id3_flac), S::Audio(C::Flac));
        assert_eq!(sc(b"ID3\x04\0\0\0\0\0\x02\0\0junk"), S::Audio(C::Mp3));
        // A huge declared tag does not overflow.
        assert_eq!(sc(b"ID3\x04\0\0\x7f\x7f\x7f\x7f"), S::Audio(C::Mp3));
        for c in C::ALL {
            assert_eq!(C::from_name(c.name()), Some(c));
            assert!(C::is_audio_extension(c.extension()));
        }
        assert!(C::is_audio_extension("M4B"));
        assert!(!C::is_audio_extension("txt"));
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
