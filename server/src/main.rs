//! `traum`: the Traum Engine command line. Thin: parsing, logging and the
//! runtime here, the work in the library.

use clap::Parser;
use traum_server::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    // Tensor buffers are reused from the heap instead of mapped and zeroed
    // by the kernel at every op (~8 % of a CPU forward pass at batch 8).
    clap_model::tune_allocator();
    let cli = Cli::parse();
    traum_server::logging::init(cli.log_json);
    let result = match cli.command {
        Command::Embed(args) => traum_server::embed::run(&args),
        Command::Schema => {
            print!("{}", traum_server::graphql::sdl());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Serve(args) => runtime().and_then(|rt| {
            rt.block_on(traum_server::serve::run(args))
                .map(|()| std::process::ExitCode::SUCCESS)
        }),
        Command::Ingest(args) => {
            runtime().and_then(|rt| rt.block_on(traum_server::ingest::run(args)))
        }
        Command::Keys(command) => {
            runtime().and_then(|rt| rt.block_on(traum_server::keys::run(command)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("traum")
        .build()?)
}

/// glibc's malloc gives every thread that meets contention an arena of its own (up to 8 per
/// core) and hands little of their free memory back. Fanning events out to a thousand sockets
/// from tokio's workers and blocking pool, the server's RSS grew 34 % in four minutes with the
/// default and 8 % with two arenas, with lower latency (server/benches/soak.rs). Tensors and
/// audio buffers are large enough to be mmap'd, outside any arena. A MALLOC_ARENA_MAX in the
/// environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    const ARENAS: libc::c_int = 2;
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; this runs first in main, before any
        // thread of ours exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
