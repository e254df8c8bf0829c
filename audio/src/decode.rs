//! Decoding: any supported file to mono `f32` chunks at the file's own sample rate.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    CodecParameters, CodecRegistry, CodecType, Decoder, DecoderOptions, CODEC_TYPE_NULL,
};
use symphonia::core::conv::IntoSample;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use symphonia::core::sample::Sample;
use symphonia::core::units::TimeBase;
use tracing::{debug, warn};

use crate::error::{AudioError, Result};
use crate::sniff::{mp3_has_length_header, sniff, Sniff, SNIFF_LEN};

/// Highest sample rate accepted from a header; above this it is garbage, not audio.
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Lowest sample rate accepted: below this (telephony is 8 kHz) it is garbage too, and
/// resampling it to 48 kHz would turn a small file into days of audio (found by fuzzing).
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// Highest channel count accepted from a header.
pub const MAX_CHANNELS: u16 = 64;

/// Packets in a row that may fail to decode before the file counts as corrupt. Symphonia's own
/// player skips single bad packets; a long run means we are decoding garbage.
const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 64;
/// Longest hole (skipped packets, or a jump in packet timestamps after the demuxer resynced)
/// that is filled with silence; a bigger jump means the timestamps themselves are garbage.
const MAX_GAP_S: f64 = 10.0;
/// Timestamp jumps up to this many frames are rounding, not lost audio.
const GAP_SLACK_FRAMES: u64 = 32;
/// If more than this share of the audio had to be replaced by silence, the file is too damaged
/// to index: its windows would be mostly filler.
const MAX_DAMAGED_FRACTION: f64 = 0.25;
/// Most frames of filler silence handed out in one chunk: filler is owed as a count and paid
/// out in pieces, so a run of bad packets never becomes one huge buffer.
const FILL_CHUNK_FRAMES: u64 = 16_384;
/// Largest sample magnitude passed on. Float formats can carry anything; values this far past
/// full scale (+60 dB) are garbage, and squaring them in the mel front end would overflow f32.
pub const MAX_SAMPLE_MAGNITUDE: f32 = 1_000.0;

/// What the file is, as far as the header and the first decoded packet tell.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Container, from the file's content: "wav", "flac", "mp3", "ogg", "m4a", "mp4" or "aac" (ADTS).
    pub container: String,
    /// Codec short name as symphonia calls it, e.g. "pcm_s16le", "flac", "mp3", "vorbis", "aac".
    pub codec: String,
    /// Native sample rate in Hz.
    pub sample_rate: u32,
    /// Channel count before the downmix.
    pub channels: u16,
    /// Duration in seconds when the file declares it exactly (not for raw AAC, nor MP3 without
    /// a Xing/Info/VBRI header, where only a bitrate estimate exists).
    pub duration_s: Option<f64>,
    /// Length in frames (samples per channel) when the file declares it exactly.
    pub n_frames: Option<u64>,
}

/// Streaming decoder: yields mono (mean of channels) `f32` chunks at the native rate.
///
/// Chunks are whatever one codec packet holds (a few hundred to a few thousand frames), so memory
/// stays bounded however long the file is.
pub struct AudioDecoder {
    path: PathBuf,
    info: AudioInfo,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    /// Rate of the chunk most recently returned (a chained Ogg may change it).
    sample_rate: u32,
    /// A decoded chunk and its rate, not yet returned: the first chunk (decoded in `open` so
    /// that `info` is exact and dud files fail early) or one held back behind filler.
    pending: Option<(Vec<f32>, u32)>,
    /// Frames of silence owed for damaged or missing data, paid out before the next packet.
    filler_owed: u64,
    /// Filler frames since the last packet that decoded: a hole longer than `MAX_GAP_S` is
    /// not damage but garbage.
    hole_frames: u64,
    /// Samples that were NaN or infinite (replaced by silence).
    nonfinite: u64,
    /// Frames emitted for the current track (decoded + silence filling damaged stretches).
    track_frames: u64,
    /// Seconds emitted in total, and how many of them are filler for damaged data.
    seconds: f64,
    filled_seconds: f64,
    /// The exact length so far: whole seconds of finished rate segments, plus the frames
    /// of the current one (a sum of per-chunk seconds drifts in the last digits).
    past_segments_s: f64,
    segment_frames: u64,
    segment_rate: u32,
    /// Declared length of the current track, for spotting truncation; None when unknown.
    declared_frames: Option<u64>,
    /// Timestamp (track time base) where the next packet should start; None before the first.
    expected_ts: Option<u64>,
    time_base: Option<TimeBase>,
    decode_errors: u64,
    consecutive_errors: u32,
    done: bool,
}

