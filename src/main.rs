//! The `fedrouter` binary: `serve`, `ping`, `check`, `status`, `user`, `import` and `export`
//! subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fedrouter::config::{Config, LogFormat};
use fedrouter::runtime::{ping_via_admin, Server};

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
        /// Log lines on stderr: text (coloured only on a terminal) or json (one object per
        /// line). Overrides the configuration's `log.format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// XEP-0199 server-to-server ping of a remote domain through a running server
    /// (its admin endpoint): DNS, connection, authentication and a round trip.
    Ping {
        /// Remote domain to ping.
        domain: String,
        /// Local domain to ping from (default: the server's first).
        #[arg(long)]
        from: Option<String>,
        /// The server's configuration file, to find its admin endpoint.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin endpoint (overrides the configuration's `listen.admin`).
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Federation troubleshooting: DNS SRV, reachability, TLS, certificates and a dialback
    /// round trip; each step passes or fails with the fix to try. Exits non-zero when a
    /// step fails.
    Check {
        /// Remote domain to check; our own domains when absent (or one of ours).
        domain: Option<String>,
        /// Local domain to authenticate as (default: the configuration's first).
        #[arg(long)]
        from: Option<String>,
        /// The configuration file (TOML); embedded defaults when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output: the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Streams per remote domain, read from the running server (its admin endpoint):
    /// direction, state, authentication, queue, last error and backoff.
    Status {
        /// The server's configuration file, to find its admin endpoint.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin endpoint (overrides the configuration's `listen.admin`).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print the server's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Manage local users (stored in the `[store]`: `<data_dir>/fedrouter.db`, or the
    /// PostgreSQL server at `store.url`; safe while the server runs).
    User {
        /// Configuration file (TOML), for `domains` and `data_dir`; embedded defaults when
        /// absent.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Import users, their SCRAM credentials and rosters from XEP-0227 files (Prosody's
    /// `prosody-migrator` xep0227 output, ejabberd's `ejabberdctl export_piefxis`): a
    /// file, or every `*.xml` of a folder. Each user in one transaction; importing again
    /// changes nothing. Prints a summary; exits 1 when an entry was skipped.
    Import {
        /// A XEP-0227 file or a folder of them.
        path: PathBuf,
        /// Configuration file (TOML), for `domains` and `data_dir`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Export the users, credentials and rosters of this server's domains as XEP-0227
    /// files, one `<domain>.xml` per domain, into a folder (created if needed).
    Export {
        /// The folder to write into.
        dir: PathBuf,
        /// Configuration file (TOML), for `domains` and `data_dir`.
        #[arg(long, short)]
        config: Option<PathBuf>,
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

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    let cfg = match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    };
    cfg.map_err(|e| {
        eprintln!("fedrouter: configuration: {e}");
        ExitCode::from(78) // EX_CONFIG
    })
}

fn serve(path: Option<&Path>, log_format: Option<LogFormat>) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    fedrouter::logging::init(log_format.unwrap_or(config.log.format), &config.log.level);
    let materialized = match config.materialize() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fedrouter: {e}");
            return ExitCode::from(78);
        }
    };
    for d in &materialized.generated {
        tracing::info!(domain = %d, dir = %config.data_dir.display(), "generated a self-signed certificate");
    }
    let (soft, hard) = fedrouter::runtime::raise_fd_limit();
    tracing::info!(
        open_files = soft,
        hard_limit = hard,
        "open-file limit (one per stream, listener and store file)"
    );
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fedrouter: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::start(config, materialized) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fedrouter: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Bounded by the process's life: each signal is one turn; SIGINT/SIGTERM end it.
    for sig in signals.forever() {
        if sig != signal_hook::consts::SIGHUP {
            tracing::info!(signal = sig, "stopping: closing streams");
            break;
        }
        reload(&mut server, path);
    }
    server.shutdown();
    server.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: the configuration file again, certificates and trust anchors from disk, applied
/// to new streams (open ones are kept). A configuration that does not load changes nothing.
fn reload(server: &mut Server, path: Option<&Path>) {
    tracing::info!("SIGHUP: reloading the configuration");
    let config = match path
        .map(Config::load)
        .unwrap_or_else(|| Ok(Config::default()))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the configuration does not load; still running the previous one");
            return;
        }
    };
    let materialized = match config.materialize() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; still running the previous configuration");
            return;
        }
    };
    match server.reload(config, materialized) {
        Ok(()) => tracing::info!("reloaded: certificates, trust anchors and federation policy"),
        Err(e) => tracing::warn!(error = %e, "reload"),
    }
}

