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

/// The layout of a data directory, and of the storage directory that holds the originals
/// (the data directory itself unless `--storage-dir` names another, which several replicas
/// then share).
#[derive(Debug, Clone)]
pub struct DataPaths {
    /// This process's own: the SQLite database, the in-process index, the lock.
    pub root: PathBuf,
    /// Originals, under `files/` (content-addressed, so replicas never collide), and uploads
    /// being received, under `incoming/`.
    pub storage: PathBuf,
    /// With a shared storage directory: this replica's own subdirectory of `incoming/`.
    staging: Option<String>,
}

impl DataPaths {
    /// Everything in `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            storage: root.clone(),
            root,
            staging: None,
        }
    }

    /// Originals in `storage`, shared with other processes; this one stages its uploads in
    /// `incoming/<replica>/`.
    pub fn with_storage(
        root: impl Into<PathBuf>,
        storage: impl Into<PathBuf>,
        replica: &str,
    ) -> Self {
        Self {
            root: root.into(),
            storage: storage.into(),
            staging: Some(replica.to_owned()),
        }
    }

    /// Creates the directories a library needs.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [&self.root, &self.files(), &self.incoming(), &self.index()] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// The SQLite database used when no `DATABASE_URL` is given.
    pub fn sqlite(&self) -> PathBuf {
        self.root.join("traum.db")
    }

    /// The lock one process holds on the data directory while it uses it.
    pub fn lock(&self) -> PathBuf {
        self.root.join("traum.lock")
    }

    /// The vector store.
    pub fn index(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Original files, content-addressed.
    pub fn files(&self) -> PathBuf {
        self.storage.join("files")
    }

    /// Uploads being received by this process (on the storage's file system, so keeping one
    /// is a rename).
    pub fn incoming(&self) -> PathBuf {
        let shared = self.storage.join("incoming");
        match &self.staging {
            Some(replica) => shared.join(replica),
            None => shared,
        }
    }

    /// Where a file with this hash and container is kept, relative to the storage directory.
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
            self.storage.join(p)
        }
    }

    /// Removes leftovers of this process's uploads interrupted by a crash (never another
    /// replica's: each stages in its own directory).
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

/// One process's hold on a data directory (an OS file lock on `traum.lock`, released when
/// the process ends however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(paths: &DataPaths) -> Result<DataDirLock, String> {
        let path = paths.lock();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(format!(
                    "the data directory {} is in use by another traum process{}. One process \
                     uses a data directory at a time: stop it first, or, to run several \
                     replicas, give each its own --data-dir and share PostgreSQL \
                     (--database-url), a Qdrant server (--vector-store qdrant) and the \
                     originals (--storage-dir)",
                    paths.root.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" ({holder})")
                    }
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        // Who holds it, for the message another process prints.
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

/// Audio containers the library accepts: the decoder's own list, so an upload is refused at
/// the door exactly when the decoder would refuse it.
pub use traum_audio::Container;

/// Bytes an upload is held back (in memory) before its type is decided.
const SNIFF_LEN: usize = traum_audio::SNIFF_LEN;

/// Whether `traum ingest` picks up a file with this name (by extension).
pub fn has_audio_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(Container::is_audio_extension)
}

/// Every extension `traum ingest` picks up, for messages.
pub fn audio_extensions() -> Vec<&'static str> {
    Container::ALL
        .iter()
        .flat_map(|c| c.extensions().iter().copied())
        .collect()
}

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