impl std::fmt::Debug for AudioDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioDecoder")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AudioDecoder {
    /// Opens and probes `path` by content (the extension is only a hint) and decodes the first packet.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| AudioError::from_io(path, e))?;
        let (container, exact_length) = identify(path, &mut file)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| AudioError::from_io(path, e))?;

        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        if matches!(container, "m4a" | "mp4") {
            crate::container::check_mp4(&mut file).map_err(|detail| AudioError::Corrupt {
                path: path.to_path_buf(),
                at_s: Some(0.0),
                detail,
            })?;
        }
        // Metadata and extra tracks we never use cannot fail the audio (see `container`).
        let patches = crate::container::patches_for(container, &mut file);
        let source = crate::container::PatchedSource::new(file, patches);
        let mss = MediaSourceStream::new(Box::new(source), Default::default());
        // Gapless trims encoder delay/padding where the container says (MP3 LAME/Xing tags), so
        // lengths are real. Symphonia 0.5 ignores MP4 edit lists: AAC in M4A keeps its ~1024
        // priming frames (~23 ms at 44.1 kHz) at the start.
        let fmt_opts = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        let probed = guarded(|| {
            symphonia::default::get_probe().format(
                &hint,
                mss,
                &fmt_opts,
                &MetadataOptions::default(),
            )
        })
        .map_err(|e| open_error(path, container, e))?;
        let format = probed.format;

        let track = pick_track(format.tracks())
            .ok_or_else(|| AudioError::NoAudioTrack {
                path: path.to_path_buf(),
                container: container.to_string(),
            })?
            .clone();
        check_params(path, &track.codec_params)?;
        let decoder = make_decoder(path, container, &track.codec_params)?;

        let params = &track.codec_params;
        // Estimated lengths are dropped: they would make complete files look truncated.
        let n_frames = params.n_frames.filter(|&n| n != u64::MAX && exact_length);
        let mut info = AudioInfo {
            container: container.to_string(),
            codec: codec_name(params.codec),
            sample_rate: params.sample_rate.unwrap_or(0),
            channels: params.channels.map(|c| c.count() as u16).unwrap_or(0),
            duration_s: None,
            n_frames,
        };
        let mut dec = AudioDecoder {
            path: path.to_path_buf(),
            info: info.clone(),
            format,
            decoder,
            track_id: track.id,
            sample_rate: info.sample_rate,
            pending: None,
            filler_owed: 0,
            hole_frames: 0,
            nonfinite: 0,
            track_frames: 0,
            seconds: 0.0,
            filled_seconds: 0.0,
            past_segments_s: 0.0,
            segment_frames: 0,
            segment_rate: 0,
            declared_frames: n_frames,
            expected_ts: None,
            time_base: track.codec_params.time_base,
            decode_errors: 0,
            consecutive_errors: 0,
            done: false,
        };
        // `next_chunk` errors with Empty/Corrupt if nothing decodes at all.
        let first = dec.next_chunk()?.ok_or_else(|| AudioError::Empty {
            path: path.to_path_buf(),
            detail: String::new(),
        })?;
        // The decoded buffer is the truth for rate and channels (headers of some codecs omit them).
        info.sample_rate = dec.sample_rate;
        info.channels = dec.last_channels();
        info.duration_s = n_frames.map(|n| n as f64 / f64::from(info.sample_rate));
        dec.info = info;
        debug_assert!(dec.pending.is_none() && dec.filler_owed == 0);
        dec.pending = Some((first, dec.sample_rate));
        debug!(path = %path.display(), info = ?dec.info, "opened audio file");
        Ok(dec)
    }

    /// What the file is: container, codec, native rate, channels, declared length.
    pub fn info(&self) -> &AudioInfo {
        &self.info
    }

    /// The file being decoded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sample rate of the chunk most recently returned (equals `info().sample_rate` unless a
    /// chained stream changed it).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Packets that failed to decode and were skipped so far.
    pub fn skipped_packets(&self) -> u64 {
        self.decode_errors
    }

    /// Seconds of audio produced so far (including a chunk decoded ahead in `open`).
    pub fn decoded_seconds(&self) -> f64 {
        self.past_segments_s + self.segment_frames as f64 / f64::from(self.segment_rate.max(1))
    }

    /// Seconds of silence inserted so far in place of undecodable or missing packets, which
    /// keeps later audio at its true time position.
    pub fn filled_seconds(&self) -> f64 {
        self.filled_seconds
    }

    /// Samples (after the downmix) that were NaN or infinite and were replaced by silence.
    ///
    /// Policy: such samples are damage, like an undecodable packet: each becomes 0.0 and counts
    /// towards the damaged share, so a file with a few stray NaNs is indexed and one that is
    /// mostly NaN fails as corrupt. Finite samples beyond [`MAX_SAMPLE_MAGNITUDE`] are clamped.
    pub fn nonfinite_samples(&self) -> u64 {
        self.nonfinite
    }

    fn last_channels(&mut self) -> u16 {
        self.decoder.last_decoded().spec().channels.count() as u16
    }

    /// Decodes up to the next non-empty packet; `Ok(None)` at the end of the stream.
    ///
    /// A packet that fails to decode is skipped with a warning and replaced by silence of its
    /// duration, as is a hole in the packet timestamps, so later audio stays at its true time.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>> {
        if let Some(filler) = self.pay_filler() {
            return Ok(Some(filler));
        }
        if let Some((chunk, rate)) = self.pending.take() {
            self.sample_rate = rate;
            return Ok(Some(chunk));
        }
        if self.done {
            return Ok(None);
        }
        loop {
            let packet = match guarded(|| self.format.next_packet()) {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // Symphonia reports the end of the stream as EOF, truncated or not.
                    self.done = true;
                    self.check_complete()?;
                    return Ok(self.pay_filler());
                }
                Err(SymError::ResetRequired) => {
                    self.reset_track()?;
                    continue;
                }
                Err(SymError::IoError(e)) => {
                    self.done = true;
                    return Err(AudioError::from_io(&self.path, e));
                }
                // A demuxer that rejects damaged data (e.g. an Ogg page failing its CRC) has
                // already stepped past it; the timestamp gap is filled when packets resume.
                Err(SymError::DecodeError(msg)) => {
                    self.skip_bad_packet(msg)?;
                    continue;
                }
                Err(e) => {
                    self.done = true;
                    return Err(self.corrupt(format!("could not read the next packet ({e})")));
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            self.fill_gap(packet.ts())?;
            self.expected_ts = Some(
                self.expected_ts
                    .unwrap_or(0)
                    .max(packet.ts().saturating_add(packet.dur())),
            );

            let decoded = guarded(|| self.decoder.decode(&packet).map(|buf| downmix(&buf)));
            let bad = match decoded {
                Ok((mut mono, rate, channels)) => {
                    self.consecutive_errors = 0;
                    if mono.is_empty() {
                        continue;
                    }
                    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate)
                        || channels == 0
                        || usize::from(MAX_CHANNELS) < channels
                    {
                        self.done = true;
                        return Err(AudioError::InvalidHeader {
                            path: self.path.clone(),
                            detail: format!(
                                "decoded stream reports {rate} Hz with {channels} channels"
                            ),
                        });
                    }
                    let nonfinite = sanitize(&mut mono);
                    if nonfinite > 0 {
                        if self.nonfinite == 0 {
                            warn!(path = %self.path.display(), at_s = self.seconds, "NaN or infinite samples replaced by silence");
                        }
                        self.nonfinite += nonfinite as u64;
                        // Damage, like filler, in the share that decides "too damaged".
                        self.filled_seconds += nonfinite as f64 / f64::from(rate);
                    }
                    self.hole_frames = 0;
                    if self.filler_owed > 0 && rate != self.sample_rate {
                        // Filler is owed at the old rate; pay it before switching.
                        self.pending = Some((mono, rate));
                        self.advance_pending_rate(rate);
                        return Ok(self.pay_filler());
                    }
                    self.sample_rate = rate;
                    self.advance(mono.len(), rate, false);
                    if self.filler_owed > 0 {
                        self.pending = Some((mono, rate));
                        return Ok(self.pay_filler());
                    }
                    return Ok(Some(mono));
                }
                Err(SymError::DecodeError(msg)) => msg.to_string(),
                // Decoders read packet bits through an in-memory reader: any I/O error there
                // means the packet's data is malformed, not that the file is unreadable.
                Err(SymError::IoError(e)) => format!("packet data ends early ({e})"),
                Err(SymError::ResetRequired) => {
                    self.reset_track()?;
                    continue;
                }
                // On the first packets this is a real codec limitation (e.g. HE-AAC); after
                // audio has decoded fine it is damaged data posing as an exotic feature.
                Err(SymError::Unsupported(what)) if self.decoded_any() => {
                    format!("unsupported feature: {what}")
                }
                Err(SymError::Unsupported(what)) => {
                    self.done = true;
                    return Err(AudioError::UnsupportedCodec {
                        path: self.path.clone(),
                        container: self.info.container.clone(),
                        codec: format!(
                            "{} ({what})",
                            codec_name(self.decoder.codec_params().codec)
                        ),
                    });
                }
                Err(e) => format!("{e}"),
            };
            self.skip_bad_packet(&bad)?;
            let frames = self.ts_to_frames(packet.dur()).min(self.max_gap_frames());
            self.owe_silence(frames)?;
            // Pay as we go: memory stays at one filler chunk however long the bad run.
            if let Some(filler) = self.pay_filler() {
                return Ok(Some(filler));
            }
        }
    }

    /// Whether any real (not filler) audio has been produced yet.
    fn decoded_any(&self) -> bool {
        self.seconds - self.filled_seconds > 1e-9
    }

    /// The pending chunk's frames count as emitted now (its rate differs from the filler's).
    fn advance_pending_rate(&mut self, rate: u32) {
        if let Some((chunk, _)) = &self.pending {
            let n = chunk.len();
            self.advance(n, rate, false);
        }
    }

    /// Records `frames` of silence owed for damaged or missing data. Before any audio has
    /// decoded there is no position to keep (and maybe no known rate), so leading damage is
    /// dropped rather than filled.
    fn owe_silence(&mut self, frames: u64) -> Result<()> {
        if frames == 0 || !self.decoded_any() {
            return Ok(());
        }
        self.hole_frames = self.hole_frames.saturating_add(frames);
        if self.hole_frames > self.max_gap_frames() {
            self.done = true;
            let secs = self.hole_frames as f64 / f64::from(self.sample_rate.max(1));
            return Err(self.corrupt(format!(
                "{secs:.1} s of audio in a row are missing or undecodable"
            )));
        }
        self.filler_owed += frames;
        Ok(())
    }

    /// The next piece of owed silence, if any.
    fn pay_filler(&mut self) -> Option<Vec<f32>> {
        if self.filler_owed == 0 {
            return None;
        }
        let n = self.filler_owed.min(FILL_CHUNK_FRAMES);
        self.filler_owed -= n;
        self.advance(n as usize, self.sample_rate, true);
        Some(vec![0.0; n as usize])
    }

    /// Most frames of silence inserted for one hole.
    fn max_gap_frames(&self) -> u64 {
        (MAX_GAP_S * f64::from(self.sample_rate.max(1))) as u64
    }

    /// Converts a duration in the track's time base to frames at the current sample rate.
    fn ts_to_frames(&self, units: u64) -> u64 {
        match self.time_base {
            Some(tb) if !(tb.numer == 1 && tb.denom == self.sample_rate) => {
                let frames =
                    u128::from(units) * u128::from(tb.numer) * u128::from(self.sample_rate)
                        / u128::from(tb.denom);
                u64::try_from(frames).unwrap_or(u64::MAX)
            }
            _ => units,
        }
    }

    /// Fills a jump in packet timestamps (the demuxer skipped damaged data) with silence.
    fn fill_gap(&mut self, ts: u64) -> Result<()> {
        let Some(expected) = self.expected_ts else {
            return Ok(());
        };
        if ts <= expected {
            return Ok(());
        }
        let frames = self.ts_to_frames(ts - expected);
        if frames <= GAP_SLACK_FRAMES {
            return Ok(());
        }
        if frames > self.max_gap_frames() {
            self.done = true;
            let secs = frames as f64 / f64::from(self.sample_rate.max(1));
            return Err(self.corrupt(format!(
                "{secs:.1} s of audio are missing (packet timestamps jump)"
            )));
        }
        warn!(path = %self.path.display(), at_s = self.seconds, frames, "filling a hole in the audio data with silence");
        self.owe_silence(frames)
    }

    fn advance(&mut self, frames: usize, rate: u32, filler: bool) {
        let secs = frames as f64 / f64::from(rate.max(1));
        if rate != self.segment_rate {
            self.past_segments_s = self.decoded_seconds();
            self.segment_frames = 0;
            self.segment_rate = rate;
        }
        self.segment_frames += frames as u64;
        self.track_frames += frames as u64;
        self.seconds += secs;
        if filler {
            self.filled_seconds += secs;
        }
    }

    fn skip_bad_packet(&mut self, msg: &str) -> Result<()> {
        self.decode_errors += 1;
        self.consecutive_errors += 1;
        warn!(path = %self.path.display(), at_s = self.seconds, "skipping undecodable packet: {msg}");
        if self.consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
            self.done = true;
            return Err(self.corrupt(format!(
                "{} packets in a row failed to decode (last: {msg})",
                self.consecutive_errors
            )));
        }
        Ok(())
    }

    /// The end of the stream: was there audio, as much as the header promised, and enough of it
    /// intact?
    fn check_complete(&self) -> Result<()> {
        let decoded = self.seconds - self.filled_seconds;
        if decoded <= 1e-9 {
            return Err(if self.nonfinite > 0 {
                self.corrupt(format!(
                    "every sample is NaN or infinite ({} samples): not audio data",
                    self.nonfinite
                ))
            } else if self.decode_errors > 0 {
                self.corrupt(format!(
                    "none of the {} audio packets could be decoded",
                    self.decode_errors
                ))
            } else {
                AudioError::Empty {
                    path: self.path.clone(),
                    detail: "the audio data holds no samples".to_string(),
                }
            });
        }
        if self.filled_seconds > MAX_DAMAGED_FRACTION * self.seconds {
            let why = if self.nonfinite > 0 {
                format!(
                    " ({} samples are NaN or infinite, not numbers)",
                    self.nonfinite
                )
            } else {
                String::new()
            };
            return Err(self.corrupt(format!(
                "only {:.2} s of {:.2} s could be decoded; the rest is damaged{why}",
                decoded.max(0.0),
                self.seconds
            )));
        }
        if let Some(declared) = self.declared_frames {
            // Lossy codecs may be off by encoder delay/padding (a few thousand frames at most).
            let tolerance = (declared / 200).max(8192);
            if self.track_frames + tolerance < declared {
                let rate = f64::from(self.sample_rate);
                return Err(self.corrupt(format!(
                    "the data ends after {:.2} s but the header declares {:.2} s (file truncated?)",
                    self.track_frames as f64 / rate,
                    declared as f64 / rate
                )));
            }
        }
        Ok(())
    }

    /// Handles `ResetRequired` (e.g. the next link of a chained Ogg): new track, new decoder.
    fn reset_track(&mut self) -> Result<()> {
        let track = pick_track(self.format.tracks())
            .ok_or_else(|| AudioError::NoAudioTrack {
                path: self.path.clone(),
                container: self.info.container.clone(),
            })?
            .clone();
        check_params(&self.path, &track.codec_params)?;
        self.decoder = make_decoder(&self.path, &self.info.container, &track.codec_params)?;
        debug!(path = %self.path.display(), track = track.id, "stream reset; switched track");
        self.track_id = track.id;
        self.track_frames = 0;
        self.expected_ts = None;
        self.time_base = track.codec_params.time_base;
        // The declared length described the previous link only.
        self.declared_frames = None;
        Ok(())
    }

    fn corrupt(&self, detail: String) -> AudioError {
        AudioError::Corrupt {
            path: self.path.clone(),
            at_s: Some(self.seconds),
            detail,
        }
    }
}

