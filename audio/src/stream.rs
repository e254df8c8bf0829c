//! Decoder + resampler: any supported file as a stream of 48 kHz mono chunks.

use std::path::Path;

use crate::decode::{AudioDecoder, AudioInfo};
use crate::error::Result;
use crate::resample::StreamResampler;

/// A file decoded, downmixed and resampled to 48 kHz mono, one chunk at a time.
///
/// Memory is bounded by one codec packet plus the resampler's state, whatever the file's length.
/// If a chained stream changes sample rate mid-file, the old resampler is flushed and a new one
/// continues, so the output stays contiguous.
#[derive(Debug)]
pub struct MonoStream {
    decoder: AudioDecoder,
    resampler: StreamResampler,
    done: bool,
}

impl MonoStream {
    /// Opens `path` (see [`AudioDecoder::open`]) and sets up resampling from its native rate.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let decoder = AudioDecoder::open(path)?;
        let resampler = StreamResampler::new(decoder.info().sample_rate)
            .map_err(|e| e.with_path(decoder.path()))?;
        Ok(MonoStream {
            decoder,
            resampler,
            done: false,
        })
    }

    /// What the file is (native rate, channels, codec, ...).
    pub fn info(&self) -> &AudioInfo {
        self.decoder.info()
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        self.decoder.path()
    }

    /// Seconds of audio decoded so far (filler for damaged stretches included): at the end of
    /// the stream, the file's real length, whatever its header claimed.
    pub fn decoded_seconds(&self) -> f64 {
        self.decoder.decoded_seconds()
    }

    /// The next chunk of 48 kHz mono samples (never empty; length varies); `Ok(None)` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.decoder.next_chunk() {
                Ok(Some(chunk)) => {
                    let mut out = Vec::new();
                    let rate = self.decoder.sample_rate();
                    if rate != self.resampler.input_rate() {
                        // Sample rate changed (chained Ogg): finish the old stream, start a new one.
                        out = self
                            .resampler
                            .finish()
                            .map_err(|e| e.with_path(self.decoder.path()))?;
                        self.resampler = StreamResampler::new(rate)
                            .map_err(|e| e.with_path(self.decoder.path()))?;
                    }
                    out.extend(
                        self.resampler
                            .process(&chunk)
                            .map_err(|e| e.with_path(self.decoder.path()))?,
                    );
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    let tail = self
                        .resampler
                        .finish()
                        .map_err(|e| e.with_path(self.decoder.path()))?;
                    return Ok((!tail.is_empty()).then_some(tail));
                }
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
    }
}

impl Iterator for MonoStream {
    type Item = Result<Vec<f32>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// Decodes a whole (small) file to 48 kHz mono in memory, with its [`AudioInfo`].
///
/// Holds the entire signal: for long files stream with [`MonoStream`] or
/// [`windows_from_file`](crate::windows_from_file) instead.
pub fn decode_to_vec(path: impl AsRef<Path>) -> Result<(Vec<f32>, AudioInfo)> {
    let mut stream = MonoStream::open(path)?;
    let info = stream.info().clone();
    let mut samples = Vec::new();
    while let Some(chunk) = stream.next_chunk()? {
        samples.extend_from_slice(&chunk);
    }
    Ok((samples, info))
}
