//! The command line (SPEC §1).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A reverse-proxy authentication gateway"
)]
pub struct Cli {
    /// The config file.
    #[arg(short, long, global = true, default_value = "gateway.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the config and print a summary; exit 1 with FILE:LINE:COL errors if invalid.
    Check,
    /// Mint an access token with the configured signing key (ops and load tests).
    Token(TokenArgs),
    /// Read a password from stdin, print an argon2id PHC string for the users file.
    HashPassword,
    /// Write a new signing key (PEM, or a random secret for HS256) with 0600 permissions.
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    #[arg(long, value_enum)]
    pub alg: crate::auth::keygen::KeygenAlg,
    /// Directory for the key files (created if missing; existing files are never overwritten).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The subject (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// An extra claim `key=value` (repeatable); a value that parses as JSON
    /// (`true`, `42`, `["a"]`) is kept as JSON, anything else is a string.
    #[arg(long = "claim", value_parser = parse_claim)]
    pub claims: Vec<(String, serde_json::Value)>,
    /// Lifetime, e.g. `15m`; defaults to `[tokens] access_ttl`.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
}

fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected key=value"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
    Ok((k.to_string(), value))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}