impl Iterator for AudioDecoder {
    type Item = Result<Vec<f32>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_chunk() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Runs a symphonia call, turning a panic on malformed input into an error: a server indexing
/// user files must not go down because one file trips an assertion inside a demuxer.
fn guarded<T>(
    f: impl FnOnce() -> symphonia::core::errors::Result<T>,
) -> symphonia::core::errors::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(SymError::DecodeError(
        "the decoder crashed on malformed data",
    )))
}

/// Sniffs the file's content and returns the container name, or why it is not audio we read.
/// Also says whether the length symphonia will report is exact (declared by the file) rather
/// than estimated from the bitrate.
fn identify(path: &Path, file: &mut File) -> Result<(&'static str, bool)> {
    let mut head = read_head(path, file, 0)?;
    let verdict = match sniff(&head) {
        // ID3v2 tags sit in front of MP3s (and sometimes FLACs): look behind the tag. Anything
        // else behind one is taken for MP3 and left to the decoder to confirm.
        Sniff::Id3 { len } => {
            head = read_head(path, file, len)?;
            match sniff(&head) {
                Sniff::Audio("flac") => Sniff::Audio("flac"),
                _ => Sniff::Audio("mp3"),
            }
        }
        other => other,
    };
    match verdict {
        Sniff::Audio("ogg") => {
            check_ogg_codecs(path, &head)?;
            Ok(("ogg", true))
        }
        Sniff::Audio(container) => {
            let exact_length = match container {
                "wav" => check_wav_header(path, &head)?,
                "mp3" => mp3_has_length_header(&head),
                "aac" => false, // ADTS has no length field at all
                _ => true,
            };
            Ok((container, exact_length))
        }
        Sniff::Empty => Err(AudioError::Empty {
            path: path.to_path_buf(),
            detail: "the file is 0 bytes".to_string(),
        }),
        Sniff::OtherAudio(what) => Err(AudioError::UnsupportedFormat {
            path: path.to_path_buf(),
            looked_like: what.to_string(),
        }),
        Sniff::NotAudio(what) => Err(AudioError::UnsupportedFormat {
            path: path.to_path_buf(),
            looked_like: what,
        }),
        Sniff::Id3 { .. } => Ok(("mp3", false)),
    }
}

