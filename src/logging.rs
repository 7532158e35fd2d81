//! The log of the binaries (`fedrouter serve`, `loadgen`): a `tracing-subscriber` fmt
//! layer on stderr, as text or as one JSON object per line ([`LogFormat`]).
//!
//! - Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>): a log written to a file or a pipe stays plain, so
//!   `grep ' WARN '` finds its lines.
//! - The filter is `RUST_LOG` when it is set and parses, else `log.level`; a bare level in
//!   it (`debug`) applies to our own crates ([`OWN_TARGETS`]) and leaves every library at
//!   [`LIBRARY_LEVEL`] unless a directive names it (`RUST_LOG=debug,hickory_proto=debug`),
//!   see [`directives`].
//!
//! Span fields: tracing-subscriber's text formatter appends a field recorded again
//! (`FormatFields::add_fields`) instead of replacing it, so the runtime records each of a
//! stream span's fields once (`Conn::record_once`).

use std::io::IsTerminal as _;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The crates a bare level applies to.
pub const OWN_TARGETS: [&str; 2] = ["fedrouter", "loadgen"];

/// The most verbose level of the libraries (DNS, TLS, ...) unless a directive names them.
pub const LIBRARY_LEVEL: LevelFilter = LevelFilter::WARN;

/// `spec` (`RUST_LOG` or `log.level`, `EnvFilter` syntax) with its bare level `L` (the
/// last one, when several) replaced by `T=L` for each of [`OWN_TARGETS`] the spec does not
/// name itself, and a global level of `L` or [`LIBRARY_LEVEL`], whichever is less verbose.
/// A spec without a bare level is returned as it is.
///
/// `debug` → `fedrouter=debug,loadgen=debug,warn`; `debug,hickory_proto=debug` →
/// `hickory_proto=debug,fedrouter=debug,loadgen=debug,warn`; `error` →
/// `fedrouter=error,loadgen=error,error`; `fedrouter=trace` is kept.
pub fn directives(spec: &str) -> String {
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let Some(bare) = parts
        .iter()
        .rev()
        .find_map(|d| d.parse::<LevelFilter>().ok())
    else {
        return spec.to_owned();
    };
    let named = |target: &str| {
        parts.iter().any(|d| {
            let end = d.find(['[', '=']).unwrap_or(d.len());
            d[..end] == *target
        })
    };
    let mut out: Vec<String> = parts
        .iter()
        .filter(|d| d.parse::<LevelFilter>().is_err())
        .map(|d| (*d).to_owned())
        .collect();
    for target in OWN_TARGETS {
        if !named(target) {
            out.push(format!("{target}={bare}"));
        }
    }
    out.push(bare.min(LIBRARY_LEVEL).to_string());
    out.join(",")
}

/// Installs the global subscriber: `format` on stderr, filtered by `RUST_LOG` (when set
/// and valid) or else `level` (`log.level`, already validated), both through
/// [`directives`]. A `RUST_LOG` that does not parse is reported in the log once it runs.
///
/// Panics when a global subscriber is already installed.
pub fn init(format: LogFormat, level: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| EnvFilter::try_new(directives(&s)).map_err(|e| (s, e)));
    let (filter, refused) = match from_env {
        Some(Ok(f)) => (f, None),
        other => (
            EnvFilter::try_new(directives(level)).unwrap_or_else(|_| EnvFilter::new("info")),
            other.and_then(Result::err),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
    }
    if let Some((spec, e)) = refused {
        tracing::warn!(rust_log = %spec, error = %e, "RUST_LOG is not a filter; using log.level");
    }
}

/// Whether text lines are coloured: stderr is a terminal and `NO_COLOR` is unset or empty.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
