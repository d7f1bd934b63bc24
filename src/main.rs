use std::process::ExitCode;

use clap::Parser;
use gatehouse::cli::{Cli, Command, KeygenArgs, TokenArgs};
use gatehouse::state::Snapshot;
use gatehouse::{auth, server, telemetry};

/// mimalloc instead of glibc's malloc. A cache miss allocates the claims, the
/// cache entry and moka's bookkeeping, and frees an evicted entry; glibc spent
/// about 9 % of a miss in malloc/free (perf), consolidating fastbins among
/// them. With mimalloc, every request a miss (compare.sh, TOKEN_POOL=20000,
/// cache of 1,000, 3 rounds): HS256 31.0 -> 29.3 CPU µs/req, RS256 69.2 ->
/// 66.1; cache hits unchanged within noise; RSS with 100,000 cached tokens
/// 127.5 -> 124.4 MiB. Only the binary: the library leaves the choice to
/// whoever links it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // rustls's crypto for every TLS client and server in the process (the
    // listener, JWKS fetches, Redis over rediss://): aws-lc-rs, the crypto
    // that verifies tokens.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // These two need no config.
    match &command {
        Command::HashPassword => return hash_password(),
        Command::Keygen(args) => return keygen(args),
        _ => {}
    }
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
        Command::HashPassword | Command::Keygen(_) => {
            unreachable!("handled before loading the config")
        }
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::from(1);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!(
            "empty password (give it on stdin: `printf %s \"$PW\" | gatehouse hash-password`)"
        );
        return ExitCode::from(1);
    }
    match auth::password::hash(password.as_bytes()) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot hash: {e}");
            ExitCode::from(1)
        }
    }
}

fn keygen(args: &KeygenArgs) -> ExitCode {
    match auth::keygen::generate(args.alg, &args.out) {
        Ok(entry) => {
            print!("{entry}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(snap: Snapshot, config: std::path::PathBuf) -> ExitCode {
    telemetry::init(snap.config.server.log_format);
    let workers = match workers() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let scheduler = match runtime.handle().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread",
        _ => "multi-thread",
    };
    let workers = runtime.metrics().num_workers();
    tracing::info!(workers, scheduler, "async runtime");
    match runtime.block_on(server::serve(snap, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// How many async worker threads to run: `TOKIO_WORKER_THREADS` when set
/// (as tokio itself reads it, but refused here with a message where tokio
/// would panic), else one per core.
fn workers() -> Result<usize, String> {
    const VAR: &str = "TOKIO_WORKER_THREADS";
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    };
    v.to_str()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{VAR} must be a whole number of threads, 1 or more (it is {v:?})"))
}

/// The runtime for `workers` threads. One worker gets tokio's current-thread
/// scheduler rather than the multi-thread one with a single worker: the same
/// one thread running every connection, without the work-stealing machinery
/// (atomic run queues, a waker that may hand work to another worker, the
/// accept loop on a second thread). Measured side by side in one compare.sh
/// run (TOKIO_WORKER_THREADS=1, 3 rounds), proxy CPU per request: cache hit
/// HS256 21.2 -> 20.3 µs; every request a miss HS256 27.9 -> 25.6, RS256
/// 53.3 -> 52.7; a hit under callgrind 32.6k -> 31.6k instructions.
/// Blocking work (password hashing, RSA signatures, the store, reloads)
/// still goes to the blocking pool, which both schedulers have.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
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