/// An Ogg file whose streams are none that symphonia maps (Vorbis, Opus, FLAC) would
/// otherwise look empty or corrupt to it: say which codec it holds instead.
fn check_ogg_codecs(path: &Path, head: &[u8]) -> Result<()> {
    let codecs = crate::container::ogg_stream_codecs(head);
    if codecs.is_empty()
        || codecs
            .iter()
            .any(|c| matches!(*c, "vorbis" | "opus" | "flac"))
    {
        return Ok(());
    }
    let audio: Vec<&str> = codecs
        .iter()
        .copied()
        .filter(|c| !matches!(*c, "theora" | "skeleton" | "kate"))
        .collect();
    if audio.is_empty() {
        return Err(AudioError::NoAudioTrack {
            path: path.to_path_buf(),
            container: "ogg".to_string(),
        });
    }
    let names: Vec<&str> = audio
        .iter()
        .map(|c| match *c {
            "speex" => "Speex",
            "pcm" => "Ogg PCM",
            _ => "an unknown codec",
        })
        .collect();
    Err(AudioError::UnsupportedCodec {
        path: path.to_path_buf(),
        container: "ogg".to_string(),
        codec: names.join(", "),
    })
}

fn read_head(path: &Path, file: &mut File, offset: u64) -> Result<Vec<u8>> {
    let io = |e| AudioError::from_io(path, e);
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    Ok(head)
}