/// The running server's admin endpoint: `--admin`, else the configuration's
/// `listen.admin`; exit code 78 when the configuration does not load or disables it.
fn admin_endpoint(
    config: Option<&Path>,
    admin: Option<SocketAddr>,
) -> Result<SocketAddr, ExitCode> {
    if let Some(a) = admin {
        return Ok(a);
    }
    load_config(config)?.listen.admin.ok_or_else(|| {
        eprintln!("fedrouter: the configuration disables listen.admin; pass --admin");
        ExitCode::from(78)
    })
}

fn ping(
    domain: &str,
    from: Option<&str>,
    config: Option<&Path>,
    admin: Option<SocketAddr>,
) -> ExitCode {
    let admin = match admin_endpoint(config, admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match ping_via_admin(admin, domain, from) {
        Ok(text) => {
            println!("{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if v["result"] == "pong" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("fedrouter: cannot reach the admin endpoint at {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(domain: Option<&str>, from: Option<&str>, config: Option<&Path>, json: bool) -> ExitCode {
    use fedrouter::check::{run, CheckError, CheckOptions};
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let materialized = match config.materialize() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fedrouter: {e}");
            return ExitCode::from(78);
        }
    };
    // A PostgreSQL store that cannot be reached is named before anything is checked.
    if fedrouter::store::postgres_options(&config).is_some() {
        if let Err(e) = fedrouter::store::open(&config) {
            eprintln!("fedrouter: store: {e}");
            return ExitCode::FAILURE;
        }
    }
    let options = CheckOptions {
        from: from.map(str::to_owned),
        ..CheckOptions::default()
    };
    match run(&config, &materialized, domain, &options) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e @ (CheckError::BadDomain { .. } | CheckError::NotLocal { .. })) => {
            eprintln!("fedrouter: {e}");
            ExitCode::from(64) // EX_USAGE
        }
        Err(e) => {
            eprintln!("fedrouter: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a password: from standard input when it is not a terminal (one line), else
/// from a prompt without echo, asked twice.
fn read_password() -> Result<String, String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Password again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin.read_line(&mut line).map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}

/// Refuses to write the store as root into a `data_dir` that belongs to another user (the
/// packaged service's `fedrouter` user): SQLite would create its `-wal`/`-shm` files owned
/// by root, and the service could no longer write its own database. Error: the message to
/// print, naming the owner's uid and the command to use instead.
fn refuse_root_in_service_dir(data_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let owner = std::fs::metadata(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?
        .uid();
    if euid == 0 && owner != 0 {
        return Err(format!(
            "{} belongs to uid {owner}, not root: run this as its owner so that the server can \
             still write the files it creates, e.g. `sudo -u fedrouter fedrouter user ...` for \
             the Debian package",
            data_dir.display()
        ));
    }
    Ok(())
}

fn user(config: Option<&Path>, action: UserAction) -> ExitCode {
    use fedrouter::jid::BareJid;
    use fedrouter::store::scram::{ScramCredentials, ScramHash};
    use fedrouter::store::SCRAM_ITERATIONS;

    let (config, mut store) = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fail = |msg: String| {
        eprintln!("fedrouter: {msg}");
        ExitCode::FAILURE
    };
    // A local user's bare JID: a localpart at one of our domains (RFC 7622).
    let local_jid = |raw: &str| -> Result<String, String> {
        let jid = BareJid::new(raw).map_err(|e| format!("{raw}: not a valid JID: {e}"))?;
        if jid.node().is_none() {
            return Err(format!("{raw}: a user JID needs a localpart (user@domain)"));
        }
        if !config.domains.iter().any(|d| d == jid.domain()) {
            return Err(format!(
                "{raw}: {} is not one of this server's domains ({})",
                jid.domain(),
                config.domains.join(", ")
            ));
        }
        Ok(jid.as_str().to_owned())
    };
    let credentials = |password: &str| -> Result<Vec<ScramCredentials>, String> {
        ScramHash::ALL
            .iter()
            .map(|&h| {
                ScramCredentials::with_random_salt(password, h, SCRAM_ITERATIONS, &mut rand::rng())
                    .map_err(|e| format!("password: {e}"))
            })
            .collect()
    };
    let result: Result<String, String> = (|| match action {
        UserAction::Add { jid } => {
            let jid = local_jid(&jid)?;
            let creds = credentials(&read_password()?)?;
            store.add_user(&jid, &creds).map_err(|e| e.to_string())?;
            Ok(format!("added {jid}"))
        }
        UserAction::Remove { jid } => {
            let jid = local_jid(&jid)?;
            if store.remove_user(&jid).map_err(|e| e.to_string())? {
                Ok(format!("removed {jid}"))
            } else {
                Err(format!("{jid}: no such user"))
            }
        }
        UserAction::Passwd { jid } => {
            let jid = local_jid(&jid)?;
            if store
                .credentials(&jid, ScramHash::Sha256)
                .map_err(|e| e.to_string())?
                .is_none()
                && !store
                    .list_users(None)
                    .map_err(|e| e.to_string())?
                    .contains(&jid)
            {
                return Err(format!("{jid}: no such user"));
            }
            let creds = credentials(&read_password()?)?;
            if store
                .set_credentials(&jid, &creds)
                .map_err(|e| e.to_string())?
            {
                Ok(format!("changed the password of {jid}"))
            } else {
                Err(format!("{jid}: no such user"))
            }
        }
        UserAction::List { domain } => {
            let domain = domain.map(|d| fedrouter::router::domain_key(&d).into_owned());
            let users = store
                .list_users(domain.as_deref())
                .map_err(|e| e.to_string())?;
            Ok(users.join("\n"))
        }
    })();
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Opens the store of the configuration at `path`: `<data_dir>/fedrouter.db` (creating
/// `data_dir` if needed), or the PostgreSQL server at `store.url`. On error the message
/// (naming the file, or the URL with its password redacted, and the cause) is printed.
fn open_store(path: Option<&Path>) -> Result<(Config, Box<dyn fedrouter::store::Store>), ExitCode> {
    let config = load_config(path)?;
    let fail = |msg: String| {
        eprintln!("fedrouter: {msg}");
        ExitCode::FAILURE
    };
    if config.store.backend == fedrouter::config::StoreBackend::Sqlite {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| fail(format!("{}: {e}", config.data_dir.display())))?;
        refuse_root_in_service_dir(&config.data_dir).map_err(fail)?;
    }
    let opened = fedrouter::store::open(&config).map_err(|e| fail(format!("store: {e}")))?;
    Ok((config, opened.store))
}

/// `fedrouter import FILE|DIR`: the summary on stdout; 1 when an entry was skipped.
fn import(path: &Path, config: Option<&Path>) -> ExitCode {
    let (config, mut store) = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let docs = match fedrouter::pie::import::load(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fedrouter: import: {e}");
            return ExitCode::FAILURE;
        }
    };
    let summary =
        fedrouter::pie::import::import(&mut *store, &docs, &config.domains, &mut rand::rng());
    print!("{}", summary.text());
    if summary.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `fedrouter export DIR`: one line per file written.
fn export(dir: &Path, config: Option<&Path>) -> ExitCode {
    let (config, mut store) = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match fedrouter::pie::export::export(&mut *store, dir, &config.domains) {
        Ok(written) => {
            for (path, users) in written {
                println!("{}: {users} users", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fedrouter: export: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(config.as_deref(), log_format),
        Command::Ping {
            domain,
            from,
            config,
            admin,
        } => ping(&domain, from.as_deref(), config.as_deref(), admin),
        Command::Check {
            domain,
            from,
            config,
            json,
        } => check(domain.as_deref(), from.as_deref(), config.as_deref(), json),
        Command::User { config, action } => user(config.as_deref(), action),
        Command::Import { path, config } => import(&path, config.as_deref()),
        Command::Export { dir, config } => export(&dir, config.as_deref()),
        Command::Status {
            config,
            admin,
            json,
        } => status(config.as_deref(), admin, json),
    }
}

/// `fedrouter status`: one line per stream (or per remote domain without one).
fn status(config: Option<&Path>, admin: Option<SocketAddr>, json: bool) -> ExitCode {
    let admin = match admin_endpoint(config, admin) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let text = match fedrouter::runtime::status_via_admin(admin) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fedrouter: cannot reach the admin endpoint at {admin}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{text}");
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fedrouter: unexpected answer from {admin}: {e}: {text}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{:<28} {:>5} {:<3} {:<13} {:<4} {:<32} {:>6}  LAST ERROR / BACKOFF",
        "REMOTE DOMAIN", "SHARD", "DIR", "STATE", "TLS", "AUTHENTICATED", "QUEUE"
    );
    for d in v.as_array().into_iter().flatten() {
        let domain = d["domain"].as_str().unwrap_or("");
        let mut note = d["last_error"].as_str().unwrap_or("").to_owned();
        if let Some(b) = d["backoff_s"].as_f64() {
            note.push_str(&format!(" (retry in {b:.1}s)"));
        }
        if let Some(c) = d["congested_s"].as_f64() {
            note.push_str(&format!(
                " CONGESTED {c:.1}s: queue full, new stanzas bounced"
            ));
        }
        if let Some(n) = d["dropped_errors"].as_u64().filter(|n| *n > 0) {
            note.push_str(&format!(" {n} error stanzas dropped (never bounced)"));
        }
        let streams = d["streams"].as_array().cloned().unwrap_or_default();
        let rows = if streams.is_empty() {
            vec![serde_json::json!({"direction": "-", "state": "idle"})]
        } else {
            streams
        };
        for s in rows {
            let mut note = note.clone();
            if let Some(via) = s["via"].as_str() {
                note.push_str(&format!(" on the stream to {via} (same target)"));
            }
            if s["multiplexed"] == true {
                let others: Vec<&str> = s["domains"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str())
                    .filter(|d| *d != domain)
                    .collect();
                note.push_str(&format!(" also serves {}", others.join(",")));
            }
            if let Some(ms) = s["write_stalled_ms"].as_u64() {
                note.push_str(&format!(
                    " STALLED: peer accepted no byte for {:.1}s ({} bytes waiting)",
                    ms as f64 / 1000.0,
                    s["pending_bytes"]
                ));
            }
            let auth: Vec<String> = s["authenticated"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}:{}",
                        p["method"].as_str().unwrap_or(""),
                        p["local"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let tls = match s["tls"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            println!(
                "{:<28} {:>5} {:<3} {:<13} {:<4} {:<32} {:>6}  {}",
                domain,
                d["shard"],
                s["direction"].as_str().unwrap_or("-"),
                s["state"].as_str().unwrap_or("-"),
                tls,
                if auth.is_empty() {
                    "-".to_owned()
                } else {
                    auth.join(",")
                },
                d["queue"],
                note.trim()
            );
        }
    }
    print_directory(admin);
    print_store(admin);
    print_cluster(admin);
    ExitCode::SUCCESS
}

/// `fedrouter status`'s cluster table with `[cluster]` (`GET /status/cluster`): the NATS
/// connection, then each member, its state and what it holds; nothing without a cluster.
fn print_cluster(admin: SocketAddr) {
    let v: serde_json::Value = match fedrouter::runtime::cluster_status_via_admin(admin)
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fedrouter: cluster state unknown: {e}");
            return;
        }
    };
    if v["enabled"] == false {
        return;
    }
    println!(
        "\nCLUSTER node {} epoch {}: NATS {} {} ({} reconnects, {} stanzas lost, {} outbox entries resent)",
        v["node"].as_str().unwrap_or("?"),
        v["epoch"],
        v["nats_url"].as_str().unwrap_or(""),
        v["nats"].as_str().unwrap_or("?"),
        v["reconnects"],
        v["lost"],
        v["outbox_resent"],
    );
    println!(
        "{:<20} {:<6} {:<24} {:>9} {:>9} {:>12} {:>9}",
        "MEMBER", "STATE", "C2S", "DOMAINS", "USERS", "LAST HEARD", "BACKLOG"
    );
    let backlog = |node: &str| {
        v["backlog"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["node"] == node)
            .and_then(|b| b["stanzas"].as_u64())
            .unwrap_or(0)
    };
    for m in v["members"].as_array().into_iter().flatten() {
        let node = m["node"].as_str().unwrap_or("?");
        let heard = if m["self"] == true {
            "(this node)".to_owned()
        } else {
            format!(
                "{:.1}s ago",
                m["last_heard_ms"].as_f64().unwrap_or(0.0) / 1000.0
            )
        };
        println!(
            "{:<20} {:<6} {:<24} {:>9} {:>9} {:>12} {:>9}",
            node,
            m["state"].as_str().unwrap_or("?"),
            m["c2s"].as_str().unwrap_or("-"),
            m["domains"].as_u64().unwrap_or(0),
            m["users"].as_u64().unwrap_or(0),
            heard,
            backlog(node),
        );
    }
}

/// `fedrouter status`'s last line with `store.backend = "postgres"`: the store's state
/// (`GET /status/store`); nothing for SQLite.
fn print_store(admin: SocketAddr) {
    let v: serde_json::Value = match fedrouter::runtime::store_status_via_admin(admin)
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fedrouter: store state unknown: {e}");
            return;
        }
    };
    if v["backend"] != "postgres" {
        return;
    }
    let state = v["state"].as_str().unwrap_or("unknown");
    let for_s = v["for_s"].as_f64().unwrap_or(0.0);
    let url = v["url"].as_str().unwrap_or("");
    let counts = format!(
        "{} reconnects, {} connection failures",
        v["reconnects"], v["connection_failures"]
    );
    match v["error"].as_str() {
        Some(e) => println!("\nSTORE postgres {url}: {state} for {for_s:.0}s ({counts}): {e}"),
        None => println!("\nSTORE postgres {url}: {state} for {for_s:.0}s ({counts})"),
    }
}

/// `fedrouter status`'s last line with `auth.backend = "ldap"`: the directory's state
/// (`GET /status/directory`); nothing for the internal backend.
fn print_directory(admin: SocketAddr) {
    let v: serde_json::Value = match fedrouter::runtime::directory_status_via_admin(admin)
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fedrouter: directory state unknown: {e}");
            return;
        }
    };
    if v["backend"] != "ldap" {
        return;
    }
    let state = v["state"].as_str().unwrap_or("unknown");
    let for_s = v["for_s"].as_f64().unwrap_or(0.0);
    match v["error"].as_str() {
        Some(e) => println!("\nDIRECTORY ldap: {state} for {for_s:.0}s: {e}"),
        None => println!("\nDIRECTORY ldap: {state} for {for_s:.0}s"),
    }
}
