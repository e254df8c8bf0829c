//! `traum ingest DIR…`: adds folders to the library and scans them, in this process (the
//! server must not be running on the same data directory: the index is locked by whoever
//! opened it; a running server takes folders with `--folder` or `addFolder`).
//!
//! By default a folder becomes a source read in place (see [`crate::sources`]): nothing is
//! copied, and a later run (or the server) finds what changed. With `--copy`, files are
//! found recursively by extension, hashed, and skipped when the library already holds
//! that content; new ones are copied into the store. Either way they are processed by the
//! same pipeline the server runs, with a progress bar.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::cli::IngestArgs;
use crate::error::rejection_message;
use crate::events::{ApiFileStatus, FileEventKind};
use crate::serve::open_library;
use crate::storage::{self, has_audio_extension};

/// Audio files under `paths` (files given directly are taken whatever their
/// extension), sorted, without duplicates.
pub fn find_audio_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if (kind.is_file() || kind.is_symlink()) && has_audio_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub added: usize,
    pub skipped: usize,
    pub indexed: usize,
    pub failed: Vec<(PathBuf, String)>,
}

pub async fn run(args: IngestArgs) -> Result<ExitCode> {
    if args.copy {
        run_copy(args).await
    } else {
        run_in_place(args).await
    }
}

