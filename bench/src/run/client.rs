//! The HTTP side of `warren-bench run`: the target (`--target URL`, warren
//! itself or nginx in front of it), keep-alive connections kept per user,
//! and the sorting of every failure into a kind the report counts.

use crate::http::load::{Answer, Connection};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, COOKIE, HOST, ORIGIN, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// As given, without a trailing `/`.
    pub url: String,
    pub address: SocketAddr,
    /// `host[:port]` as given: the `Host` header.
    pub authority: String,
    /// The URL's path (`/warren` when warren is served under a prefix), or
    /// empty.
    pub prefix: String,
    /// `http://authority`: the `Origin` a browser on this site sends.
    pub origin: String,
}

impl Target {
    /// `http://host[:port][/prefix]`. TLS is not spoken: point the harness
    /// at nginx's plain listener on the host, or at warren itself.
    pub async fn parse(url: &str) -> Result<Target> {
        let url = url.trim().trim_end_matches('/');
        if url.contains(['?', '#']) {
            bail!("--target {url}: a query or fragment has no place in the target");
        }
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                bail!("--target {url}: https is not spoken by the harness; use the plain http listener (nginx's on the host, or warren's --listen)");
            }
            bail!("--target {url:?}: not an http:// URL");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("--target {url:?}: no host, or credentials in the URL");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let address = tokio::net::lookup_host(with_port.as_str())
            .await
            .with_context(|| format!("--target {url}: cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("--target {url}: {authority} has no address"))?;
        Ok(Target {
            url: url.to_string(),
            address,
            authority: authority.to_string(),
            prefix: prefix.to_string(),
            origin: format!("http://{authority}"),
        })
    }
}

/// A request as the harness sends it.
pub struct Call<'a> {
    pub method: Method,
    /// Below the target's prefix, query included.
    pub path: &'a str,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: &'a str) -> Self {
        Call {
            method,
            path,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header(hyper::header::CONTENT_TYPE, "application/json")
            .body(value.to_string())
    }
}

