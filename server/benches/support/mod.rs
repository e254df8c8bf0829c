//! What the server's benchmarks share.

use std::path::PathBuf;

use clap_model::{DeviceSpec, EmbedderOptions, Precision};

/// How to load one of the tiny fixture models (`tiny-a`, `tiny-b`) on the CPU.
pub fn tiny_options(name: &str) -> EmbedderOptions {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/clap/models")
        .join(name);
    EmbedderOptions {
        model: dir.display().to_string(),
        device: DeviceSpec::Cpu,
        precision: Precision::F32,
        max_batch: 8,
    }
}

/// One of the tiny fixture models, loaded.
pub fn tiny(name: &str) -> clap_model::ClapEmbedder {
    clap_model::ClapEmbedder::load(&tiny_options(name)).expect("tiny model")
}

/// VmRSS and VmHWM of this process, MiB.
pub fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}
