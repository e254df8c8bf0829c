//! Traum Engine workspace root.
//!
//! The product lives in the member crates: `clap-model` (CLAP on candle),
//! `traum-audio` (decode, resample, window), `traum-server` (the `traum`
//! binary). This package only hosts the end-to-end tests in `tests/`.
