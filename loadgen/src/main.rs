//! `loadgen`: simulated Gmail-style remote servers and local clients against an XMPP server.
//!
//! Not built yet: it prints its usage and exits non-zero.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for XMPP servers (S2S peers and C2S clients, HDR latency histograms).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    /// Scenario: subscribe, presence, message, churn or mixed.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Number of simulated remote domains.
    #[arg(long, default_value_t = 1000)]
    peers: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "loadgen: scenario `{}` with {} peers is not implemented yet",
        cli.scenario, cli.peers
    );
    ExitCode::from(2)
}
