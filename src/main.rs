use std::process::ExitCode;

use clap::Parser;
use gatehouse::cli::{Cli, Command, TokenArgs};
use gatehouse::state::Snapshot;
use gatehouse::{auth, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let loaded = match command {
        Command::Check => Snapshot::check(&cli.config),
        _ => Snapshot::load(&cli.config),
    };
    let snap = match loaded {
        Ok(snap) => snap,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: invalid config", cli.config.display());
            return ExitCode::from(1);
        }
    };
    match command {
        Command::Check => {
            println!("{}: ok: {}", cli.config.display(), snap.summary());
            ExitCode::SUCCESS
        }
        Command::Token(args) => token(&snap, &args),
        Command::Serve => serve(snap, cli.config),
    }
}

fn serve(snap: Snapshot, config: std::path::PathBuf) -> ExitCode {
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
    match runtime.block_on(server::serve(snap, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn token(snap: &Snapshot, args: &TokenArgs) -> ExitCode {
    let Some(key) = snap.keys.signer() else {
        eprintln!("no key can sign: add `sign = true` to a [[keys]] entry with private material");
        return ExitCode::from(1);
    };
    let claims = args.claims.iter().cloned().collect();
    let grant = auth::issue::Grant {
        subject: &args.sub,
        roles: &args.roles,
        claims: &claims,
        ttl: args.ttl.unwrap_or(snap.config.tokens.access_ttl),
    };
    match auth::issue::access_token(key, &snap.config.tokens, &grant) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign with key `{}`: {e}", key.id);
            ExitCode::from(1)
        }
    }
}
