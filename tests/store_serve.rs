//! `fedrouter serve` on the PostgreSQL store (`[store] backend = "postgres"`), a real
//! server (`common/postgres.rs`) and a real fedrouter process (`common/server.rs`) on
//! 127.0.179.2:
//!
//! - `/health` carries `"store"` (up, the URL with its password redacted), as do
//!   `/status/store`, `fedrouter status` and `fedrouter_store_up`.
//! - The server refuses connections and the store's connection is cut: the idle check
//!   finds it (log line "store unreachable"), `/health` says down with the error (status
//!   code still 200), the failure is counted; connections allowed again: the store comes
//!   back by itself ("store reachable again"), one reconnect counted.
//! - An unreachable PostgreSQL at start: `serve` exits non-zero naming the redacted URL.

#[path = "common/postgres.rs"]
mod pg;
#[path = "common/server.rs"]
mod server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::{config, http_get, ip, Fedrouter};

const NET: u8 = 179;

fn store_json(fr: &Fedrouter) -> serde_json::Value {
    let (code, body) =
        http_get(fr.admin, "/status/store", Duration::from_secs(10)).expect("admin endpoint");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn admin_sql(sql: &str) {
    let mut a = postgres::Client::connect(&pg::url("postgres"), postgres::NoTls).unwrap();
    a.batch_execute(sql).unwrap();
}

#[test]
fn health_and_status_show_the_store_going_down_and_back() {
    let url = pg::fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let toml = config(
        NET,
        ip(NET, 2),
        &["a.test"],
        1,
        &format!("[store]\nbackend = \"postgres\"\nurl = {url:?}\nreconnect_max = \"500ms\"\n"),
    );
    let fr = Fedrouter::start("pg-serve", &toml);

    let (code, health) = fr.health().expect("/health");
    assert_eq!(code, 200, "{health}");
    let store = &health["store"];
    assert_eq!(store["backend"], "postgres", "{health}");
    assert_eq!(store["state"], "up", "{health}");
    let redacted = url.replace(pg::PG_PASSWORD, "***");
    assert_eq!(store["url"], redacted.as_str());
    assert!(!health.to_string().contains(pg::PG_PASSWORD));
    assert_eq!(fr.metric("fedrouter_store_up", &[]), Some(1.0));

    let out = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["status", "-c"])
        .arg(fr.config_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("STORE postgres {redacted}: up")),
        "{text}"
    );

    // The database refuses new connections and the store's connection is cut.
    admin_sql(&format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{db}' AND application_name = 'fedrouter'"
    ));
    fr.wait_log(&["store unreachable"], Duration::from_secs(30))
        .expect("the idle check finds the broken connection");
    let down = store_json(&fr);
    assert_eq!(down["state"], "down", "{down}");
    assert!(
        down["error"].as_str().is_some_and(|e| e.contains("***@")),
        "{down}"
    );
    let (code, health) = fr.health().expect("/health");
    assert_eq!(code, 200, "the shards are healthy: {health}");
    assert_eq!(health["store"]["state"], "down");
    assert_eq!(fr.metric("fedrouter_store_up", &[]), Some(0.0));
    assert!(fr
        .metric("fedrouter_store_connection_failures_total", &[])
        .is_some_and(|n| n >= 1.0));

    admin_sql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    fr.wait_log(&["store reachable again"], Duration::from_secs(30))
        .expect("the store reconnects by itself");
    let up = store_json(&fr);
    assert_eq!(
        (up["state"].as_str(), up["reconnects"].as_u64()),
        (Some("up"), Some(1))
    );
    assert_eq!(
        fr.metric("fedrouter_store_reconnects_total", &[]),
        Some(1.0)
    );
}

#[test]
fn serve_with_unreachable_postgres_fails_naming_the_redacted_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind((pg::PG_ADDR, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://fed:hunter2@{}:{port}/fedrouter", pg::PG_ADDR);
    let toml = format!(
        "data_dir = {:?}\n{}",
        dir.path().join("data").display().to_string(),
        config(
            NET,
            ip(NET, 3),
            &["a.test"],
            1,
            &format!("[store]\nbackend = \"postgres\"\nurl = {url:?}\nconnect_timeout = \"2s\"\n"),
        )
    );
    let path = dir.path().join("fedrouter.toml");
    std::fs::write(&path, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedrouter"))
        .args(["serve", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: 30 s of 10 ms turns, then killed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fedrouter serve kept running without its store");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "postgresql://fed:***@{}:{port}/fedrouter",
            pg::PG_ADDR
        )) && text.contains("cannot connect"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("panicked"),
        "{text}"
    );
}
