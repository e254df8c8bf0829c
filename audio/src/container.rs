//! What symphonia is shown of a file: the file itself, with the parts we never use and that
//! symphonia 0.5 is stricter about than players are neutralised in place.
//!
//! Symphonia fails a whole file on one metadata block it dislikes (a FLAC CUESHEET that
//! libFLAC plays, a picture, an application block) or on one extra track it cannot parse (an
//! M4B's chapter text track). We only need the audio: FLAC metadata blocks other than
//! STREAMINFO are shown as PADDING (which symphonia skips unread), and MP4 tracks that are not
//! sound, and the `udta`/`meta` boxes, are shown as `free` boxes. Lengths and offsets stay as
//! they are, so every position in the file keeps its meaning.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use symphonia::core::io::MediaSource;

/// Bytes to show instead of the file's at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A file read through its patches.
pub(crate) struct PatchedSource {
    file: File,
    pos: u64,
    len: Option<u64>,
    patches: Vec<Patch>,
}

impl PatchedSource {
    pub fn new(file: File, patches: Vec<Patch>) -> Self {
        let len = file.metadata().ok().map(|m| m.len());
        Self {
            file,
            pos: 0,
            len,
            patches,
        }
    }
}

impl Read for PatchedSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        for p in &self.patches {
            let (p_start, p_end) = (p.offset, p.offset + p.bytes.len() as u64);
            let (from, to) = (start.max(p_start), end.min(p_end));
            if from < to {
                let dst = (from - start) as usize..(to - start) as usize;
                let src = (from - p_start) as usize..(to - p_start) as usize;
                buf[dst].copy_from_slice(&p.bytes[src]);
            }
        }
        self.pos = end;
        Ok(n)
    }
}

impl Seek for PatchedSource {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

impl MediaSource for PatchedSource {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        self.len
    }
}

/// Most boxes or blocks looked at: a file with more is garbage, and is left to symphonia.
const MAX_ITEMS: usize = 4096;

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> bool {
    file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(buf).is_ok()
}

/// The patches for this container ("flac", "m4a", "mp4"; none for the others). Best effort:
/// whatever cannot be read is left as it is, for symphonia to judge.
pub(crate) fn patches_for(container: &str, file: &mut File) -> Vec<Patch> {
    let patches = match container {
        "flac" => flac_patches(file),
        "m4a" | "mp4" => mp4_patches(file),
        _ => Vec::new(),
    };
    let _ = file.seek(SeekFrom::Start(0));
    patches
}

/// FLAC: every metadata block but STREAMINFO (0) becomes PADDING (1), its last-block flag
/// kept. The stream may sit behind an ID3v2 tag.
fn flac_patches(file: &mut File) -> Vec<Patch> {
    let mut head = [0u8; 10];
    let mut start = 0u64;
    if read_at(file, 0, &mut head) && &head[..3] == b"ID3" {
        let size = head[6..10]
            .iter()
            .fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7f));
        start = 10 + size + if head[5] & 0x10 != 0 { 10 } else { 0 };
    }
    let mut magic = [0u8; 4];
    if !read_at(file, start, &mut magic) || &magic != b"fLaC" {
        return Vec::new();
    }
    let mut patches = Vec::new();
    let mut pos = start + 4;
    for _ in 0..MAX_ITEMS {
        let mut h = [0u8; 4];
        if !read_at(file, pos, &mut h) {
            break;
        }
        let last = h[0] & 0x80;
        let kind = h[0] & 0x7f;
        let len = u64::from(u32::from_be_bytes([0, h[1], h[2], h[3]]));
        if kind != 0 && kind != 1 {
            patches.push(Patch {
                offset: pos,
                bytes: vec![last | 1],
            });
        }
        if last != 0 {
            break;
        }
        pos += 4 + len;
    }
    patches
}

/// One ISO-BMFF box: where it starts, where its payload starts, where it ends, its type.
#[derive(Debug, Clone, Copy)]
struct Mp4Box {
    start: u64,
    body: u64,
    end: u64,
    kind: [u8; 4],
}

/// The header of the box at `pos` in a parent ending at `end`: its type, its declared size
/// (a size of 0 runs to `end`) and the header's own length; `None` if it cannot be read.
fn box_header(file: &mut File, pos: u64, end: u64) -> Option<([u8; 4], u64, u64)> {
    let mut h = [0u8; 8];
    if end.saturating_sub(pos) < 8 || !read_at(file, pos, &mut h) {
        return None;
    }
    let kind = [h[4], h[5], h[6], h[7]];
    match u32::from_be_bytes([h[0], h[1], h[2], h[3]]) {
        0 => Some((kind, end - pos, 8)),
        1 => {
            let mut large = [0u8; 8];
            read_at(file, pos + 8, &mut large).then_some((kind, u64::from_be_bytes(large), 16))
        }
        n => Some((kind, u64::from(n), 8)),
    }
}

