//! Fuzz target for the configuration file (`fedrouter::config::Config::from_toml_str`:
//! TOML parsing in `src/config/file.rs`, checks in `src/config/validate.rs`).
//!
//! Input: the file's text (invalid UTF-8 is replaced, as a text editor would show it).
//!
//! Invariants (the target panics when one fails):
//!
//! - no panic, whatever the text;
//! - an error says what is wrong and where: a parse error's message names the line
//!   (`toml`'s "at line N, column M"); a validation error names a non-empty key and a
//!   non-empty problem, and its message reads `KEY: PROBLEM`;
//! - a configuration that loads validates again (`Config::validate` is `Ok`);
//! - it round-trips what was given: the same TOML data written out again by `toml`
//!   (other formatting, same values) loads to an equal `Config`, and the values given for
//!   `domains` (normalised as RFC 7622 domainparts), `shards` and `data_dir` are the
//!   ones in the `Config`.

#![no_main]

use std::path::PathBuf;

use fedrouter::config::{Config, ConfigError};
use fedrouter_proto::jid::DomainPart;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml_str(&text) {
        Err(ConfigError::Parse { message, .. }) => {
            assert!(
                message.contains("line "),
                "a parse error that names no line: {message:?} for {text:?}"
            );
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { key, problem, .. } = &e else {
                unreachable!()
            };
            assert!(!key.trim().is_empty(), "an error naming no key: {e}");
            assert!(!problem.trim().is_empty(), "an error with no problem: {e}");
            assert_eq!(e.to_string(), format!("{key}: {problem}"));
        }
        Err(e) => panic!("from_toml_str touched files: {e}"),
        Ok(config) => {
            config
                .validate()
                .unwrap_or_else(|e| panic!("a loaded configuration does not validate: {e}"));
            let table: toml::Table = toml::from_str(&text).expect("loaded text is TOML");
            check_given(&table, &config);
            let again = toml::to_string(&table).expect("a TOML table writes out");
            match Config::from_toml_str(&again) {
                Ok(c) => assert_eq!(c, config, "rewritten TOML loads differently:\n{again}"),
                Err(e) => panic!("rewritten TOML does not load: {e}\n{again}\nfrom\n{text}"),
            }
        }
    }
});

fn check_given(table: &toml::Table, config: &Config) {
    if let Some(toml::Value::Array(domains)) = table.get("domains") {
        let given: Vec<String> = domains
            .iter()
            .map(|d| {
                let s = d.as_str().expect("domains loaded, so they are strings");
                DomainPart::new(s)
                    .unwrap_or_else(|e| panic!("domain {s:?} loaded but is invalid: {e}"))
                    .as_str()
                    .to_owned()
            })
            .collect();
        assert_eq!(config.domains, given, "domains");
    }
    if let Some(toml::Value::Integer(n)) = table.get("shards") {
        assert_eq!(Ok(config.shards), usize::try_from(*n), "shards");
    }
    if let Some(toml::Value::String(dir)) = table.get("data_dir") {
        assert_eq!(config.data_dir, PathBuf::from(dir), "data_dir");
    }
}
