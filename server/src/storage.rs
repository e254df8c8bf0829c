//! Where a library keeps its bytes, and how bytes get there.
//!
//! Uploads and imports stream through a [`StagingWriter`]: it writes to a
//! temporary file under `incoming/` (on the same file system as the store, so
//! keeping the file is a rename), hashes on the way (SHA-256, the dedup key),
//! enforces the size limit while writing, and tells the container from the
//! first bytes, so that a wrong type is refused before its body is stored.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The layout of a data directory.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub root: PathBuf,
}

impl DataPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the directories a library needs.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [self.files(), self.incoming(), self.index()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// The SQLite database used when no `DATABASE_URL` is given.
    pub fn sqlite(&self) -> PathBuf {
        self.root.join("traum.db")
    }

    /// The vector store.
    pub fn index(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Original files, content-addressed.
    pub fn files(&self) -> PathBuf {
        self.root.join("files")
    }

    /// Uploads being received.
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Where a file with this hash and container is kept, relative to the root.
    pub fn relative_file_path(hash: &str, container: Container) -> PathBuf {
        Path::new("files")
            .join(&hash[..2])
            .join(format!("{hash}.{}", container.extension()))
    }

    /// A stored path from the database, made absolute.
    pub fn resolve(&self, stored_path: &str) -> PathBuf {
        let p = Path::new(stored_path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// Removes leftovers of uploads interrupted by a crash.
    pub fn clean_incoming(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.incoming())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Audio containers the library accepts, told from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    Wav,
    Flac,
    Mp3,
    Ogg,
    Mp4,
}

/// Bytes needed to recognise every supported container.
const SNIFF_LEN: usize = 12;

impl Container {
    /// The container these first bytes start, if it is one we decode.
    pub fn sniff(head: &[u8]) -> Option<Container> {
        let at = |i: usize, magic: &[u8]| head.get(i..i + magic.len()) == Some(magic);
        if at(0, b"RIFF") && (at(8, b"WAVE") || head.len() < 12) {
            return Some(Container::Wav);
        }
        if at(0, b"RF64") {
            return Some(Container::Wav);
        }
        if at(0, b"fLaC") {
            return Some(Container::Flac);
        }
        if at(0, b"OggS") {
            return Some(Container::Ogg);
        }
        if at(4, b"ftyp") {
            return Some(Container::Mp4);
        }
        if at(0, b"ID3") {
            return Some(Container::Mp3);
        }
        // An MPEG audio frame header: 11 sync bits, a version that is not
        // "reserved", a layer that is not 00 (00 is ADTS AAC, which we do not
        // read outside MP4).
        if head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0 {
            let version = (head[1] >> 3) & 0b11;
            let layer = (head[1] >> 1) & 0b11;
            if version != 0b01 && layer != 0b00 {
                return Some(Container::Mp3);
            }
        }
        None
    }

    /// Also the file name extension used in the store.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Flac => "flac",
            Container::Mp3 => "mp3",
            Container::Ogg => "ogg",
            Container::Mp4 => "m4a",
        }
    }

    /// What the database's `container` column says.
    pub fn name(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Flac => "flac",
            Container::Mp3 => "mp3",
            Container::Ogg => "ogg",
            Container::Mp4 => "mp4",
        }
    }

    /// Content type for playback.
    pub fn mime(self) -> &'static str {
        match self {
            Container::Wav => "audio/wav",
            Container::Flac => "audio/flac",
            Container::Mp3 => "audio/mpeg",
            Container::Ogg => "audio/ogg",
            Container::Mp4 => "audio/mp4",
        }
    }

    /// From the database's `container` column.
    pub fn from_name(name: &str) -> Option<Container> {
        [
            Container::Wav,
            Container::Flac,
            Container::Mp3,
            Container::Ogg,
            Container::Mp4,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// File name extensions `traum ingest` picks up.
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "mp3", "ogg", "oga", "m4a", "mp4", "aac",
];

/// A received file, complete and hashed, waiting under `incoming/` to be
/// kept (renamed into the store) or dropped. Dropping it removes the file.
#[derive(Debug)]
pub struct StagedFile {
    pub tmp_path: PathBuf,
    pub original_name: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    pub size: u64,
    pub container: Container,
    kept: bool,
}

impl StagedFile {
    /// Moves the bytes to `dest` (creating its directory); the staged file is
    /// then no longer removed on drop.
    pub fn keep_at(&mut self, dest: &Path) -> std::io::Result<()> {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&self.tmp_path, dest)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// Why a file was refused while it was being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLarge { limit: u64 },
    Empty,
    UnsupportedFormat,
}

/// Receives one file: bytes in, [`StagedFile`] (or a [`Rejection`]) out.
///
/// Once rejected, further bytes are counted and dropped, so a caller reading
/// a multipart body can skip to the next part without storing anything.
pub struct StagingWriter {
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
    container: Option<Container>,
    original_name: String,
    rejected: Option<Rejection>,
}

impl StagingWriter {
    /// Starts a file under `incoming` with at most `limit` bytes.
    pub fn create(incoming: &Path, original_name: &str, limit: u64) -> Result<Self, ApiError> {
        let tmp_path = incoming.join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = File::create(&tmp_path).map_err(|e| {
            ApiError::Internal(format!("cannot write to {}: {e}", tmp_path.display()))
        })?;
        Ok(Self {
            tmp_path,
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            size: 0,
            limit,
            head: Vec::with_capacity(SNIFF_LEN),
            container: None,
            original_name: sanitize_name(original_name),
            rejected: None,
        })
    }

    /// The rejection, once there is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejected.as_ref()
    }

    fn reject(&mut self, why: Rejection) {
        self.rejected = Some(why);
        self.out = None;
        let _ = std::fs::remove_file(&self.tmp_path);
    }

    /// Takes the next bytes.
    pub fn write(&mut self, mut chunk: &[u8]) -> Result<(), ApiError> {
        self.size += chunk.len() as u64;
        if self.rejected.is_some() {
            return Ok(());
        }
        if self.size > self.limit {
            self.reject(Rejection::TooLarge { limit: self.limit });
            return Ok(());
        }
        if self.container.is_none() {
            let need = SNIFF_LEN - self.head.len();
            let take = need.min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            self.absorb_head_if_full()?;
            if self.rejected.is_some() {
                return Ok(());
            }
            chunk = &chunk[take..];
            if self.container.is_none() {
                return Ok(());
            }
        }
        self.hasher.update(chunk);
        self.write_out(chunk)
    }

    fn absorb_head_if_full(&mut self) -> Result<(), ApiError> {
        if self.head.len() < SNIFF_LEN {
            return Ok(());
        }
        self.absorb_head()
    }

    /// Decides the container from the buffered head and writes it out.
    fn absorb_head(&mut self) -> Result<(), ApiError> {
        match Container::sniff(&self.head) {
            Some(c) => {
                self.container = Some(c);
                let head = std::mem::take(&mut self.head);
                self.hasher.update(&head);
                self.write_out(&head)
            }
            None => {
                self.reject(Rejection::UnsupportedFormat);
                Ok(())
            }
        }
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if let Some(out) = self.out.as_mut() {
            out.write_all(bytes).map_err(|e| {
                ApiError::Internal(format!("cannot write {}: {e}", self.tmp_path.display()))
            })?;
        }
        Ok(())
    }

    /// The whole file has arrived.
    pub fn finish(mut self) -> Result<Result<StagedFile, Rejection>, ApiError> {
        if self.rejected.is_none() {
            if self.size == 0 {
                self.reject(Rejection::Empty);
            } else if self.container.is_none() {
                // Shorter than the sniff length: decide on what there is.
                self.absorb_head()?;
            }
        }
        if let Some(r) = self.rejected.take() {
            return Ok(Err(r));
        }
        let out = self.out.take().expect("an accepted file has its writer");
        let file = out.into_inner().map_err(|e| {
            ApiError::Internal(format!("cannot write {}: {e}", self.tmp_path.display()))
        })?;
        drop(file);
        let staged = StagedFile {
            tmp_path: std::mem::take(&mut self.tmp_path),
            original_name: std::mem::take(&mut self.original_name),
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            size: self.size,
            container: self.container.expect("checked above"),
            kept: false,
        };
        Ok(Ok(staged))
    }
}

