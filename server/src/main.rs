//! `traum`: the Traum Engine command line. Thin: parsing, logging and the
//! runtime here, the work in the library.

use clap::Parser;
use traum_server::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
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
