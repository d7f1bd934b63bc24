//! Logging: tracing-subscriber to stderr, filtered by `RUST_LOG` (default
//! `info`), as text or JSON (`[server] log_format`). Nothing logged anywhere
//! in the gateway carries a token, password or secret: tokens only exist as
//! `BearerToken`, whose `Debug` is redacted, and the access log records the
//! path without its query string.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Later calls (tests) are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
