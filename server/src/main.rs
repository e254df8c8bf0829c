//! `traum`: the Traum Engine command line. Thin: parsing and logging here,
//! the work in the library.

use clap::Parser;
use traum_server::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    traum_server::logging::init(cli.log_json);
    let result = match cli.command {
        Command::Embed(args) => traum_server::embed::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