/// The boxes in `[from, to)`, up to the first that cannot be read or does not fit.
fn mp4_boxes(file: &mut File, from: u64, to: u64) -> Vec<Mp4Box> {
    let mut out = Vec::new();
    let mut pos = from;
    while out.len() < MAX_ITEMS {
        let Some((kind, size, header)) = box_header(file, pos, to) else {
            break;
        };
        if size < header || size > to - pos {
            break;
        }
        out.push(Mp4Box {
            start: pos,
            body: pos + header,
            end: pos + size,
            kind,
        });
        pos += size;
    }
    out
}

fn child(file: &mut File, parent: &Mp4Box, kind: &[u8; 4]) -> Option<Mp4Box> {
    mp4_boxes(file, parent.body, parent.end)
        .into_iter()
        .find(|b| &b.kind == kind)
}

/// A track's handler ("soun", "text", "vide", …).
fn handler(file: &mut File, trak: &Mp4Box) -> Option<[u8; 4]> {
    let mdia = child(file, trak, b"mdia")?;
    let hdlr = child(file, &mdia, b"hdlr")?;
    // version+flags (4), pre_defined (4), handler_type (4).
    let mut h = [0u8; 4];
    read_at(file, hdlr.body + 8, &mut h).then_some(h)
}

/// MP4: tracks that are not sound, and `udta`/`meta` (tags, chapters), become `free` boxes,
/// provided at least one sound track stays (a file without one must still say so).
fn mp4_patches(file: &mut File) -> Vec<Patch> {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let Some(moov) = mp4_boxes(file, 0, len)
        .into_iter()
        .find(|b| &b.kind == b"moov")
    else {
        return Vec::new();
    };
    let mut patches = Vec::new();
    let mut sound = 0;
    for b in mp4_boxes(file, moov.body, moov.end) {
        let hide = match &b.kind {
            b"trak" => match handler(file, &b) {
                Some(h) if &h == b"soun" => {
                    sound += 1;
                    false
                }
                _ => true,
            },
            b"udta" | b"meta" => true,
            _ => false,
        };
        if hide {
            // The type sits after the 32-bit size, whatever the size's form.
            patches.push(Patch {
                offset: b.start + 4,
                bytes: b"free".to_vec(),
            });
        }
    }
    if sound == 0 {
        return Vec::new();
    }
    patches
}

/// Checks an MP4's `moov` tree before symphonia reads it: symphonia 0.5 allocates what
/// boxes and tables declare (a sample table's entry count, a sample's size, a handler name's
/// length) before reading it, so one crafted file could make it ask for gigabytes and abort
/// the process (found by fuzzing). Every box inside `moov` must fit in its parent, every
/// table's declared entries must fit in its box, and no sample may be larger than the file.
pub(crate) fn check_mp4(file: &mut File) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let whole = Mp4Box {
        start: 0,
        body: 0,
        end: len,
        kind: *b"file",
    };
    let result = check_mp4_children(file, &whole, len, 0);
    let _ = file.seek(SeekFrom::Start(0));
    result
}

fn fourcc(kind: &[u8; 4]) -> String {
    kind.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

fn check_mp4_children(
    file: &mut File,
    parent: &Mp4Box,
    len: u64,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 {
        return Err("MP4 boxes nested deeper than any real file".into());
    }
    // Walk the children strictly: any box that does not fit is an error, not the end.
    let mut pos = parent.body;
    let mut count = 0;
    while pos < parent.end {
        count += 1;
        if count > MAX_ITEMS {
            return Err("more MP4 boxes than any real file has".into());
        }
        let Some((kind, size, header)) = box_header(file, pos, parent.end) else {
            return Err(format!("an MP4 box header at byte {pos} is cut short"));
        };
        if depth == 0 && &kind == b"mdat" && size > parent.end - pos {
            // Media data cut short (a truncated file): symphonia reads samples lazily, and
            // the decoder reports the truncation with its position.
            break;
        }
        if size < header || size > parent.end - pos {
            return Err(format!(
                "the MP4 box '{}' at byte {pos} claims {size} bytes, more than the {} it sits in",
                fourcc(&kind),
                parent.end - pos
            ));
        }
        let b = Mp4Box {
            start: pos,
            body: pos + header,
            end: pos + size,
            kind,
        };
        match &kind {
            b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"mvex"
            | b"udta" => check_mp4_children(file, &b, len, depth + 1)?,
            b"stts" | b"stsc" | b"stco" | b"co64" | b"ctts" | b"stss" | b"stsz" | b"elst" => {
                check_mp4_table(file, &b, len)?
            }
            // Version/flags, pre-defined, handler type, reserved: 24 bytes before the name
            // (symphonia subtracts them from the length unchecked).
            b"hdlr" if b.end - b.body < 24 => {
                return Err(format!("the MP4 handler box at byte {pos} is cut short"));
            }
            _ => {}
        }
        pos = b.end;
    }
    Ok(())
}

/// A sample table's declared entries against its box; `stsz` sizes against the file.
fn check_mp4_table(file: &mut File, b: &Mp4Box, len: u64) -> Result<(), String> {
    let payload = b.end - b.body;
    let mut head = [0u8; 12];
    let got = payload.min(12) as usize;
    if got < 8 || !read_at(file, b.body, &mut head[..got]) {
        return Err(format!("the MP4 table '{}' is cut short", fourcc(&b.kind)));
    }
    let u32_at = |o: usize| {
        u64::from(u32::from_be_bytes([
            head[o],
            head[o + 1],
            head[o + 2],
            head[o + 3],
        ]))
    };
    let version = head[0];
    let (count, entry, first) = match &b.kind {
        b"stsz" => {
            if got < 12 {
                return Err("the MP4 table 'stsz' is cut short".into());
            }
            let sample_size = u32_at(4);
            if sample_size > len {
                return Err(format!(
                    "the MP4 sample size {sample_size} is larger than the file ({len} bytes)"
                ));
            }
            let count = u32_at(8);
            (count, if sample_size == 0 { 4 } else { 0 }, 12)
        }
        b"stts" | b"ctts" => (u32_at(4), 8, 8),
        b"stsc" => (u32_at(4), 12, 8),
        b"stco" | b"stss" => (u32_at(4), 4, 8),
        b"co64" => (u32_at(4), 8, 8),
        b"elst" => (u32_at(4), if version == 1 { 20 } else { 12 }, 8),
        _ => return Ok(()),
    };
    if count.saturating_mul(entry) > payload.saturating_sub(first) {
        return Err(format!(
            "the MP4 table '{}' declares {count} entries, more than its {payload} bytes hold",
            fourcc(&b.kind)
        ));
    }
    if &b.kind == b"stsz" && entry == 4 {
        // Each sample must fit in the file: symphonia allocates a packet of that size.
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = count * 4;
        let mut pos = b.body + 12;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if !read_at(file, pos, &mut buf[..n]) {
                return Err("the MP4 table 'stsz' is cut short".into());
            }
            if let Some(big) = buf[..n]
                .chunks_exact(4)
                .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .find(|&s| s > len)
            {
                return Err(format!(
                    "an MP4 sample claims {big} bytes, more than the whole file ({len} bytes)"
                ));
            }
            left -= n as u64;
            pos += n as u64;
        }
    }
    Ok(())
}

