//! Fuzz targets: each takes arbitrary bytes and must return without panicking, hanging or
//! holding unbounded memory. The AFL binaries (`src/bin`, feature `afl`) call these; the
//! replay tests (`tests/replay.rs`) run every committed corpus input through them.
//!
//! A target panics (which AFL records as a crash) when the code under test panics or breaks one
//! of the invariants its documentation promises; the `assert!`s below name the promise they
//! check. Errors returned by the code under test are fine: arbitrary bytes are mostly garbage.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use clap_model::{FeatureExtractorConfig, MelFrontEnd};
use traum_audio::{
    sniff_container, window_starts, windows_from_file, AudioDecoder, Container, ErrorKind, Sniffed,
    StreamResampler, Windower, MAX_CHANNELS, MAX_SAMPLE_MAGNITUDE, MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE, MODEL_SAMPLE_RATE, SNIFF_LEN, WINDOW_SAMPLES,
};

/// Every target by name, as the corpus directories (`corpus/<name>/`) and the AFL binaries
/// (`fuzz_<name>`) call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode", decode),
    ("windows", windows),
    ("mel", mel),
    #[cfg(feature = "server")]
    ("multipart", server::multipart),
    #[cfg(feature = "server")]
    ("graphql", server::graphql),
];

#[cfg(feature = "server")]
pub mod server;

/// A fuzz target: arbitrary bytes in; panics on a finding.
pub type Target = fn(&[u8]);

/// The most audio the `decode` target decodes from one input. Compressed formats expand (a few
/// bytes of FLAC can hold seconds of silence), so the input size does not bound the work.
pub const MAX_DECODED_SECONDS: f64 = 600.0;

/// Largest chunk [`AudioDecoder::next_chunk`] may return, in (mono) samples.
///
/// The decoder promises only "whatever one codec packet holds" (filler for damaged stretches is
/// paid out in pieces of at most 16 384 frames), so the bound is the largest packet any enabled
/// codec can describe: a FLAC block (16-bit block size field). MP3 packets hold 1152 frames,
/// AAC 1024, Vorbis at most 4096, WAV (symphonia) 1152.
pub const MAX_CHUNK_SAMPLES: usize = u16::MAX as usize;

/// `windows` target: the most input samples fed to the resampler (about 11 s at 48 kHz), and
/// the most 48 kHz output samples it may be asked to produce (low input rates expand).
pub const MAX_STREAM_SAMPLES: usize = 1 << 19;
/// `windows` target: the most resampler output kept for checking the windower.
pub const MAX_STREAM_OUTPUT: u64 = 1 << 20;
/// `windows` target: longest window tried (covers [`WINDOW_SAMPLES`]).
pub const MAX_FUZZ_WINDOW: usize = 1 << 19;
/// `windows` target: `hop ≥ window / HOP_DIVISOR`, which bounds the windower's copying to
/// `HOP_DIVISOR ×` the stream length (`hop = 1` with a long window is quadratic by design).
pub const HOP_DIVISOR: usize = 64;

/// Largest single allocation [`CappedAlloc`] grants: 1 GiB, AFL's `-m 1024` for the whole
/// process, so that an input asking for more fails the same way in the replay tests (no memory
/// limit there) as under afl-fuzz.
pub const MAX_ALLOCATION: usize = 1 << 30;

/// The system allocator, refusing any single allocation over [`MAX_ALLOCATION`] bytes.
///
/// A refused allocation ends the process through `handle_alloc_error` ("memory allocation of
/// N bytes failed", SIGABRT): allocation failure cannot be caught, which is the bug such an
/// input shows (a header-declared size allocated before it is checked). The AFL binaries and
/// the replay tests install it with `#[global_allocator]`.
pub struct CappedAlloc;

/// What is being run, for the message when [`CappedAlloc`] refuses an allocation (the abort
/// that follows leaves no other trace of which input it was).
static CURRENT_INPUT: Mutex<String> = Mutex::new(String::new());

/// Names the input about to run (empty: none); the replay tests set it per corpus file.
pub fn set_current_input(name: &str) {
    let mut current = CURRENT_INPUT.lock().unwrap_or_else(|e| e.into_inner());
    current.clear();
    current.push_str(name);
}

/// Says on stderr that an allocation was refused and for which input. Must not allocate.
#[cold]
fn refuse(size: usize) -> *mut u8 {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "traum-fuzz: refusing to allocate {size} bytes (over MAX_ALLOCATION = {MAX_ALLOCATION})"
    );
    if let Ok(name) = CURRENT_INPUT.try_lock() {
        if !name.is_empty() {
            let _ = write!(err, " while running {}", name.as_str());
        }
    }
    let _ = writeln!(err);
    std::ptr::null_mut()
}

