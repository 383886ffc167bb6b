//! The `claude-relay` binary: the CLI, configuration, telemetry, wiring and graceful shutdown.

mod cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything is created: the database, its WAL files and the key stay private.
    relay_core::bootstrap::make_new_files_private();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            cli::fail(&format!("cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            cli::fail(&format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}