/// Checks the WAV `fmt ` chunk before symphonia sees it: symphonia panics on a 0 Hz sample rate
/// (`TimeBase::new(1, 0)`) and we want a message naming the bad field.
///
/// Returns whether the data chunk's size is a real length. WAVs written to a pipe carry a
/// placeholder instead (ffmpeg: 0xFFFFFFFF, sox: ~0x7FFFF000), which must not be mistaken
/// for a promise the file then fails to keep.
fn check_wav_header(path: &Path, head: &[u8]) -> Result<bool> {
    let invalid = |detail: String| AudioError::InvalidHeader {
        path: path.to_path_buf(),
        detail,
    };
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut pos = 12;
    while let (Some(id), Some(len)) = (head.get(pos..pos + 4), u32_at(pos + 4)) {
        let body = pos + 8;
        if id == b"fmt " {
            let (Some(format), Some(channels), Some(rate), Some(align), Some(bits)) = (
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 12),
                u16_at(body + 14),
            ) else {
                return Err(AudioError::Corrupt {
                    path: path.to_path_buf(),
                    at_s: None,
                    detail: "the WAV format chunk is cut short".to_string(),
                });
            };
            if channels == 0 || channels > MAX_CHANNELS {
                return Err(invalid(format!(
                    "channel count is {channels} (must be 1 to {MAX_CHANNELS})"
                )));
            }
            if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
                return Err(invalid(format!(
                    "sample rate is {rate} Hz (must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
                )));
            }
            if align == 0 {
                return Err(invalid("block alignment is 0 bytes".to_string()));
            }
            if let Some(codec) = unsupported_wav_format(format) {
                return Err(AudioError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    container: "wav".to_string(),
                    codec: format!("{codec} (WAV format tag {format:#06x})"),
                });
            }
            // PCM, IEEE float and extensible carry plain samples: bit depth must be sane.
            if matches!(format, 1 | 3 | 0xfffe) && (bits == 0 || bits > 64) {
                return Err(invalid(format!(
                    "bits per sample is {bits} (must be 8 to 64)"
                )));
            }
        }
        if id == b"data" {
            return Ok(len < 0x7fff_0000);
        }
        pos = body + len as usize + (len as usize & 1);
    }
    // No data chunk within the sniffed bytes: leave the rest to symphonia's own checks.
    Ok(true)
}