/// Keep-alive connections to the target, from one local address, taken
/// one per request in flight (an open-model run may have several at once
/// for one user).
pub struct Pool {
    target: std::sync::Arc<Target>,
    bind: Option<IpAddr>,
    /// With when each was last used.
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// Idle connections one pool keeps; more are closed after their request.
const MAX_IDLE: usize = 4;

/// A connection idle this long is not used again: the server may be
/// closing it (warren's `--header-read-timeout` is 15 s by default,
/// nginx's `keepalive_timeout` 75 s), and a request sent into a closing
/// connection fails for the client's reasons, not the server's.
const REUSE_WITHIN: Duration = Duration::from_secs(10);

impl Pool {
    pub fn new(target: std::sync::Arc<Target>, bind: Option<IpAddr>) -> Self {
        Pool {
            target,
            bind,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A new TCP connection to the target from the pool's address (for a
    /// WebSocket).
    pub async fn connect(&self) -> Result<tokio::net::TcpStream, String> {
        let stream = crate::http::load::connect_from(self.target.address, self.bind).await;
        let stream = stream.map_err(|_| "connect".to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends `call` with `Host`, `Origin` and the session cookie (if any);
    /// a failure is already sorted into its kind.
    pub async fn send(
        &self,
        call: Call<'_>,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let target = &self.target;
        let mut request = Request::new(Full::new(call.body));
        *request.method_mut() = call.method;
        *request.uri_mut() = format!("{}{}", target.prefix, call.path)
            .parse()
            .map_err(|_| "bad-path".to_string())?;
        let headers = request.headers_mut();
        let mut put = |name: HeaderName, value: &str| -> Result<(), String> {
            let value = HeaderValue::from_str(value).map_err(|_| "bad-header".to_string())?;
            headers.append(name, value);
            Ok(())
        };
        put(HOST, &target.authority)?;
        put(ORIGIN, &target.origin)?;
        if let Some(token) = session {
            put(COOKIE, &format!("warren_session={token}"))?;
        }
        for (name, value) in call.headers {
            put(name, &value)?;
        }
        let taken = self.idle.lock().ok().and_then(|mut idle| {
            idle.retain(|(_, used)| used.elapsed() < REUSE_WITHIN);
            idle.pop().map(|(connection, _)| connection)
        });
        let mut connection = taken.unwrap_or_else(|| Connection::bound(target.address, self.bind));
        match tokio::time::timeout(timeout, connection.exchange(request)).await {
            Ok(Ok(answer)) => {
                // A connection the server is closing is not reused.
                let closing = answer
                    .headers
                    .get(hyper::header::CONNECTION)
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|value| value.eq_ignore_ascii_case("close"));
                if closing {
                    return Ok(answer);
                }
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push((connection, Instant::now()));
                    }
                }
                Ok(answer)
            }
            Ok(Err(err)) => Err(failure_kind(&err).to_string()),
            Err(_) => Err("timeout".to_string()),
        }
    }
}

/// `connect` for a connection that could not be made, `closed` for one
/// that ended before the whole answer.
fn failure_kind(error: &str) -> &'static str {
    if error.starts_with("connect to") || error.starts_with("HTTP handshake") {
        "connect"
    } else {
        "closed"
    }
}

/// A 2xx passes; anything else becomes its error kind: the status, with
/// ` without Retry-After` for a 429 or 503 that does not say when to come
/// back (an unclean refusal).
pub fn status_kind(answer: &Answer) -> Result<(), String> {
    if answer.status.is_success() {
        return Ok(());
    }
    let code = answer.status.as_u16();
    if matches!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && !answer.headers.contains_key(RETRY_AFTER)
    {
        return Err(format!("{code} without Retry-After"));
    }
    Err(code.to_string())
}

/// Each user's local address from `--source-ips CIDR` (IPv4): the `n`th
/// address after the network's, so users appear to come from their own
/// machines (warren's per-address login limits and lockouts then apply per
/// user, as in production).
pub fn source_address(cidr: &str, n: u32) -> Result<IpAddr> {
    let (base, bits) = cidr
        .split_once('/')
        .with_context(|| format!("--source-ips {cidr:?}: not a CIDR such as 127.1.0.0/16"))?;
    let base: std::net::Ipv4Addr = base
        .parse()
        .with_context(|| format!("--source-ips {cidr:?}: not an IPv4 network"))?;
    let bits: u32 = bits
        .parse()
        .ok()
        .filter(|bits| *bits <= 32)
        .with_context(|| format!("--source-ips {cidr:?}: bad prefix length"))?;
    let size = 1u64 << (32 - bits);
    if u64::from(n) + 2 >= size {
        bail!(
            "--source-ips {cidr}: {} addresses, too few for user {n}",
            size
        );
    }
    Ok(IpAddr::V4(std::net::Ipv4Addr::from(
        u32::from(base) & !((size - 1) as u32) | (n + 1),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_parse_with_and_without_port_and_prefix() {
        let target = Target::parse("http://127.0.0.1:8080/").await.unwrap();
        assert_eq!(target.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.prefix, "");
        assert_eq!(target.origin, "http://127.0.0.1:8080");
        let target = Target::parse("http://127.0.0.1/warren").await.unwrap();
        assert_eq!(target.address.port(), 80);
        assert_eq!(target.prefix, "/warren");
        assert_eq!(target.authority, "127.0.0.1");
        for bad in ["https://x", "ftp://x", "http://", "http://u:p@127.0.0.1"] {
            assert!(Target::parse(bad).await.is_err(), "{bad}");
        }
    }

    #[test]
    fn source_addresses_stay_inside_the_network() {
        assert_eq!(
            source_address("127.1.0.0/16", 0).unwrap(),
            "127.1.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_address("127.1.0.0/16", 300).unwrap(),
            "127.1.1.45".parse::<IpAddr>().unwrap()
        );
        assert!(source_address("127.1.0.0/30", 2).is_err());
        assert!(source_address("127.1.0.0", 0).is_err());
        assert!(source_address("::1/128", 0).is_err());
    }
}