impl StagedFile {
    /// A second staged copy of the same bytes (a hard link, or a copy where links are not
    /// possible), for one upload used by two variables. Each copy is kept or dropped alone.
    /// The file system work runs on a blocking thread.
    pub async fn duplicate(&self) -> std::io::Result<StagedFile> {
        let src = self.tmp_path.clone();
        let path = tokio::task::spawn_blocking(move || {
            let dir = src.parent().unwrap_or(Path::new("."));
            let path = dir.join(format!("{}.part", uuid::Uuid::new_v4().simple()));
            if std::fs::hard_link(&src, &path).is_err() {
                std::fs::copy(&src, &path)?;
            }
            Ok::<_, std::io::Error>(path)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(StagedFile {
            tmp_path: path,
            original_name: self.original_name.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            container: self.container,
            kept: false,
        })
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
    TooLarge {
        limit: u64,
    },
    Empty,
    /// Not a container we read; what it looked like instead.
    UnsupportedFormat {
        looked_like: String,
    },
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
        let file = File::create(&tmp_path).map_err(|e| write_error(&tmp_path, e))?;
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
        match traum_audio::sniff_container(&self.head) {
            traum_audio::Sniffed::Audio(c) => {
                self.container = Some(c);
                let head = std::mem::take(&mut self.head);
                self.hasher.update(&head);
                self.write_out(&head)
            }
            traum_audio::Sniffed::Empty => {
                self.reject(Rejection::Empty);
                Ok(())
            }
            traum_audio::Sniffed::Unsupported(looked_like) => {
                self.reject(Rejection::UnsupportedFormat { looked_like });
                Ok(())
            }
        }
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.write_all(bytes) {
                // Nothing half-stored: the partial file goes now, not at drop.
                self.out = None;
                let _ = std::fs::remove_file(&self.tmp_path);
                return Err(write_error(&self.tmp_path, e));
            }
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
        let file = out.into_inner().map_err(|e| e.into_error());
        if let Err(e) = file.and_then(|f| f.sync_data().map(|()| f)) {
            let _ = std::fs::remove_file(&self.tmp_path);
            return Err(write_error(&self.tmp_path, e));
        }
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

/// A write into the data directory failed; a full disk (or quota) says so.
pub fn write_error(path: &Path, e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            tracing::error!(path = %path.display(), "the data directory's disk is full");
            ApiError::StorageFull(
                "the server's disk is full; nothing of this upload was stored. Free space on \
                 the server (or move its data directory), then upload again"
                    .to_string(),
            )
        }
        _ => ApiError::Internal(format!("cannot write {}: {e}", path.display())),
    }
}

/// A [`StagingWriter`] for async callers: bytes gather in memory up to a buffer's worth, then
/// are written on a blocking thread, so uploads never block the runtime's threads on disk.
pub struct AsyncStagingWriter {
    inner: Option<StagingWriter>,
    buf: Vec<u8>,
}

const ASYNC_WRITE_BUF: usize = 256 * 1024;

impl AsyncStagingWriter {
    pub async fn create(
        incoming: &Path,
        original_name: &str,
        limit: u64,
    ) -> Result<Self, ApiError> {
        let incoming = incoming.to_path_buf();
        let name = original_name.to_string();
        let inner = blocking(move || StagingWriter::create(&incoming, &name, limit)).await??;
        Ok(Self {
            inner: Some(inner),
            buf: Vec::with_capacity(ASYNC_WRITE_BUF),
        })
    }

    /// Takes the next bytes (written once a buffer's worth has gathered).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        if self.is_rejected() {
            // Count, drop: the part is skipped without storing anything.
            return self.inner_mut().write(chunk);
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= ASYNC_WRITE_BUF {
            self.flush().await?;
        }
        Ok(())
    }

    pub fn is_rejected(&self) -> bool {
        self.inner.as_ref().is_some_and(|w| w.rejection().is_some())
    }

    fn inner_mut(&mut self) -> &mut StagingWriter {
        self.inner
            .as_mut()
            .expect("the writer is back after each write")
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(ASYNC_WRITE_BUF));
        let mut writer = self.inner.take().expect("one write at a time");
        let (writer, result) = blocking(move || {
            let r = writer.write(&buf);
            (writer, r)
        })
        .await?;
        self.inner = Some(writer);
        result
    }

    /// The whole file has arrived.
    pub async fn finish(mut self) -> Result<Result<StagedFile, Rejection>, ApiError> {
        self.flush().await?;
        let writer = self.inner.take().expect("one write at a time");
        blocking(move || writer.finish()).await?
    }
}

/// Runs blocking file work off the async runtime's threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("file task failed: {e}")))
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
        // Past the sniff length too, so the held-back head and the rest meet in every chunking.
        bytes.extend((0..70_000u32).map(|i| (i % 13) as u8));
        bytes.extend((0..10_000u32).map(|i| (i % 251) as u8));
        let expected = hex::encode(Sha256::digest(&bytes));
        for chunk in [7, 11, 12, 13, 4096, 65_536, 65_537, 1 << 20] {
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
            Rejection::UnsupportedFormat {
                looked_like: "plain text".into()
            }
        );
        // RF64 is refused (the decoder does not read it), with what it looked like.
        let rf64 = stage(b"RF64\xff\xff\xff\xffWAVEds64", 4, 100).unwrap_err();
        assert!(
            matches!(&rf64, Rejection::UnsupportedFormat { looked_like } if looked_like.contains("RF64")),
            "{rf64:?}"
        );
        assert!(matches!(
            stage(b"\x01\x02\x03", 4, 100).unwrap_err(),
            Rejection::UnsupportedFormat { .. }
        ));
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