impl Drop for StagingWriter {
    fn drop(&mut self) {
        // Not finished (the request died) or rejected: leave nothing behind.
        if self.out.is_some() || self.rejected.is_some() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// Streams a file from disk through a [`StagingWriter`] (for `traum ingest`
/// and for uploads that did not come through the streaming handler).
pub fn stage_from_reader(
    incoming: &Path,
    original_name: &str,
    limit: u64,
    mut reader: impl std::io::Read,
) -> Result<Result<StagedFile, Rejection>, ApiError> {
    let mut writer = StagingWriter::create(incoming, original_name, limit)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ApiError::Internal(format!("cannot read {original_name}: {e}")))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
        if writer.rejection().is_some() {
            break;
        }
    }
    writer.finish()
}

/// SHA-256 of a file on disk, lowercase hex.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// SHA-256 of a string, lowercase hex.
pub fn hash_str(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The last path component, without control characters, at most 255 bytes.
pub fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let mut clean: String = base.chars().filter(|c| !c.is_control()).collect();
    if clean.len() > 255 {
        let mut cut = 255;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    if clean.trim().is_empty() {
        "unnamed".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_supported_containers() {
        assert_eq!(
            Container::sniff(b"RIFF\0\0\0\0WAVEfmt "),
            Some(Container::Wav)
        );
        assert_eq!(Container::sniff(b"fLaC\0\0\0\x22"), Some(Container::Flac));
        assert_eq!(Container::sniff(b"OggS\0\x02"), Some(Container::Ogg));
        assert_eq!(
            Container::sniff(b"\0\0\0\x20ftypM4A "),
            Some(Container::Mp4)
        );
        assert_eq!(Container::sniff(b"ID3\x04\0"), Some(Container::Mp3));
        assert_eq!(
            Container::sniff(&[0xFF, 0xFB, 0x90, 0x64]),
            Some(Container::Mp3)
        );
        // ADTS AAC (layer 00) and text are refused.
        assert_eq!(Container::sniff(&[0xFF, 0xF1, 0x50, 0x80]), None);
        assert_eq!(Container::sniff(b"hello world!"), None);
        assert_eq!(Container::sniff(b"%PDF-1.7\n"), None);
        assert_eq!(Container::sniff(b"RIFF\0\0\0\0AVI LIST"), None);
    }

    fn stage(bytes: &[u8], chunk: usize, limit: u64) -> Result<StagedFile, Rejection> {
        let dir = tempfile::tempdir().unwrap();
        let mut w = StagingWriter::create(dir.path(), "a.wav", limit).unwrap();
        for c in bytes.chunks(chunk.max(1)) {
            w.write(c).unwrap();
        }
        let out = w.finish().unwrap();
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        match &out {
            Ok(s) => {
                assert_eq!(std::fs::read(&s.tmp_path).unwrap(), bytes);
                assert_eq!(leftovers, 1);
            }
            Err(_) => assert_eq!(leftovers, 0, "a rejected file leaves nothing"),
        }
        // Keep the dir alive while the staged file is checked.
        let out = out.map(|mut s| {
            let dest = dir.path().join("kept");
            s.keep_at(&dest).unwrap();
            s.tmp_path = dest;
            s
        });
        std::mem::forget(dir);
        out
    }

    #[test]
    fn hashes_and_keeps_every_byte_in_any_chunking() {
        let mut bytes = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
        bytes.extend((0..10_000u32).map(|i| (i % 251) as u8));
        let expected = hex::encode(Sha256::digest(&bytes));
        for chunk in [1, 3, 11, 12, 13, 4096, 1 << 20] {
            let s = stage(&bytes, chunk, 1 << 20).unwrap();
            assert_eq!(s.sha256, expected, "chunk {chunk}");
            assert_eq!(s.size, bytes.len() as u64);
            assert_eq!(s.container, Container::Wav);
            assert_eq!(std::fs::read(&s.tmp_path).unwrap(), bytes);
        }
    }

    #[test]
    fn rejects_while_streaming() {
        let mut wav = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
        wav.resize(5000, 7);
        assert_eq!(
            stage(&wav, 1000, 4999).unwrap_err(),
            Rejection::TooLarge { limit: 4999 }
        );
        assert!(stage(&wav, 1000, 5000).is_ok());
        assert_eq!(stage(b"", 10, 100).unwrap_err(), Rejection::Empty);
        assert_eq!(
            stage(b"just some text, not audio", 4, 100).unwrap_err(),
            Rejection::UnsupportedFormat
        );
        assert_eq!(stage(b"RIFF", 4, 100).unwrap().container, Container::Wav);
        assert_eq!(
            stage(b"abc", 4, 100).unwrap_err(),
            Rejection::UnsupportedFormat
        );
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\music\\kick.wav"), "kick.wav");
        assert_eq!(sanitize_name("a\u{0}b\nc.wav"), "abc.wav");
        assert_eq!(sanitize_name("  "), "unnamed");
        assert!(sanitize_name(&"é".repeat(300)).len() <= 255);
    }
}
