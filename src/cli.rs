//! The command line (SPEC §1).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}
