//! The `fedrouter` binary: `serve`, `check` and `user` subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// XMPP federation router.
#[derive(Debug, Parser)]
#[command(name = "fedrouter", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: S2S on 5269/5270, C2S on 5222, one shard per core.
    Serve {
        /// Configuration file (TOML); embedded defaults when absent.
        #[arg(long, short)]
        config: Option<std::path::PathBuf>,
    },
    /// Federation troubleshooting: DNS SRV, reachability, TLS and dialback checks.
    Check {
        /// Remote domain to check; our own domains when absent.
        domain: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Manage local users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a user (password from stdin or a prompt).
    Add { jid: String },
    /// Remove a user.
    Remove { jid: String },
    /// List users.
    List { domain: Option<String> },
    /// Change a user's password.
    Passwd { jid: String },
}

fn not_implemented(what: &str) -> ExitCode {
    eprintln!("fedrouter: `{what}` is not implemented yet");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { .. } => not_implemented("serve"),
        Command::Check { .. } => not_implemented("check"),
        Command::User { action } => match action {
            UserAction::Add { .. } => not_implemented("user add"),
            UserAction::Remove { .. } => not_implemented("user remove"),
            UserAction::List { .. } => not_implemented("user list"),
            UserAction::Passwd { .. } => not_implemented("user passwd"),
        },
    }
}
