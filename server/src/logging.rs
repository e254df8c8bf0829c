//! Logging via `tracing`, filtered by `RUST_LOG` (default `info`), to stderr
//! so that stdout stays machine-readable.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `json` switches to one JSON object per line.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
