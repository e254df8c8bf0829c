//! Audio in: decode, downmix, resample to 48 kHz mono, cut into model windows.
//!
//! Everything streams with bounded memory: [`AudioDecoder`] yields one codec packet at a time,
//! [`StreamResampler`] keeps only its filter state, and [`Windower`] holds at most one window plus
//! the chunk being fed. [`windows_from_file`] chains all three.
//!
//! Supported: WAV (8/16/24/32-bit PCM, 32/64-bit float), FLAC, MP3, Ogg Vorbis, M4A/AAC, ADTS
//! AAC; [`Container`] is the list, [`sniff_container`] the check uploads make before storing.
//!
//! ```no_run
//! use traum_audio::{windows_from_file, MODEL_SAMPLE_RATE, WINDOW_SAMPLES};
//!
//! let mut windows = windows_from_file("song.flac", WINDOW_SAMPLES, WINDOW_SAMPLES)?;
//! println!("{} Hz, {} channels", windows.info().sample_rate, windows.info().channels);
//! for window in windows.by_ref() {
//!     let window = window?; // a decode error mid-file ends the stream
//!     let (start, end) = (window.start_s(MODEL_SAMPLE_RATE), window.end_s(MODEL_SAMPLE_RATE));
//!     println!("{start:.1}-{end:.1} s: {} samples", window.samples.len());
//! }
//! # Ok::<(), traum_audio::AudioError>(())
//! ```

#![warn(missing_docs)]

mod container;
mod decode;
mod error;
mod resample;
mod sniff;
mod stream;
mod windows;

pub use decode::{
    AudioDecoder, AudioInfo, FLUSH_TO_ZERO_BELOW, MAX_CHANNELS, MAX_SAMPLE_MAGNITUDE,
    MAX_SAMPLE_RATE, MIN_SAMPLE_RATE,
};
pub use error::{AudioError, ErrorKind, Result, SUPPORTED_FORMATS};
pub use resample::{
    resample_to_model_rate, StreamResampler, F_CUTOFF_DOWN, F_CUTOFF_UP, MAX_EXACT_PHASES, SINC_LEN,
};
pub use sniff::{sniff_container, Container, Sniffed, SNIFF_LEN};
pub use stream::{decode_to_vec, MonoStream};
pub use windows::{window_starts, windows_from_file, FileWindows, Window, Windower};

/// Sample rate the model expects, in Hz.
pub const MODEL_SAMPLE_RATE: u32 = 48_000;

/// Samples per model window: 10 s at [`MODEL_SAMPLE_RATE`].
pub const WINDOW_SAMPLES: usize = 480_000;