/// Names WAV format tags that symphonia (with our features) cannot decode; `None` if it can
/// (PCM, Microsoft ADPCM, IEEE float, A-law, µ-law, IMA ADPCM, extensible — the last is
/// checked by symphonia itself).
fn unsupported_wav_format(tag: u16) -> Option<&'static str> {
    Some(match tag {
        0x0001 | 0x0002 | 0x0003 | 0x0006 | 0x0007 | 0x0011 | 0xfffe => return None,
        0x0031 => "GSM 6.10",
        0x0050 => "MPEG audio",
        0x0055 => "MP3",
        0x00ff | 0x1610 | 0x1600 => "AAC",
        0x0160..=0x0163 => "Windows Media Audio",
        0x2000 => "AC-3",
        0x2001 => "DTS",
        0xf1ac => "FLAC",
        _ => "an unknown codec",
    })
}

/// Maps a symphonia error from probing/opening to ours, given what the content looked like.
fn open_error(path: &Path, container: &str, e: SymError) -> AudioError {
    let path = path.to_path_buf();
    match e {
        SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt {
                path,
                at_s: Some(0.0),
                detail: format!("the file ends before any {container} audio data could be found"),
            }
        }
        SymError::IoError(e) => AudioError::from_io(&path, e),
        SymError::Unsupported(msg)
            if msg.contains("format") || msg.contains("codec") || msg.contains("sub-type") =>
        {
            AudioError::UnsupportedCodec {
                path,
                container: container.to_string(),
                codec: format!("({msg})"),
            }
        }
        SymError::DecodeError(msg)
            if msg.contains("channel")
                || msg.contains("sample rate")
                || msg.contains("bits per") =>
        {
            AudioError::InvalidHeader {
                path,
                detail: msg.to_string(),
            }
        }
        other => AudioError::Corrupt {
            path,
            at_s: Some(0.0),
            detail: format!("the {container} stream could not be opened ({other})"),
        },
    }
}

