//! The one error type of this crate, with a stable machine-readable [`ErrorKind`].

use std::fmt;
use std::path::{Path, PathBuf};

/// Formats this crate can read, as quoted in error messages.
pub const SUPPORTED_FORMATS: &str =
    "wav (pcm, float, adpcm), aiff/aifc, flac, mp3, ogg (vorbis, opus, flac), m4a (aac, alac), aac (adts)";

/// Everything that can go wrong between a path on disk and 48 kHz mono samples.
///
/// Every message names the file and says what to do or what was wrong, so it can be shown to a
/// person as is; [`AudioError::kind`] gives the stable code for programs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The file does not exist.
    #[error("{}: file not found", show(path))]
    NotFound {
        /// The file that was asked for.
        path: PathBuf,
    },

    /// The file exists but may not be read.
    #[error(
        "{}: permission denied (check the file's read permissions)",
        show(path)
    )]
    PermissionDenied {
        /// The file that was asked for.
        path: PathBuf,
    },

    /// Any other I/O failure while reading the file.
    #[error("{}: could not read the file: {source}", show(path))]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not an audio container this crate reads.
    #[error(
        "{}: not a recognised audio file (looked like {looked_like}); supported: {SUPPORTED_FORMATS}",
        show(path)
    )]
    UnsupportedFormat {
        /// The file being read.
        path: PathBuf,
        /// A guess at what the file is instead, e.g. "plain text" or "a PNG image".
        looked_like: String,
    },

    /// The container is known but the audio inside uses a codec this crate does not decode.
    #[error(
        "{}: the audio codec {codec} is not supported (container: {container}); convert it to one of: {SUPPORTED_FORMATS}",
        show(path)
    )]
    UnsupportedCodec {
        /// The file being read.
        path: PathBuf,
        /// The container, e.g. "wav" or "m4a".
        container: String,
        /// The codec found inside, as precisely as known.
        codec: String,
    },

    /// The container holds no audio track (e.g. a video-only MP4).
    #[error("{}: the {container} file has no audio track", show(path))]
    NoAudioTrack {
        /// The file being read.
        path: PathBuf,
        /// The container that was recognised.
        container: String,
    },

    /// The file is valid but holds no audio samples.
    #[error(
        "{}: contains no audio (zero length{})",
        show(path),
        detail_suffix(detail)
    )]
    Empty {
        /// The file being read.
        path: PathBuf,
        /// Extra context, e.g. "the file is 0 bytes"; may be empty.
        detail: String,
    },

    /// The audio data is damaged or cut short.
    #[error("{}: corrupt or truncated audio data{}: {detail}", show(path), at(*at_s))]
    Corrupt {
        /// The file being read.
        path: PathBuf,
        /// Position in the audio, in seconds, where decoding broke, if known.
        at_s: Option<f64>,
        /// What was wrong.
        detail: String,
    },

    /// The header declares values no real audio file has (sample rate 0, 0 channels, ...).
    #[error("{}: invalid audio header: {detail}", show(path))]
    InvalidHeader {
        /// The file being read.
        path: PathBuf,
        /// Which value was impossible, with the allowed range.
        detail: String,
    },

    /// The resampler could not be built or failed while running.
    #[error("{}: resampling to 48 kHz failed: {detail}", show(path))]
    Resample {
        /// The file being resampled; empty when the resampler was used on its own.
        path: PathBuf,
        /// The resampler's own message.
        detail: String,
    },

    /// A caller passed a parameter outside its allowed range (e.g. a hop longer than the window).
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What was wrong and what is allowed.
        detail: String,
    },
}

/// The stable category of an [`AudioError`], for mapping onto API error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file does not exist.
    NotFound,
    /// The file may not be read.
    PermissionDenied,
    /// Other I/O failure.
    Io,
    /// Not an audio container this crate reads.
    UnsupportedFormat,
    /// Known container, unsupported codec.
    UnsupportedCodec,
    /// No audio track in the container.
    NoAudioTrack,
    /// No audio samples.
    Empty,
    /// Damaged or truncated data.
    Corrupt,
    /// Impossible header values.
    InvalidHeader,
    /// Resampler failure.
    Resample,
    /// Bad parameter from the caller.
    InvalidArgument,
}

impl ErrorKind {
    /// The stable SCREAMING_SNAKE_CASE code, e.g. `"UNSUPPORTED_FORMAT"`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::Io => "IO",
            ErrorKind::UnsupportedFormat => "UNSUPPORTED_FORMAT",
            ErrorKind::UnsupportedCodec => "UNSUPPORTED_CODEC",
            ErrorKind::NoAudioTrack => "NO_AUDIO_TRACK",
            ErrorKind::Empty => "EMPTY",
            ErrorKind::Corrupt => "CORRUPT",
            ErrorKind::InvalidHeader => "INVALID_HEADER",
            ErrorKind::Resample => "RESAMPLE_FAILED",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl AudioError {
    /// The stable category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AudioError::NotFound { .. } => ErrorKind::NotFound,
            AudioError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            AudioError::Io { .. } => ErrorKind::Io,
            AudioError::UnsupportedFormat { .. } => ErrorKind::UnsupportedFormat,
            AudioError::UnsupportedCodec { .. } => ErrorKind::UnsupportedCodec,
            AudioError::NoAudioTrack { .. } => ErrorKind::NoAudioTrack,
            AudioError::Empty { .. } => ErrorKind::Empty,
            AudioError::Corrupt { .. } => ErrorKind::Corrupt,
            AudioError::InvalidHeader { .. } => ErrorKind::InvalidHeader,
            AudioError::Resample { .. } => ErrorKind::Resample,
            AudioError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        }
    }

    /// Shorthand for `self.kind().code()`.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The file the error is about, if it concerns one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AudioError::NotFound { path }
            | AudioError::PermissionDenied { path }
            | AudioError::Io { path, .. }
            | AudioError::UnsupportedFormat { path, .. }
            | AudioError::UnsupportedCodec { path, .. }
            | AudioError::NoAudioTrack { path, .. }
            | AudioError::Empty { path, .. }
            | AudioError::Corrupt { path, .. }
            | AudioError::InvalidHeader { path, .. }
            | AudioError::Resample { path, .. } => {
                (!path.as_os_str().is_empty()).then_some(path.as_path())
            }
            AudioError::InvalidArgument { .. } => None,
        }
    }

    /// Maps an `std::io::Error` from opening or reading `path` to the matching variant.
    pub(crate) fn from_io(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            std::io::ErrorKind::NotFound => AudioError::NotFound { path },
            std::io::ErrorKind::PermissionDenied => AudioError::PermissionDenied { path },
            _ => AudioError::Io { path, source },
        }
    }

    /// Fills in the file for errors raised by parts (the resampler) that do not know it.
    pub(crate) fn with_path(mut self, file: &Path) -> Self {
        if let AudioError::Resample { path, .. } = &mut self {
            if path.as_os_str().is_empty() {
                *path = file.to_path_buf();
            }
        }
        self
    }
}

/// Convenience alias used throughout the crate.
pub type Result<T, E = AudioError> = std::result::Result<T, E>;

fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "<audio stream>".to_string()
    } else {
        path.display().to_string()
    }
}

fn at(at_s: Option<f64>) -> String {
    match at_s {
        Some(s) => format!(" at {s:.2} s"),
        None => String::new(),
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}
