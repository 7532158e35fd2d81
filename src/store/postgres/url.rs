//! The server's connection string (`store.url`): parsing it as the `postgres` client
//! does, and showing it without its password.

use std::str::FromStr;

/// `url` with its password replaced by `***`, for messages, logs and status: in a URL
/// (`postgresql://user:***@host/db`) and in `key=value` form (`password=***`), also as a
/// `password` query parameter. Anything else is returned as it is.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = url.find("://") {
        let start = scheme_end + 3;
        let rest = &url[start..];
        let end = rest.find(['/', '?']).map_or(url.len(), |i| start + i);
        if let Some(at) = url[start..end].rfind('@') {
            let userinfo = &url[start..start + at];
            if let Some(colon) = userinfo.find(':') {
                out = format!("{}***{}", &url[..start + colon + 1], &url[start + at..]);
            }
        }
        // `?password=…` in the query string.
        if let Some(q) = out.find('?') {
            let (head, query) = out.split_at(q + 1);
            let redacted: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k == "password" => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            out = format!("{head}{}", redacted.join("&"));
        }
        return out;
    }
    // key=value form: values may be quoted with single quotes (backslash escapes).
    let mut result = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("password") {
        let before_ok = i == 0 || rest[..i].ends_with(char::is_whitespace);
        let after = rest[i + "password".len()..].trim_start();
        if !before_ok || !after.starts_with('=') {
            result.push_str(&rest[..i + "password".len()]);
            rest = &rest[i + "password".len()..];
            continue;
        }
        result.push_str(&rest[..i]);
        result.push_str("password=***");
        let value = after[1..].trim_start();
        let skip = if let Some(q) = value.strip_prefix('\'') {
            let mut escaped = false;
            let mut n = q.len();
            for (j, c) in q.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        n = j + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            1 + n
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[skip.min(value.len())..];
    }
    result.push_str(rest);
    result
}

/// Parses `url` as the `postgres` client does; the error says what is wrong without
/// repeating the URL.
pub fn parse_url(url: &str) -> Result<postgres::Config, String> {
    let config = postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::{PostgresOptions, PostgresStore};

    #[test]
    fn redaction_hides_every_password_form() {
        for (url, want) in [
            (
                "postgresql://fed:s3cr3t@db.example:5432/fedrouter",
                "postgresql://fed:***@db.example:5432/fedrouter",
            ),
            (
                "postgres://fed:p%40ss@[::1]/db?sslmode=disable",
                "postgres://fed:***@[::1]/db?sslmode=disable",
            ),
            (
                "postgresql://fed@127.0.0.1/db?password=x&application_name=y",
                "postgresql://fed@127.0.0.1/db?password=***&application_name=y",
            ),
            ("postgresql://127.0.0.1/db", "postgresql://127.0.0.1/db"),
            (
                "host=127.0.0.1 user=fed password=secret dbname=x",
                "host=127.0.0.1 user=fed password=*** dbname=x",
            ),
            (
                "host=h password = 'a b\\' c' dbname=x",
                "host=h password=*** dbname=x",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn unparsable_urls_are_refused_without_echoing_them() {
        assert!(parse_url("postgresql://u:pw@h:notaport/db").is_err());
        assert!(parse_url("dbname=x").is_err(), "no host");
        assert!(parse_url("postgresql://u:pw@127.0.0.1:5432/db").is_ok());
        let e = PostgresStore::connect(PostgresOptions::new("postgresql://u:hunter2@h:x/db"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.url") && !e.contains("hunter2"), "{e}");
    }
}