/// The default track if it is audio, else the first audio track.
fn pick_track(tracks: &[Track]) -> Option<&Track> {
    let is_audio = |t: &&Track| {
        t.codec_params.codec != CODEC_TYPE_NULL && t.codec_params.sample_rate.is_some()
    };
    tracks
        .first()
        .filter(is_audio)
        .or_else(|| tracks.iter().find(is_audio))
}

fn check_params(path: &Path, p: &CodecParameters) -> Result<()> {
    let invalid = |detail: String| AudioError::InvalidHeader {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(rate) = p.sample_rate {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
            return Err(invalid(format!(
                "sample rate is {rate} Hz (must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
            )));
        }
    }
    if let Some(ch) = p.channels {
        let n = ch.count();
        if n == 0 || n > usize::from(MAX_CHANNELS) {
            return Err(invalid(format!(
                "channel count is {n} (must be 1 to {MAX_CHANNELS})"
            )));
        }
    }
    Ok(())
}

fn make_decoder(
    path: &Path,
    container: &str,
    params: &CodecParameters,
) -> Result<Box<dyn Decoder>> {
    let unsupported = |codec: String| AudioError::UnsupportedCodec {
        path: path.to_path_buf(),
        container: container.to_string(),
        codec,
    };
    if codecs().get_codec(params.codec).is_none() {
        return Err(unsupported(codec_name(params.codec)));
    }
    guarded(|| codecs().make(params, &DecoderOptions::default())).map_err(|e| match e {
        SymError::Unsupported(what) => {
            unsupported(format!("{} ({what})", codec_name(params.codec)))
        }
        other => AudioError::Corrupt {
            path: path.to_path_buf(),
            at_s: Some(0.0),
            detail: format!(
                "could not set up the {} decoder ({other})",
                codec_name(params.codec)
            ),
        },
    })
}

/// Every codec we decode: symphonia's own (by the features enabled) and Opus through libopus,
/// which symphonia 0.5 does not decode itself.
fn codecs() -> &'static CodecRegistry {
    static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
        let mut registry = CodecRegistry::new();
        symphonia::default::register_enabled_codecs(&mut registry);
        registry.register_all::<symphonia_adapter_libopus::OpusDecoder>();
        registry
    });
    &CODECS
}

