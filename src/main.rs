use std::process::ExitCode;

use clap::Parser;
use gatehouse::cli::{Cli, Command};
use gatehouse::state::Snapshot;
use gatehouse::{server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let snap = match Snapshot::load(&cli.config) {
        Ok(snap) => snap,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: invalid config, not starting", cli.config.display());
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            println!("{}: ok: {}", cli.config.display(), snap.summary());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            telemetry::init(snap.config.server.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(server::serve(snap, cli.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
