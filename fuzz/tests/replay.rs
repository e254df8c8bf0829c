//! Replays the committed corpora through the fuzz targets as ordinary tests.
//!
//! Every file under `corpus/<target>/` (the minimised AFL queue plus saved `crash-*` / `hang-*`
//! regressions) goes through the target function. Each input runs in a child process (this
//! test binary again, test `replay_child`), so that an input that aborts (a refused huge
//! allocation, see `traum_fuzz::CappedAlloc`) or hangs fails as itself, with its message,
//! instead of taking the whole test binary down or stalling it. A missing or empty corpus
//! directory fails too, so a corpus cannot silently vanish.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// As under afl-fuzz (`-m 1024`): an input that makes the code allocate more than 1 GiB at once
// aborts (see `traum_fuzz::CappedAlloc`).
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

/// An input still running after this is killed and fails as a hang (afl-fuzz runs with
/// `-t 5000` on an optimised build; this is the test profile, so allow more).
const MAX_INPUT_TIME: Duration = Duration::from_secs(30);

const CHILD_TARGET: &str = "TRAUM_FUZZ_REPLAY_TARGET";
const CHILD_FILE: &str = "TRAUM_FUZZ_REPLAY_FILE";

fn target_fn(target: &str) -> fn(&[u8]) {
    traum_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no fuzz target named `{target}`"))
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "corpus directory {} for target `{target}` cannot be read ({e}); it must hold the \
             seed inputs (see fuzz/README.md)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} for target `{target}` is empty: regenerate it with \
         `tools/fuzz.sh run {target}` (see fuzz/README.md)",
        dir.display()
    );
    files
}

/// Runs one input in a child process; `Err` describes how it failed.
fn replay_in_child(target: &str, file: &Path) -> Result<(), String> {
    let out = tempfile::tempfile().map_err(|e| format!("cannot create a temp file: {e}"))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot clone the temp file: {e}"))?;
    let mut log = out
        .try_clone()
        .map_err(|e| format!("cannot clone the temp file: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("no test executable path: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--exact", "replay_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_TARGET, target)
        .env(CHILD_FILE, file)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start the child process: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > MAX_INPUT_TIME => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot wait for the child process: {e}")),
        }
    };
    let mut text = String::new();
    use std::io::{Read, Seek};
    let _ = log.seek(std::io::SeekFrom::Start(0));
    let _ = log.read_to_string(&mut text);
    // The panic message, or the allocator's note: the lines that say what went wrong (libtest
    // prints "test replay_child ... " with no newline before them).
    let text = text.replace("test replay_child ... ", "\n");
    let detail: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("running ")
                && !l.starts_with("test ")
                && !l.starts_with("successes:")
                && !l.starts_with("failures:")
                && !l.starts_with("note: run with")
                && !l.starts_with("error: test failed")
                && !l.trim_start().starts_with("replay_child")
                && !l.contains("test result:")
                && !l.starts_with("---- ")
        })
        .take(6)
        .collect();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{s}\n    {}", detail.join("\n    "))),
        None => Err(format!(
            "still running after {} s: a hang (killed)",
            MAX_INPUT_TIME.as_secs()
        )),
    }
}

fn replay(target: &str) {
    target_fn(target);
    let files = corpus_files(target);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            replay_in_child(target, file)
                .err()
                .map(|why| format!("{}: {why}", file.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs of target `{target}` failed (rerun one with \
         `tools/fuzz.sh replay {target} FILE`):\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The child side of [`replay_in_child`]; does nothing in a normal test run.
#[test]
fn replay_child() {
    let (Ok(target), Some(file)) = (std::env::var(CHILD_TARGET), std::env::var_os(CHILD_FILE))
    else {
        return;
    };
    let data = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("cannot read corpus file {}: {e}", file.to_string_lossy()));
    traum_fuzz::set_current_input(&file.to_string_lossy());
    target_fn(&target)(&data);
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = traum_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["decode", "windows", "mel", "multipart", "graphql"],
        "add a replay test for each target"
    );
}

#[test]
fn replay_decode() {
    replay("decode");
}

#[test]
fn replay_windows() {
    replay("windows");
}

#[test]
fn replay_mel() {
    replay("mel");
}

#[test]
fn replay_multipart() {
    replay("multipart");
}

#[test]
fn replay_graphql() {
    replay("graphql");
}
