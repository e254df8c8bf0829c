//! Cutting a 48 kHz mono stream into the model's 10 s windows.
//!
//! Policy (the model's reference fixtures use exactly this):
//! * total length `n ≤ window`: one window `[0, n)` holding everything (short; the feature
//!   extractor repeat-pads it);
//! * otherwise windows start at `0, hop, 2·hop, …` while `start + window ≤ n`; if the last of those
//!   ends before `n`, one more window starts at `n − window` (end-aligned), so every window holds
//!   `window` samples of real audio and the tail is covered.

use std::collections::VecDeque;
use std::path::Path;

use crate::decode::AudioInfo;
use crate::error::{AudioError, Result};
use crate::stream::MonoStream;

/// One model window: `samples` are `[start_sample, start_sample + samples.len())` of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Position in emission order, from 0.
    pub index: usize,
    /// First sample of the window, counted from the start of the stream.
    pub start_sample: u64,
    /// The window's samples (`window_len` of them, fewer only for a short stream's single window).
    pub samples: Vec<f32>,
}

impl Window {
    /// Start time in seconds at `sample_rate`.
    pub fn start_s(&self, sample_rate: u32) -> f64 {
        self.start_sample as f64 / f64::from(sample_rate)
    }

    /// End time (exclusive) in seconds at `sample_rate`.
    pub fn end_s(&self, sample_rate: u32) -> f64 {
        (self.start_sample + self.samples.len() as u64) as f64 / f64::from(sample_rate)
    }
}

/// Window start positions for a stream of `n` samples (see the module docs for the policy).
///
/// Returns an empty list for `n == 0`.
///
/// # Panics
///
/// If `hop` is 0 or larger than `window` ([`Windower::new`] reports these as errors instead).
pub fn window_starts(n: u64, window: u64, hop: u64) -> Vec<u64> {
    assert!(
        hop > 0 && hop <= window,
        "need 0 < hop ≤ window, got hop {hop}, window {window}"
    );
    if n == 0 {
        return Vec::new();
    }
    if n <= window {
        return vec![0];
    }
    let mut starts: Vec<u64> = (0..)
        .map(|k| k * hop)
        .take_while(|s| s + window <= n)
        .collect();
    let last_end = starts.last().map_or(0, |s| s + window);
    if last_end < n {
        starts.push(n - window);
    }
    starts
}

fn check_lengths(window_len: usize, hop_len: usize) -> Result<()> {
    if window_len == 0 || hop_len == 0 || hop_len > window_len {
        return Err(AudioError::InvalidArgument {
            detail: format!("window/hop of {window_len}/{hop_len} samples: need 0 < hop ≤ window"),
        });
    }
    Ok(())
}

/// Streaming windower: feed chunks of any size, collect [`Window`]s as soon as they are complete.
///
/// Holds at most the last `window_len` samples plus the chunk being fed, so a 3-hour file never
/// needs 3 hours of samples in memory. The end-aligned final window needs the stream's length, so
/// it comes from [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct Windower {
    window_len: usize,
    hop_len: usize,
    /// The most recent samples; `buf[0]` is stream sample `buf_start`.
    buf: VecDeque<f32>,
    buf_start: u64,
    total: u64,
    next_start: u64,
    next_index: usize,
    /// End of the last emitted window (0 before the first).
    last_end: u64,
    peak_buffered: usize,
}

impl Windower {
    /// A windower with `window_len` samples per window and `hop_len` between starts
    /// (`0 < hop_len ≤ window_len`).
    pub fn new(window_len: usize, hop_len: usize) -> Result<Self> {
        check_lengths(window_len, hop_len)?;
        Ok(Windower {
            window_len,
            hop_len,
            buf: VecDeque::with_capacity(window_len),
            buf_start: 0,
            total: 0,
            next_start: 0,
            next_index: 0,
            last_end: 0,
            peak_buffered: 0,
        })
    }

    /// Samples per window.
    pub fn window_len(&self) -> usize {
        self.window_len
    }

    /// Samples between window starts.
    pub fn hop_len(&self) -> usize {
        self.hop_len
    }

    /// Samples fed so far.
    pub fn samples_seen(&self) -> u64 {
        self.total
    }

    /// The most samples held at once so far (≤ `window_len` + the largest chunk fed).
    pub fn peak_buffered(&self) -> usize {
        self.peak_buffered
    }