// SAFETY: forwards to `System` unchanged, except that it may return null, as an allocator may.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return refuse(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return refuse(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return refuse(new_size);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Reads little-endian fields off the front of the input; missing bytes read as zero.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let head = self.take(4);
        b[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(b)
    }

    /// The rest as `f32` (little-endian); a trailing partial sample is dropped.
    fn f32s(self) -> Vec<f32> {
        self.0
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

fn is_sane_sample(s: f32) -> bool {
    s.is_finite() && s.abs() <= MAX_SAMPLE_MAGNITUDE
}

// ---------------------------------------------------------------------------------------------
// decode
// ---------------------------------------------------------------------------------------------

/// Sniffs and decodes `data` as a file, through [`AudioDecoder`] and through
/// [`windows_from_file`], checking the decoder's promises on every chunk.
pub fn decode(data: &[u8]) {
    let head = &data[..data.len().min(SNIFF_LEN)];
    let sniffed = sniff_container(head);
    // The extension is only a hint to symphonia; use the one an upload would get.
    let ext = match &sniffed {
        Sniffed::Audio(c) => c.extension(),
        _ => "bin",
    };
    let mut file = tempfile::Builder::new()
        .prefix("traum-fuzz-")
        .suffix(&format!(".{ext}"))
        .tempfile()
        .expect("harness: cannot create a temporary file");
    file.write_all(data)
        .and_then(|()| file.flush())
        .expect("harness: cannot write the temporary file");
    let path = file.path();

    let opened = AudioDecoder::open(path);
    // sniff_container: "an upload accepted here is one the decoder tries (and one refused
    // here, it would refuse)".
    if !matches!(sniffed, Sniffed::Audio(_)) {
        match &opened {
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::UnsupportedFormat | ErrorKind::Empty),
                "sniff_container refused the input ({sniffed:?}) but the decoder failed with \
                 another kind of error: {e}"
            ),
            Ok(dec) => panic!(
                "sniff_container refused the input ({sniffed:?}) but the decoder opened it: {:?}",
                dec.info()
            ),
        }
    }
    let Ok(mut dec) = opened else {
        return;
    };
    let info = dec.info().clone();
    if let Sniffed::Audio(c) = sniffed {
        // Behind an ID3v2 tag the two may legitimately look at different bytes.
        if !data.starts_with(b"ID3") {
            assert_eq!(
                Container::from_name(&info.container),
                Some(c),
                "sniff_container and the decoder disagree on the container"
            );
        }
    }
    assert!(
        (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&info.sample_rate),
        "info().sample_rate out of range: {info:?}"
    );
    assert!(
        (1..=MAX_CHANNELS).contains(&info.channels),
        "info().channels out of range: {info:?}"
    );

    let mut seconds = 0.0;
    while seconds < MAX_DECODED_SECONDS {
        let chunk = match dec.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => break,
        };
        let rate = dec.sample_rate();
        assert!(
            (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate),
            "sample_rate() out of range: {rate}"
        );
        assert!(!chunk.is_empty(), "next_chunk returned an empty chunk");
        assert!(
            chunk.len() <= MAX_CHUNK_SAMPLES,
            "next_chunk returned {} samples in one chunk (more than any packet holds)",
            chunk.len()
        );
        if let Some((i, s)) = chunk.iter().enumerate().find(|(_, s)| !is_sane_sample(**s)) {
            panic!(
                "next_chunk returned sample {i} = {s} (must be finite and within \
                 ±{MAX_SAMPLE_MAGNITUDE})"
            );
        }
        seconds += chunk.len() as f64 / f64::from(rate);
        assert!(
            dec.filled_seconds() <= dec.decoded_seconds() + 1e-6,
            "filled_seconds {} > decoded_seconds {}",
            dec.filled_seconds(),
            dec.decoded_seconds()
        );
    }
    drop(dec);

    // The same file through decode → resample → window.
    let Ok(mut windows) = windows_from_file(path, WINDOW_SAMPLES, WINDOW_SAMPLES) else {
        return;
    };
    let max_samples = (MAX_DECODED_SECONDS * f64::from(MODEL_SAMPLE_RATE)) as u64;
    let mut last_start = None;
    for (next_index, w) in windows.by_ref().enumerate() {
        let Ok(w) = w else { break };
        assert_eq!(w.index, next_index, "window indices must count from 0");
        assert!(
            last_start.is_none_or(|s| w.start_sample > s),
            "window start {} does not follow {last_start:?}",
            w.start_sample
        );
        last_start = Some(w.start_sample);
        assert!(!w.samples.is_empty(), "empty window");
        assert!(
            w.samples.len() == WINDOW_SAMPLES || (w.index == 0 && w.start_sample == 0),
            "window {} holds {} samples; only a short stream's single window may be short",
            w.index,
            w.samples.len()
        );
        if let Some((i, s)) = w.samples.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            panic!(
                "window {} sample {i} = {s}: the decoder hands out finite samples, so the \
                 resampled windows must be finite",
                w.index
            );
        }
        if w.start_sample >= max_samples {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// windows
// ---------------------------------------------------------------------------------------------

/// Chunk size for one byte of the chunk pattern: 0 (an empty push), 1, …, 255² = 65 025.
fn chunk_len(b: u8) -> usize {
    usize::from(b) * usize::from(b)
}

/// Most chunks one stream is cut into; the rest goes in one piece.
const MAX_CHUNKS: usize = 1 << 14;

/// Cuts `total` samples into pieces of the `pattern` sizes (cycled), at least one round of the
/// pattern (so empty pieces are tried even for an empty stream) and at most [`MAX_CHUNKS`]
/// pieces, the last taking whatever is left. The sizes sum to `total`.
fn chunk_plan(pattern: &[usize], total: usize) -> Vec<usize> {
    let mut plan = Vec::new();
    let mut left = total;
    for &n in pattern.iter().cycle().take(MAX_CHUNKS) {
        if left == 0 && plan.len() >= pattern.len() {
            break;
        }
        let n = n.min(left);
        plan.push(n);
        left -= n;
    }
    if left > 0 {
        plan.push(left);
    }
    plan
}

/// Rates files come in (the resampler has exact polyphase designs for them). Odd rates need a
/// 1024-phase table and cost ~0.1 s per input to set up, so the `windows` target spends half its
/// rate space on these to keep the fuzzer fast.
pub const COMMON_RATES: [u32; 14] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000, 176_400,
    192_000, 384_000,
];

