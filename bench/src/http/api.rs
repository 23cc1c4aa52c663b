//! The parts of warren's HTTP API the bench drives: login, user creation,
//! `/api/v1/ping`, writing a small file and the `/metrics` counter of
//! database queries.

use super::load::{Connection, RequestSpec};
use anyhow::{bail, Context, Result};
use hyper::header::{AUTHORIZATION, COOKIE, ORIGIN, SET_COOKIE};
use hyper::{HeaderMap, Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub const SESSION_COOKIE: &str = "warren_session";
pub const DB_QUERIES: &str = "warren_db_queries_total";
/// For the requests of setting up, each on a fresh connection (a login waits
/// for an argon2 hash, possibly behind others).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /api/v1/ping` as a logged-in browser sends it: the session cookie.
/// The bare server gets the very same request (and ignores the cookie).
pub fn ping(server: SocketAddr, token: &str) -> Result<RequestSpec> {
    RequestSpec::new(server, Method::GET, "/api/v1/ping")
        .header(COOKIE, &format!("{SESSION_COOKIE}={token}"))
        .map(|spec| spec.checked(is_ping_body))
}

/// `{"slot":N}`: the answer of `/api/v1/ping` (and of the bare handler).
pub fn is_ping_body(body: &[u8]) -> bool {
    body.strip_prefix(br#"{"slot":"#)
        .and_then(|rest| rest.strip_suffix(b"}"))
        .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
}

/// `POST /api/v1/auth/login` as a browser sends it (with `Origin`).
pub fn login(server: SocketAddr, username: &str, password: &str) -> Result<RequestSpec> {
    RequestSpec::new(server, Method::POST, "/api/v1/auth/login")
        .header(ORIGIN, &format!("http://{server}"))?
        .json(&serde_json::json!({ "username": username, "password": password }))
}

/// Logs in and returns the session token from `Set-Cookie`.
pub async fn session(server: SocketAddr, username: &str, password: &str) -> Result<String> {
    let answer = Connection::new(server)
        .send(&login(server, username, password)?, SETUP_TIMEOUT)
        .await?;
    if answer.status != StatusCode::OK {
        bail!(
            "login as {username:?}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    session_token(&answer.headers)
        .with_context(|| format!("login as {username:?}: no {SESSION_COOKIE} cookie set"))
}

/// The value of the session cookie among `Set-Cookie` headers.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().find_map(|value| {
        let cookie = value.to_str().ok()?;
        let pair = cookie.split(';').next()?.trim();
        let token = pair.strip_prefix(SESSION_COOKIE)?.strip_prefix('=')?;
        (!token.is_empty()).then(|| token.to_string())
    })
}

/// `POST /api/v1/admin/users` with the admin's bearer token.
pub async fn create_user(
    server: SocketAddr,
    admin_token: &str,
    username: &str,
    password: &str,
) -> Result<()> {
    let spec = RequestSpec::new(server, Method::POST, "/api/v1/admin/users")
        .header(AUTHORIZATION, &format!("Bearer {admin_token}"))?
        .json(&serde_json::json!({ "username": username, "password": password, "role": "user" }))?;
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating user {username:?}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(())
}

/// `method path` with `Authorization: Bearer token` (no `Origin` needed).
pub fn bearer(
    server: SocketAddr,
    method: Method,
    path: &'static str,
    token: &str,
) -> Result<RequestSpec> {
    RequestSpec::new(server, method, path).header(AUTHORIZATION, &format!("Bearer {token}"))
}

/// `PUT path` of `body` (a whole file, sent at once) with a bearer token;
/// `path` is the files API's, query included. Returns the entry warren
/// answers (`200` or `201`).
pub async fn put_file(
    server: SocketAddr,
    token: &str,
    path: &'static str,
    body: bytes::Bytes,
) -> Result<serde_json::Value> {
    let mut spec = bearer(server, Method::PUT, path, token)?
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")?;
    spec.body = body;
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    if !matches!(answer.status, StatusCode::OK | StatusCode::CREATED) {
        bail!(
            "PUT {path}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).with_context(|| format!("PUT {path}: not a JSON entry"))
}

/// Database queries warren has made so far: `warren_db_queries_total` by
/// label set (empty when warren exports no such counter).
pub async fn db_queries(server: SocketAddr) -> Result<Samples> {
    let spec = RequestSpec::new(server, Method::GET, "/metrics");
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    if !answer.status.is_success() {
        bail!("GET /metrics: {}", answer.status);
    }
    let text = std::str::from_utf8(&answer.body).context("GET /metrics: not UTF-8")?;
    Ok(samples(text, DB_QUERIES))
}

/// Sample values by label set (`{origin="request"}`, or `""` for none).
pub type Samples = BTreeMap<String, f64>;

/// The samples of metric `name` in Prometheus/OpenMetrics text
/// (`name{labels} value [timestamp] [# exemplar]`).
pub fn samples(text: &str, name: &str) -> Samples {
    let mut found = Samples::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, rest) = if let Some(inside) = rest.strip_prefix('{') {
            match after_labels(inside) {
                Some(after) => (&rest[..rest.len() - after.len()], after),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            // Another metric whose name starts with this one's.
            continue;
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.entry(labels.to_string()).or_default() += value;
        }
    }
    found
}

/// Adds the increase of each counter from `before` to `after` to `total`
/// (a label set absent before counts from 0).
pub fn add_increase(total: &mut Samples, before: &Samples, after: &Samples) {
    for (labels, now) in after {
        let then = before.get(labels).copied().unwrap_or(0.0);
        *total.entry(labels.clone()).or_default() += now - then;
    }
}

/// What follows the `}` closing a label set (label values are quoted strings
/// that may hold `}` and escaped quotes).
fn after_labels(labels: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(&labels[index + 1..]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn counters_are_read_by_label_set() {
        let text = "# HELP warren_db_queries Database queries.\n\
                    # TYPE warren_db_queries counter\n\
                    warren_db_queries_total{origin=\"request\"} 12\n\
                    warren_db_queries_total{origin=\"odd } \\\" label\"} 3 1700000000\n\
                    warren_db_queries_total_extra 1000\n\
                    warren_db_queries_created{origin=\"x\"} 17000000\n\
                    warren_db_queries_total{origin=\"background\"} 2.5 # {trace_id=\"a\"} 1.0\n\
                    # EOF\n";
        let found = samples(text, DB_QUERIES);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found["{origin=\"request\"}"], 12.0);
        assert_eq!(found["{origin=\"background\"}"], 2.5);
        assert_eq!(found.values().sum::<f64>(), 17.5);
        assert_eq!(samples("warren_db_queries_total 4\n", DB_QUERIES)[""], 4.0);
        assert!(samples("warren_workers{state=\"up\"} 2\n", DB_QUERIES).is_empty());
    }

    #[test]
    fn increases_add_up_by_label_set() {
        let before = Samples::from([("a".to_string(), 5.0)]);
        let after = Samples::from([("a".to_string(), 7.0), ("b".to_string(), 1.0)]);
        let mut total = Samples::from([("a".to_string(), 1.0)]);
        add_increase(&mut total, &before, &after);
        assert_eq!(total, Samples::from([("a".into(), 3.0), ("b".into(), 1.0)]));
    }

    #[test]
    fn the_session_token_comes_from_its_cookie() {
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        assert_eq!(session_token(&headers), None);
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("warren_session=abc.DEF_123; HttpOnly; SameSite=Lax; Path=/"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("abc.DEF_123"));
        let mut prefixed = HeaderMap::new();
        prefixed.append(SET_COOKIE, HeaderValue::from_static("warren_sessionx=1"));
        prefixed.append(
            SET_COOKIE,
            HeaderValue::from_static("warren_session=; Max-Age=0"),
        );
        assert_eq!(session_token(&prefixed), None);
    }

    #[test]
    fn ping_bodies_are_checked() {
        assert!(is_ping_body(br#"{"slot":0}"#));
        assert!(is_ping_body(br#"{"slot":17}"#));
        for bad in [
            &br#"{"slot":}"#[..],
            br#"{"slot":"1"}"#,
            b"",
            br#"{"error":1}"#,
        ] {
            assert!(!is_ping_body(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
