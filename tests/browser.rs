//! The web client in a real browser: builds `client/` (wasm), starts the
//! real `traum serve` with the tiny model, and drives headless Chromium with
//! playwright-core (`tests/browser/e2e.mjs`): upload with live progress,
//! search, playback, delete, server restart and reconnect, themes, phone
//! width. Screenshots land in `target/e2e-screenshots/`.
//!
//! Needs: node + npm, Chromium (`/usr/bin/chromium`, or `CHROMIUM`), the
//! wasm32 target and wasm-bindgen-cli (`.ci/run` installs them all).
//! `TRAUM_SKIP_BROWSER=1` skips it, saying so.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{noise, repo_root, tiny_model, tone, traum, wav_i16};

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "no Chromium at {} (apt-get install chromium, or set CHROMIUM; \
         TRAUM_SKIP_BROWSER=1 skips this test)",
        path.display()
    );
    path
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn web_client_end_to_end() {
    if std::env::var("TRAUM_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("TRAUM_SKIP_BROWSER=1: browser test skipped");
        return;
    }
    let root = repo_root();
    let chromium = chromium();

    // The client as users get it: release wasm, built by the project's script.
    let build = run(
        Command::new("bash").arg(root.join("client/build.sh")),
        "client/build.sh",
    );
    if let Some(line) = build.lines().find(|l| l.starts_with("client built")) {
        eprintln!("{line}");
    }
    let dist = root.join("client/dist");

    let browser_dir = root.join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&browser_dir),
            "npm ci (tests/browser)",
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let audio = tmp.path().join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    // Longer than one window, so progress has steps to show.
    let files = [
        write(
            &audio,
            "sine 440.wav",
            wav_i16(48_000, &tone(440.0, 25.0, 0.5)),
        ),
        write(
            &audio,
            "pink-ish noise.wav",
            wav_i16(44_100, &noise(25.0, 0.3, 7)),
        ),
        write(
            &audio,
            "low hum.wav",
            wav_i16(22_050, &tone(110.0, 14.0, 0.4)),
        ),
    ];
    let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    // A folder the page adds as a source (read in place, not uploaded).
    let folder = tmp.path().join("pack");
    std::fs::create_dir_all(folder.join("drums")).unwrap();
    write(
        &folder.join("drums"),
        "kick.wav",
        wav_i16(48_000, &tone(60.0, 1.0, 0.6)),
    );
    write(&folder, "pad.wav", wav_i16(48_000, &noise(3.0, 0.2, 11)));
    let folder = std::fs::canonicalize(&folder).unwrap();
    let shots = root.join("target/e2e-screenshots");

    let out = Command::new("node")
        .arg(browser_dir.join("e2e.mjs"))
        .env("TRAUM_BIN", traum())
        .env("TRAUM_MODEL", tiny_model())
        .env("TRAUM_CLIENT_DIR", &dist)
        .env("TRAUM_DATA_DIR", tmp.path().join("data"))
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT_DIR", &shots)
        .env("AUDIO_FILES", list.join("\n"))
        .env("SOURCE_DIR", &folder)
        .env_remove("DATABASE_URL")
        .output()
        .expect("node (install Node.js 18+)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "browser test failed:\n{text}");
    for name in [
        "library",
        "search",
        "file",
        "analytics",
        "system",
        "sources",
        "library-folder",
        "offline",
        "library-light",
    ] {
        let shot = shots.join(format!("{name}.png"));
        assert!(shot.is_file(), "missing screenshot {}", shot.display());
    }
}