/// Resamples and windows an arbitrary sample stream.
///
/// Input layout: `u32` sample rate (top bit clear: one of [`COMMON_RATES`] by the rest modulo
/// their count; set: the low 31 bits mapped into `1..=MAX_SAMPLE_RATE`, odd rates included;
/// rates below `MIN_SAMPLE_RATE` must be refused),
/// `u32` window length
/// (mapped into `1..=MAX_FUZZ_WINDOW`), `u8` hop fraction, 4 bytes of chunk pattern (see
/// [`chunk_len`]), then `f32` samples (NaN, ±∞ and denormals included).
pub fn windows(data: &[u8]) {
    let mut b = Bytes(data);
    let rate = match b.u32() {
        v if v & 0x8000_0000 == 0 => COMMON_RATES[v as usize % COMMON_RATES.len()],
        v => {
            // Rates below the decoder's minimum are refused (they would resample a small
            // input into days of audio): check that, then fuzz the accepted range.
            let r = 1 + (v & 0x7fff_ffff) % MAX_SAMPLE_RATE;
            if r < MIN_SAMPLE_RATE {
                assert!(StreamResampler::new(r).is_err(), "{r} Hz must be refused");
            }
            r.max(MIN_SAMPLE_RATE)
        }
    };
    let window = 1 + b.u32() as usize % MAX_FUZZ_WINDOW;
    let hop = (window * (usize::from(b.u8()) + 1))
        .div_ceil(256)
        .max(window.div_ceil(HOP_DIVISOR));
    let pattern: Vec<usize> = (0..4).map(|_| chunk_len(b.u8())).collect();
    let mut samples = b.f32s();
    // Cap the input so that neither it nor the 48 kHz output exceeds the budget.
    let max_in = (MAX_STREAM_OUTPUT * u64::from(rate) / u64::from(MODEL_SAMPLE_RATE)) as usize;
    samples.truncate(MAX_STREAM_SAMPLES.min(max_in));

    // --- Resampler -----------------------------------------------------------------------
    let in_range = (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate);
    let mut rs = match StreamResampler::new(rate) {
        Ok(rs) => {
            assert!(
                in_range,
                "StreamResampler::new accepted {rate} Hz (out of range)"
            );
            rs
        }
        Err(e) => {
            assert!(
                !in_range,
                "StreamResampler::new({rate}) is in range but failed: {e}"
            );
            return;
        }
    };
    let mut out: Vec<f32> = Vec::new();
    let mut chunks: Vec<usize> = Vec::new(); // resampler output chunk lengths, for the windower
    let mut fed = 0;
    for n in chunk_plan(&pattern, samples.len()) {
        let produced = rs
            .process(&samples[fed..fed + n])
            .unwrap_or_else(|e| panic!("StreamResampler::process failed: {e}"));
        fed += n;
        chunks.push(produced.len());
        out.extend_from_slice(&produced);
        assert_eq!(rs.samples_in(), fed as u64, "samples_in() miscounts");
        assert_eq!(
            rs.samples_out(),
            out.len() as u64,
            "samples_out() miscounts"
        );
    }
    let want = rs.expected_output_len(rs.samples_in());
    let tail = rs
        .finish()
        .unwrap_or_else(|e| panic!("StreamResampler::finish failed: {e}"));
    chunks.push(tail.len());
    out.extend_from_slice(&tail);
    assert_eq!(
        out.len() as u64,
        want,
        "finish: total output must be expected_output_len(samples_in()) \
         ({} in at {rate} Hz)",
        samples.len()
    );
    if rs.is_passthrough() {
        assert_eq!(rate, MODEL_SAMPLE_RATE);
        assert!(
            out.iter()
                .map(|s| s.to_bits())
                .eq(samples.iter().map(|s| s.to_bits())),
            "48 kHz must pass through untouched"
        );
    }
    if samples.iter().all(|&s| is_sane_sample(s)) {
        if let Some((i, s)) = out.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            panic!("resampler output {i} = {s} from finite, bounded input at {rate} Hz");
        }
    }
    // "The resampler is then reset and can take a new stream": whatever the first stream held
    // (NaN, ∞), a clean second one must come out clean and of the right length.
    let probe_len = (rate as usize / 10).clamp(1, 4096);
    let probe: Vec<f32> = (0..probe_len)
        .map(|i| ((i % 64) as f32 / 64.0) - 0.5)
        .collect();
    let mut again = rs
        .process(&probe)
        .unwrap_or_else(|e| panic!("StreamResampler::process after finish failed: {e}"));
    again.extend(
        rs.finish()
            .unwrap_or_else(|e| panic!("StreamResampler::finish after finish failed: {e}")),
    );
    assert_eq!(
        again.len() as u64,
        rs.expected_output_len(probe_len as u64),
        "second stream after finish has the wrong length"
    );
    if let Some((i, s)) = again.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        panic!(
            "second stream after finish: output {i} = {s} (state of the first stream leaked \
             through finish/reset)"
        );
    }

    // --- Windower ------------------------------------------------------------------------
    check_windower(&out, &chunks, window, hop);
    // The same stream in the input's own chunking (pattern sizes, empty pushes included).
    let rechunked = chunk_plan(&pattern, out.len());
    check_windower(&out, &rechunked, window, hop);
}