/// The codecs of the logical streams an Ogg file starts (its beginning-of-stream pages within
/// `head`): "vorbis", "opus", "flac", "speex", "theora", "skeleton", … or "unknown".
pub(crate) fn ogg_stream_codecs(head: &[u8]) -> Vec<&'static str> {
    let mut codecs = Vec::new();
    let mut pos = 0usize;
    while pos + 27 <= head.len() && &head[pos..pos + 4] == b"OggS" && codecs.len() < 64 {
        let header_type = head[pos + 5];
        let n_segments = usize::from(head[pos + 26]);
        let table = pos + 27;
        let Some(segments) = head.get(table..table + n_segments) else {
            break;
        };
        let body_len: usize = segments.iter().map(|&s| usize::from(s)).sum();
        let body = table + n_segments;
        if header_type & 0x02 != 0 {
            let payload = head
                .get(body..(body + body_len).min(head.len()))
                .unwrap_or(&[]);
            let starts = |magic: &[u8]| payload.starts_with(magic);
            codecs.push(if starts(b"\x01vorbis") {
                "vorbis"
            } else if starts(b"OpusHead") {
                "opus"
            } else if starts(b"\x7fFLAC") || starts(b"fLaC") {
                "flac"
            } else if starts(b"Speex   ") {
                "speex"
            } else if starts(b"\x80theora") {
                "theora"
            } else if starts(b"fishead\0") {
                "skeleton"
            } else if starts(b"\x80kate") {
                "kate"
            } else if starts(b"PCM     ") {
                "pcm"
            } else {
                "unknown"
            });
        } else {
            // Past the beginning-of-stream pages: every stream has been announced.
            break;
        }
        pos = body + body_len;
    }
    codecs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn patched_reads_show_the_patches_in_any_chunking() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&(0u8..100).collect::<Vec<_>>()).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut src = PatchedSource::new(
            f,
            vec![Patch {
                offset: 10,
                bytes: vec![0xaa; 5],
            }],
        );
        let mut all = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all.len(), 100);
        assert_eq!(&all[9..16], &[9, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 15]);
        src.seek(SeekFrom::Start(12)).unwrap();
        let mut two = [0u8; 2];
        src.read_exact(&mut two).unwrap();
        assert_eq!(two, [0xaa, 0xaa]);
    }

    #[test]
    fn ogg_streams_are_named_from_their_first_pages() {
        let page = |bos: bool, payload: &[u8]| {
            let mut p = b"OggS\0".to_vec();
            p.push(if bos { 2 } else { 0 });
            p.extend_from_slice(&[0u8; 20]);
            p.push(1);
            p.push(payload.len() as u8);
            p.extend_from_slice(payload);
            p
        };
        let mut file = page(true, b"Speex   1.2");
        file.extend(page(true, b"fishead\0"));
        file.extend(page(false, b"\x01vorbis"));
        assert_eq!(ogg_stream_codecs(&file), ["speex", "skeleton"]);
        assert!(ogg_stream_codecs(b"OggS").is_empty());
    }
}
