//! `check` of what a clustered node depends on besides the network: the PostgreSQL store
//! (`store.backend = "postgres"`) and the NATS servers (`[cluster]`). Each is one
//! connection attempt with the configured timeout; nothing is written.

use std::time::{Duration, Instant};

use super::*;
use crate::config::StoreBackend;
use crate::store::postgres::{parse_url, redact_url};

impl Checker<'_> {
    /// The store and NATS steps, under the first local domain's name.
    pub(super) fn services(&mut self) {
        let domain = self.config.domains[0].clone();
        if self.config.store.backend == StoreBackend::Postgres {
            self.postgres_step(&domain);
        }
        if self.config.cluster.is_some() {
            self.nats_step(&domain);
        }
    }

    fn postgres_step(&mut self, domain: &str) {
        let Some(url) = &self.config.store.url else {
            return;
        };
        let shown = redact_url(url.expose());
        let started = Instant::now();
        let step = match parse_url(url.expose()) {
            Err(e) => Step::new(domain, steps::STORE, Verdict::Fail, format!("{shown}: {e}"))
                .fix("write store.url as postgresql://user:password@host:port/dbname"),
            Ok(mut cfg) => {
                cfg.connect_timeout(self.config.store.connect_timeout);
                match cfg
                    .connect(postgres::NoTls)
                    .and_then(|mut c| c.query_one("SELECT version()", &[]))
                {
                    Ok(row) => {
                        let version: String = row.get(0);
                        let short = version.split(" on ").next().unwrap_or(&version).to_owned();
                        Step::new(
                            domain,
                            steps::STORE,
                            Verdict::Pass,
                            format!("{shown}: {short}"),
                        )
                    }
                    Err(e) => Step::new(
                        domain,
                        steps::STORE,
                        Verdict::Fail,
                        format!("cannot reach PostgreSQL at {shown}: {e}"),
                    )
                    .fix("start PostgreSQL, or correct store.url (host, port, user, database)"),
                }
            }
        };
        self.push(step.took(started.elapsed()));
    }

    fn nats_step(&mut self, domain: &str) {
        let Some(c) = &self.config.cluster else {
            return;
        };
        let urls = c.nats.join(", ");
        let timeout = c.connect_timeout;
        let started = Instant::now();
        let addrs: Result<Vec<async_nats::ServerAddr>, _> =
            c.nats.iter().map(|u| u.parse()).collect();
        let outcome = match addrs {
            Err(e) => Err(e.to_string()),
            Ok(addrs) => self.rt.block_on(async move {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(timeout)
                    .connect(addrs);
                match tokio::time::timeout(timeout + Duration::from_millis(100), connect).await {
                    Ok(Ok(client)) => {
                        let info = client.server_info();
                        let _ = client.drain().await;
                        Ok(info.version)
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within cluster.connect_timeout".to_owned()),
                }
            }),
        };
        let step = match outcome {
            Ok(server) => Step::new(
                domain,
                steps::NATS,
                Verdict::Pass,
                format!("{urls}: nats-server {server}"),
            ),
            Err(e) => Step::new(
                domain,
                steps::NATS,
                Verdict::Fail,
                format!("cannot reach NATS at {urls}: {e}"),
            )
            .fix("start nats-server, or correct cluster.nats"),
        };
        self.push(step.took(started.elapsed()));
    }
}