/// Human name of a codec: symphonia's short name if it can decode it, else a known name.
fn codec_name(codec: CodecType) -> String {
    use symphonia::core::codecs::*;
    if let Some(desc) = codecs().get_codec(codec) {
        return desc.short_name.to_string();
    }
    let name = match codec {
        CODEC_TYPE_ALAC => "ALAC (Apple Lossless)",
        CODEC_TYPE_OPUS => "Opus",
        CODEC_TYPE_SPEEX => "Speex",
        CODEC_TYPE_MP1 => "MPEG layer I",
        CODEC_TYPE_MP2 => "MPEG layer II (MP2)",
        CODEC_TYPE_ADPCM_MS | CODEC_TYPE_ADPCM_IMA_WAV | CODEC_TYPE_ADPCM_IMA_QT => "ADPCM",
        CODEC_TYPE_ADPCM_G722 | CODEC_TYPE_ADPCM_G726 | CODEC_TYPE_ADPCM_G726LE => "G.72x ADPCM",
        CODEC_TYPE_EAC3 => "E-AC-3 (Dolby Digital Plus)",
        CODEC_TYPE_AC4 => "AC-4",
        CODEC_TYPE_DCA => "DTS",
        CODEC_TYPE_WMA => "WMA",
        CODEC_TYPE_WAVPACK => "WavPack",
        CODEC_TYPE_MONKEYS_AUDIO => "Monkey's Audio",
        CODEC_TYPE_TTA => "TTA",
        CODEC_TYPE_MUSEPACK => "Musepack",
        CODEC_TYPE_ATRAC1 | CODEC_TYPE_ATRAC3 | CODEC_TYPE_ATRAC3PLUS | CODEC_TYPE_ATRAC9 => {
            "ATRAC"
        }
        CODEC_TYPE_NULL => "no recognised codec",
        _ => return format!("an unknown codec ({codec})"),
    };
    name.to_string()
}

/// Samples closer to zero than this become exactly zero (see [`sanitize`]).
///
/// 1e-20 is −400 dBFS, far below the quietest step any format stores (a 24-bit LSB is
/// −144 dBFS), so no audible or embeddable signal changes. Without it, subnormal floats (which
/// a float WAV can hold, and which the resampler's filter products would then keep making) run
/// through the FPU's slow path: a stream of them resamples ~30× slower.
pub const FLUSH_TO_ZERO_BELOW: f32 = 1e-20;

/// Replaces NaN and infinite samples by silence, clamps absurd magnitudes and flushes
/// near-zero (subnormal) values to zero; returns how many samples were not finite.
fn sanitize(samples: &mut [f32]) -> usize {
    // Selects, not branches: the loop runs vectorised over every decoded sample.
    let mut nonfinite = 0;
    for s in samples.iter_mut() {
        let finite = s.is_finite();
        nonfinite += usize::from(!finite);
        let v = if finite { *s } else { 0.0 };
        let v = v.clamp(-MAX_SAMPLE_MAGNITUDE, MAX_SAMPLE_MAGNITUDE);
        *s = if v.abs() < FLUSH_TO_ZERO_BELOW {
            0.0
        } else {
            v
        };
    }
    nonfinite
}

/// Mean of all channels, plus the buffer's rate and channel count.
fn downmix(buf: &AudioBufferRef<'_>) -> (Vec<f32>, u32, usize) {
    fn mean<S: Sample + IntoSample<f32>>(buf: &AudioBuffer<S>) -> Vec<f32> {
        let n_ch = buf.spec().channels.count();
        let mut out: Vec<f32> = buf.chan(0).iter().map(|&s| s.into_sample()).collect();
        if n_ch > 1 {
            for c in 1..n_ch {
                for (o, &s) in out.iter_mut().zip(buf.chan(c)) {
                    *o += IntoSample::<f32>::into_sample(s);
                }
            }
            let scale = 1.0 / n_ch as f32;
            out.iter_mut().for_each(|o| *o *= scale);
        }
        out
    }
    let spec = *buf.spec();
    let channels = spec.channels.count();
    if channels == 0 || buf.frames() == 0 {
        return (Vec::new(), spec.rate, channels);
    }
    let mono = match buf {
        AudioBufferRef::U8(b) => mean(b),
        AudioBufferRef::U16(b) => mean(b),
        AudioBufferRef::U24(b) => mean(b),
        AudioBufferRef::U32(b) => mean(b),
        AudioBufferRef::S8(b) => mean(b),
        AudioBufferRef::S16(b) => mean(b),
        AudioBufferRef::S24(b) => mean(b),
        AudioBufferRef::S32(b) => mean(b),
        AudioBufferRef::F32(b) => mean(b),
        AudioBufferRef::F64(b) => mean(b),
    };
    (mono, spec.rate, channels)
}