/// Pushes `stream` into a [`Windower`] in pieces of `chunks` (the rest in one piece), then
/// checks every window against the documented policy ([`window_starts`]) and the signal.
fn check_windower(stream: &[f32], chunks: &[usize], window: usize, hop: usize) {
    let mut w = Windower::new(window, hop)
        .unwrap_or_else(|e| panic!("Windower::new({window}, {hop}) is valid but failed: {e}"));
    let starts = window_starts(stream.len() as u64, window as u64, hop as u64);
    let mut seen = 0usize;
    let mut pos = 0usize;
    let mut largest = 0usize;
    let mut check = |win: traum_audio::Window, from_finish: bool| {
        assert!(
            seen < starts.len(),
            "windower emitted more windows than window_starts({}, {window}, {hop}) lists",
            stream.len()
        );
        assert_eq!(win.index, seen, "window indices must count from 0");
        assert_eq!(
            win.start_sample, starts[seen],
            "window {seen} starts at {} but the policy says {}",
            win.start_sample, starts[seen]
        );
        assert!(win.samples.len() <= window, "window longer than window_len");
        if !from_finish {
            assert_eq!(win.samples.len(), window, "push emitted a short window");
        }
        let s = win.start_sample as usize;
        let expect_len = window.min(stream.len() - s);
        assert_eq!(
            win.samples.len(),
            expect_len,
            "window {seen} has the wrong length"
        );
        assert!(
            win.samples
                .iter()
                .map(|x| x.to_bits())
                .eq(stream[s..s + expect_len].iter().map(|x| x.to_bits())),
            "window {seen} does not hold stream samples [{s}, {})",
            s + expect_len
        );
        seen += 1;
    };
    for &n in chunks {
        let n = n.min(stream.len() - pos);
        largest = largest.max(n);
        for win in w.push(&stream[pos..pos + n]) {
            check(win, false);
        }
        pos += n;
    }
    if pos < stream.len() {
        largest = largest.max(stream.len() - pos);
        for win in w.push(&stream[pos..]) {
            check(win, false);
        }
    }
    assert_eq!(
        w.samples_seen(),
        stream.len() as u64,
        "samples_seen() miscounts"
    );
    if let Some(win) = w.finish() {
        check(win, true);
    }
    assert_eq!(
        seen,
        starts.len(),
        "windower emitted {seen} windows; window_starts lists {}",
        starts.len()
    );
    assert!(
        w.peak_buffered() <= window + largest,
        "peak_buffered {} > window_len {window} + largest chunk {largest}",
        w.peak_buffered()
    );
    // `split` promises the same windows as pushing in any chunking; only when cheap to hold.
    if (stream.len() / hop + 1) * window <= 1 << 22 {
        let split = Windower::split(stream, window, hop)
            .unwrap_or_else(|e| panic!("Windower::split({window}, {hop}) failed: {e}"));
        assert_eq!(
            split.len(),
            starts.len(),
            "split and window_starts disagree"
        );
        for (win, &start) in split.iter().zip(&starts) {
            let s = start as usize;
            assert_eq!(win.start_sample, start, "split window start");
            let e = (s + window).min(stream.len());
            assert!(
                win.samples
                    .iter()
                    .map(|x| x.to_bits())
                    .eq(stream[s..e].iter().map(|x| x.to_bits())),
                "split window at {s} does not hold the stream's samples"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mel
// ---------------------------------------------------------------------------------------------

/// The feature-extractor config the `mel` target uses (the tiny test checkpoint's, which is
/// the LAION unfused checkpoints' front end: 64 mels, 1024-point FFT, hop 480, 10 s).
pub const MEL_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/clap/models/tiny-a/preprocessor_config.json"
);

/// Builds the `mel` target's front end now. The AFL binary calls this before the fuzz loop, so
/// the one-time setup is not part of (and does not destabilise) every execution's coverage.
pub fn warm_up_mel() {
    mel_front_end();
}

fn mel_front_end() -> &'static MelFrontEnd {
    static FRONT_END: OnceLock<MelFrontEnd> = OnceLock::new();
    FRONT_END.get_or_init(|| {
        let config = FeatureExtractorConfig::from_file(MEL_CONFIG)
            .unwrap_or_else(|e| panic!("harness: cannot load {MEL_CONFIG}: {e}"));
        MelFrontEnd::new(config).unwrap_or_else(|e| panic!("harness: bad {MEL_CONFIG}: {e}"))
    })
}

/// Runs the CLAP mel front end on arbitrary samples.
///
/// Input layout: `u32` length (mapped into `0..=max_samples + 1024`), then `f32` samples,
/// repeated to that length (zeros if there are none).
pub fn mel(data: &[u8]) {
    let fe = mel_front_end();
    let mut b = Bytes(data);
    let len = b.u32() as usize % (fe.max_samples() + 1025);
    let pattern = b.f32s();
    let samples: Vec<f32> = if pattern.is_empty() {
        vec![0.0; len]
    } else {
        pattern.iter().copied().cycle().take(len).collect()
    };
    let first_nonfinite = samples.iter().position(|s| !s.is_finite());
    match fe.features(&samples) {
        Ok(feats) => {
            assert!(
                !samples.is_empty() && samples.len() <= fe.max_samples(),
                "features accepted {} samples",
                samples.len()
            );
            assert_eq!(
                first_nonfinite, None,
                "features accepted a non-finite sample"
            );
            assert_eq!(
                feats.len(),
                fe.n_frames() * fe.n_mels(),
                "wrong feature count"
            );
            if let Some((i, v)) = feats.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
                panic!(
                    "features: output {i} (frame {}, mel {}) = {v} from finite input \
                     ({} samples, peak |x| = {peak:e})",
                    i / fe.n_mels(),
                    i % fe.n_mels(),
                    samples.len()
                );
            }
        }
        Err(e) => {
            use clap_model::features::FeaturesError as E;
            match e {
                E::Empty => assert!(samples.is_empty(), "Empty for {} samples", samples.len()),
                E::TooLong { len, max } => {
                    assert!(len == samples.len() && len > max && max == fe.max_samples())
                }
                E::NonFinite { index, .. } => assert_eq!(
                    Some(index),
                    first_nonfinite,
                    "NonFinite must name the first non-finite sample"
                ),
                E::TooLoud { index, value } => assert!(
                    first_nonfinite.is_none()
                        && value.abs() > clap_model::features::MAX_SAMPLE_MAGNITUDE
                        && samples[index] == value,
                    "TooLoud must name a sample beyond the bound"
                ),
                other => panic!("features failed unexpectedly: {other}"),
            }
        }
    }
}