/// Adds each folder as a source, scans it, and waits until what the scans queued is
/// processed.
async fn run_in_place(args: IngestArgs) -> Result<ExitCode> {
    for path in &args.paths {
        if !path.is_dir() {
            anyhow::bail!(
                "{}: not a folder; `traum ingest` reads folders in place (use --copy to import single files)",
                path.display()
            );
        }
    }
    let library = open_library(&args.model, &args.library).await?;
    let workers = crate::pipeline::start_workers(&library);
    let mut events = library.events.subscribe();
    let started = Instant::now();
    let mut sources = Vec::new();
    let mut failed_scans = 0;
    for path in &args.paths {
        let canonical = crate::sources::canonical_folder(path)?;
        let (source, _) =
            entity::store::sources::add_folder(&library.db, &canonical.to_string_lossy()).await?;
        eprintln!("scanning {}", source.path);
        match crate::sources::scan_source(&library, source.id).await {
            Ok(counts) => eprintln!(
                "  {} audio files: {} new, {} changed, {} moved, {} gone, {} could not be read",
                counts.found, counts.new, counts.changed, counts.moved, counts.gone, counts.failed
            ),
            Err(e) => {
                failed_scans += 1;
                eprintln!("  scan failed: {e}");
            }
        }
        let after = library.source(source.id).await?;
        if let Some(why) = &after.last_error {
            eprintln!("  {why}");
        }
        sources.push(source.id);
    }
    // What the scans queued (or earlier runs left unfinished), by name.
    let mut pending: HashSet<Uuid> = HashSet::new();
    let mut names: std::collections::HashMap<Uuid, PathBuf> = Default::default();
    for &source in &sources {
        for location in entity::store::sources::locations_in_source(&library.db, source).await? {
            names.insert(location.file_id, PathBuf::from(&location.path));
        }
    }
    // The workers run during the scans: a file they queued may already be finished.
    // Every file queued or moved on since before the scans is this run's (resync below
    // counts the finished ones from their rows); events lost to a lag are not.
    let mut touched: HashSet<Uuid> = HashSet::new();
    loop {
        match events.try_recv() {
            Ok(e) if matches!(e.kind, FileEventKind::Added | FileEventKind::Status) => {
                touched.extend(Uuid::parse_str(e.file_id.as_str()))
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    let rows =
        entity::store::get_many(&library.db, &names.keys().copied().collect::<Vec<_>>()).await?;
    for row in rows.values() {
        let finished = matches!(
            row.status,
            entity::audio_file::FileStatus::Indexed | entity::audio_file::FileStatus::Failed
        );
        if !finished || touched.contains(&row.id) {
            pending.insert(row.id);
        }
    }
    let bar = progress_bar(pending.len(), args.no_progress);
    let mut report = IngestReport::default();
    resync(&library, &mut pending, &names, &mut report, &bar).await?;
    wait_for(
        &library,
        &mut events,
        &mut pending,
        &names,
        &mut report,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    finish(&library, workers, &pending, &report).await;
    eprintln!(
        "{} processed, {} indexed, {} failed ({:.1} s)",
        report.indexed + report.failed.len(),
        report.indexed,
        report.failed.len(),
        started.elapsed().as_secs_f64()
    );
    for (path, why) in &report.failed {
        eprintln!("  failed: {}: {why}", path.display());
    }
    Ok(if report.failed.is_empty() && failed_scans == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The files-done bar on stderr (hidden with `--no-progress`).
fn progress_bar(files: usize, hidden: bool) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(files as u64), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Follows processing events until nothing is pending (or Ctrl-C).
async fn wait_for(
    library: &std::sync::Arc<crate::library::Library>,
    events: &mut tokio::sync::broadcast::Receiver<crate::events::FileEvent>,
    pending: &mut HashSet<Uuid>,
    names: &std::collections::HashMap<Uuid, PathBuf>,
    report: &mut IngestReport,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_message("processing");
    while !pending.is_empty() {
        tokio::select! {
            event = events.recv() => match event {
                Ok(e) => handle_event(&e, pending, names, report, bar),
                Err(RecvError::Lagged(_)) => resync(library, pending, names, report, bar).await?,
                Err(RecvError::Closed) => break,
            },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                resync(library, pending, names, report, bar).await?;
            }
            _ = tokio::signal::ctrl_c() => {
                bar.abandon_with_message("interrupted; the rest is processed at the next start");
                break;
            }
        }
    }
    Ok(())
}

/// Optimises the index after a finished batch, and stops the workers.
async fn finish(
    library: &std::sync::Arc<crate::library::Library>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    pending: &HashSet<Uuid>,
    report: &IngestReport,
) {
    if pending.is_empty() && report.indexed > 0 {
        // A batch is done: leave the index optimised for the server that opens it next.
        if let Err(e) = library.optimize_index().await {
            tracing::warn!(error = %e, "optimising the index failed; the server retries");
        }
    }
    library.shutdown(workers, Duration::from_secs(10)).await;
}

/// `--copy`: files are hashed (known content is skipped), copied into the store and
/// processed, as uploads are.
async fn run_copy(args: IngestArgs) -> Result<ExitCode> {
    let files = find_audio_files(&args.paths)?;
    if files.is_empty() {
        eprintln!(
            "no audio files ({}) found",
            storage::audio_extensions().join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let library = open_library(&args.model, &args.library).await?;
    let workers = crate::pipeline::start_workers(&library);
    let mut events = library.events.subscribe();
    let started = Instant::now();

    let bar = progress_bar(files.len(), args.no_progress);

    let mut report = IngestReport::default();
    let mut pending: HashSet<Uuid> = HashSet::new();
    let mut names: std::collections::HashMap<Uuid, PathBuf> = Default::default();
    let limit = library.config.max_file_bytes;
    for path in &files {
        bar.set_message(format!("reading {}", path.display()));
        // Hash first: a known file is skipped without copying it.
        let hashed = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || storage::hash_file(&p)).await?
        };
        let (hash, _) = match hashed {
            Ok(h) => h,
            Err(e) => {
                report
                    .failed
                    .push((path.clone(), format!("cannot read: {e}")));
                bar.inc(1);
                continue;
            }
        };
        if entity::store::get_by_hash(&library.db, &hash)
            .await?
            .is_some()
        {
            report.skipped += 1;
            bar.inc(1);
            continue;
        }
        let staged = {
            let p = path.clone();
            let incoming = library.paths.incoming();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let file = std::fs::File::open(&p)?;
                Ok(storage::stage_from_reader(&incoming, &name, limit, file)?)
            })
            .await??
        };
        match staged {
            Ok(staged) => {
                let (row, created) = library.add_file(staged).await?;
                if created {
                    report.added += 1;
                    pending.insert(row.id);
                    names.insert(row.id, path.clone());
                } else {
                    report.skipped += 1;
                    bar.inc(1);
                }
            }
            Err(rejection) => {
                report
                    .failed
                    .push((path.clone(), rejection_message(&rejection)));
                bar.inc(1);
            }
        }
        drain_events(&mut events, &mut pending, &names, &mut report, &bar);
    }
    wait_for(
        &library,
        &mut events,
        &mut pending,
        &names,
        &mut report,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    finish(&library, workers, &pending, &report).await;

    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} added, {} indexed, {} already in the library, {} failed ({secs:.1} s)",
        report.added,
        report.indexed,
        report.skipped,
        report.failed.len()
    );
    for (path, why) in &report.failed {
        eprintln!("  failed: {}: {why}", path.display());
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn drain_events(
    events: &mut tokio::sync::broadcast::Receiver<crate::events::FileEvent>,
    pending: &mut HashSet<Uuid>,
    names: &std::collections::HashMap<Uuid, PathBuf>,
    report: &mut IngestReport,
    bar: &ProgressBar,
) {
    while let Ok(e) = events.try_recv() {
        handle_event(&e, pending, names, report, bar);
    }
}

fn handle_event(
    e: &crate::events::FileEvent,
    pending: &mut HashSet<Uuid>,
    names: &std::collections::HashMap<Uuid, PathBuf>,
    report: &mut IngestReport,
    bar: &ProgressBar,
) {
    let Ok(id) = Uuid::parse_str(e.file_id.as_str()) else {
        return;
    };
    if !pending.contains(&id) || !e.is_terminal() {
        return;
    }
    pending.remove(&id);
    bar.inc(1);
    match e.status {
        ApiFileStatus::Indexed => report.indexed += 1,
        _ => {
            let why = e.error_message.clone().unwrap_or_else(|| "failed".into());
            report.failed.push((names[&id].clone(), why));
        }
    }
}

/// Reads the state of pending files from the database (after missed events).
async fn resync(
    library: &crate::library::Library,
    pending: &mut HashSet<Uuid>,
    names: &std::collections::HashMap<Uuid, PathBuf>,
    report: &mut IngestReport,
    bar: &ProgressBar,
) -> Result<()> {
    for id in pending.clone() {
        if let Some(row) = entity::store::get(&library.db, id).await? {
            let e =
                crate::events::FileEvent::from_row(crate::events::FileEventKind::Snapshot, &row);
            handle_event(&e, pending, names, report, bar);
        }
    }
    Ok(())
}