    /// Adds a chunk; returns the windows it completed (often none, sometimes several).
    pub fn push(&mut self, chunk: &[f32]) -> Vec<Window> {
        self.buf.extend(chunk);
        self.total += chunk.len() as u64;
        self.peak_buffered = self.peak_buffered.max(self.buf.len());

        let window = self.window_len as u64;
        let mut out = Vec::new();
        while self.next_start + window <= self.total {
            out.push(self.emit(self.next_start, self.window_len, false));
            self.next_start += self.hop_len as u64;
        }
        // Everything before the last `window_len` samples is dead: later hop windows start at
        // `next_start > total - window` and the end-aligned one at `total' - window ≥ that`.
        let keep_from = self.total.saturating_sub(window).min(self.next_start);
        let dead = (keep_from - self.buf_start) as usize;
        self.buf.drain(..dead);
        self.buf_start = keep_from;
        out
    }

    /// Ends the stream and returns the final window, if the policy calls for one: the single short
    /// window when the whole stream is `≤ window_len`, or the end-aligned window when the last hop
    /// window ended before the stream did. The windower is then reset for a new stream.
    pub fn finish(&mut self) -> Option<Window> {
        let window = self.window_len as u64;
        let last = if self.total == 0 || self.last_end == self.total {
            None
        } else if self.total <= window {
            Some(self.emit(0, self.total as usize, true))
        } else {
            Some(self.emit(self.total - window, self.window_len, true))
        };
        let peak = self.peak_buffered;
        *self = Windower::new(self.window_len, self.hop_len).expect("lengths were checked in new");
        self.peak_buffered = peak;
        last
    }

    /// The window at `start`; `last`: the stream ends with it (nothing held is needed after).
    fn emit(&mut self, start: u64, len: usize, last: bool) -> Window {
        let from = (start - self.buf_start) as usize;
        let samples: Vec<f32> = if last && from == 0 && len == self.buf.len() {
            // The stream's last window is everything held (always so for a file of one
            // window): hand the buffer over instead of copying up to 1.9 MB.
            Vec::from(std::mem::take(&mut self.buf))
        } else {
            // The deque's two halves, copied as slices.
            let (a, b) = self.buf.as_slices();
            let end = from + len;
            let mut samples = Vec::with_capacity(len);
            if from < a.len() {
                samples.extend_from_slice(&a[from..end.min(a.len())]);
            }
            if end > a.len() {
                samples.extend_from_slice(&b[from.saturating_sub(a.len())..end - a.len()]);
            }
            samples
        };
        let w = Window {
            index: self.next_index,
            start_sample: start,
            samples,
        };
        self.next_index += 1;
        self.last_end = start + len as u64;
        w
    }

    /// Cuts a whole in-memory signal (same result as pushing it in any chunking, then finishing).
    pub fn split(signal: &[f32], window_len: usize, hop_len: usize) -> Result<Vec<Window>> {
        check_lengths(window_len, hop_len)?;
        let starts = window_starts(signal.len() as u64, window_len as u64, hop_len as u64);
        Ok(starts
            .into_iter()
            .enumerate()
            .map(|(index, start)| {
                let s = start as usize;
                let e = (s + window_len).min(signal.len());
                Window {
                    index,
                    start_sample: start,
                    samples: signal[s..e].to_vec(),
                }
            })
            .collect())
    }
}

/// The windows of a file, decoded and resampled to 48 kHz on the fly.
///
/// An iterator of `Result<Window, AudioError>`; a decoding error mid-file is yielded after the
/// windows completed before it, and ends the iteration.
#[derive(Debug)]
pub struct FileWindows {
    stream: MonoStream,
    windower: Windower,
    ready: std::collections::VecDeque<Window>,
    done: bool,
}

impl FileWindows {
    /// What the file is (native rate, channels, codec, ...).
    pub fn info(&self) -> &AudioInfo {
        self.stream.info()
    }

    /// Seconds of audio decoded so far; once the iterator has ended, the file's decoded length
    /// (which is what its windows cover, and may differ from a header's claim).
    pub fn decoded_seconds(&self) -> f64 {
        self.stream.decoded_seconds()
    }

    /// The most 48 kHz samples the windower has held at once so far.
    pub fn peak_buffered(&self) -> usize {
        self.windower.peak_buffered()
    }
}

impl Iterator for FileWindows {
    type Item = Result<Window>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(w) = self.ready.pop_front() {
                return Some(Ok(w));
            }
            if self.done {
                return None;
            }
            match self.stream.next_chunk() {
                Ok(Some(chunk)) => self.ready.extend(self.windower.push(&chunk)),
                Ok(None) => {
                    self.done = true;
                    self.ready.extend(self.windower.finish());
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Opens `path` and returns its 48 kHz windows as a stream (see the module docs for the policy).
pub fn windows_from_file(
    path: impl AsRef<Path>,
    window_len: usize,
    hop_len: usize,
) -> Result<FileWindows> {
    let windower = Windower::new(window_len, hop_len)?;
    let stream = MonoStream::open(path)?;
    Ok(FileWindows {
        stream,
        windower,
        ready: Default::default(),
        done: false,
    })
}
