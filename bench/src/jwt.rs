//! `warren-bench jwt`: authenticated `/api/v1/ping` with a JWT bearer
//! beside the same with a warren API token (issue 16).
//!
//! One warren (`warren-bench serve`, exactly `warren serve`) started with
//! `--jwt-secret-file` (a random 32-byte secret in the run's temporary
//! directory), `--jwt-issuer`, `--jwt-audience` and
//! `--jwt-username-claim preferred_username`. `--users` local accounts each
//! get an API token (`wrn_…`, `POST /api/v1/me/tokens`, read scope); as many
//! JWTs (HS256, an hour's `exp`) name as many other users, each created by
//! warren on its first request (sent once per user, timed, before the
//! warm-up). Then, in the same run, two series of `GET /api/v1/ping`, both
//! `--concurrency` keep-alive connections back to back, connection k
//! acting as user k mod users:
//! - `Authorization: Bearer wrn_…` (a warren API token);
//! - `Authorization: Bearer eyJ…` (a JWT, verified once and then served
//!   from warren's verification cache until its `exp`).
//!
//! The two take turns in [`SLICES`] slices so that both see the same state
//! of the (shared) machine. Between slices the bench reads `/metrics`:
//! database queries per request (all but `origin="background"`) and the
//! authentication cache's hits and misses, over each series' own slices.
//! Target: JWT throughput ≥ [`TARGET_RATIO`] × the API token's (steady
//! traffic costs no signature check and no query).

use crate::http::api::{self, Samples};
use crate::http::load::{run_into, turns, warm_up, Client, Connection, Outcome, Plan, RequestSpec};
use crate::http::report::{Series, BACKGROUND_LABEL};
use crate::http::{os_args, random_hex, start_warren, stop, Warren};
use crate::report::{
    nanos, per_second_of, render, target_cell, thousands, verdict, Machine, Target,
};
use crate::JwtArgs;
use anyhow::{bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use hyper::{Method, StatusCode};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Slices each series is cut into, taking turns with the other.
pub const SLICES: u32 = 10;
/// JWT throughput over the API token's, at least (issue 16).
pub const TARGET_RATIO: f64 = 0.9;
/// The `iss` of the bench's JWTs (and warren's `--jwt-issuer`).
pub const ISSUER: &str = "https://idp.warren-bench.invalid";
/// The `aud` of the bench's JWTs (and warren's `--jwt-audience`).
pub const AUDIENCE: &str = "warren-bench";
/// The JWTs' lifetime: far beyond a run, so none expires during it.
pub const LIFETIME_SECONDS: u64 = 3600;
/// The authentication cache's counter (`result="hit"|"miss"`).
pub const CACHE_REQUESTS: &str = "warren_session_cache_requests_total";
/// Accounts set up (and first JWT requests sent) at once.
const SETUP_PARALLEL: usize = 4;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The claims of a bench JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub preferred_username: String,
    pub iat: u64,
    pub exp: u64,
}

/// The claims of JWT user `index`, issued at `now` (seconds since the
/// epoch), valid for [`LIFETIME_SECONDS`].
pub fn claims(index: usize, now: u64) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: format!("subject-{index:05}"),
        preferred_username: format!("bench-jwt-{index:05}"),
        iat: now,
        exp: now + LIFETIME_SECONDS,
    }
}

/// `claims` signed with HS256 under `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> Result<String> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_secret(secret);
    encode(&Header::new(Algorithm::HS256), claims, &key).context("cannot sign a JWT")
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub slices: u32,
    /// Users of each kind (local with API tokens, JWT).
    pub users: usize,
    pub concurrency: usize,
    pub workers: u32,
    /// Threads of the load generator's tokio runtime.
    pub bench_threads: usize,
    /// The warren server's process id (for `perf record -p`).
    pub warren_pid: Option<u32>,
}

/// Per series: what `/metrics` counted over its slices.
#[derive(Debug, Serialize)]
pub struct Counted {
    /// `warren_db_queries_total` by label set.
    pub db_queries: Samples,
    /// Label sets other than `origin="background"` / successful requests.
    pub queries_per_request: Option<f64>,
    /// `warren_session_cache_requests_total` by label set.
    pub cache: Samples,
}

impl Counted {
    fn new(db_queries: Samples, cache: Samples, requests: u64) -> Self {
        let foreground: f64 = db_queries
            .iter()
            .filter(|(labels, _)| !labels.contains(BACKGROUND_LABEL))
            .map(|(_, queries)| queries)
            .sum();
        Counted {
            queries_per_request: (requests > 0).then(|| foreground / requests as f64),
            db_queries,
            cache,
        }
    }

    fn cache_cell(&self) -> String {
        let get = |result: &str| {
            self.cache
                .get(&format!("{{result=\"{result}\"}}"))
                .copied()
                .unwrap_or(0.0)
        };
        format!(
            "{} / {}",
            thousands(get("hit") as u64),
            thousands(get("miss") as u64)
        )
    }

    fn queries_cell(&self) -> String {
        self.queries_per_request
            .map_or("-".into(), |per| format!("{per:.4}"))
    }
}

#[derive(Debug, Serialize)]
pub struct JwtReport {
    pub machine: Machine,
    pub settings: Settings,
    /// `Authorization: Bearer wrn_…`.
    pub api_token: Series,
    /// `Authorization: Bearer <JWT>`.
    pub jwt: Series,
    /// JWT req/s over API token req/s.
    pub ratio: f64,
    pub api_token_counted: Counted,
    pub jwt_counted: Counted,
    /// Each JWT user's first request (verify, create the user, cache), at
    /// most [`SETUP_PARALLEL`] at once: median and slowest.
    pub first_jwt_request_p50_ns: u64,
    pub first_jwt_request_max_ns: u64,
    pub targets: Vec<Target>,
}

impl JwtReport {
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut rows: Vec<Vec<String>> = vec![vec![
            "GET /api/v1/ping".into(),
            "requests".into(),
            "rate".into(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "errors".into(),
            "queries/req".into(),
            "cache hit / miss".into(),
            "target".into(),
        ]];
        let series = [
            (
                "Bearer wrn_… (API token)",
                &self.api_token,
                &self.api_token_counted,
                "-".to_string(),
            ),
            (
                "Bearer <JWT> (HS256)",
                &self.jwt,
                &self.jwt_counted,
                target_cell(&self.targets, "JWT"),
            ),
        ];
        for (name, series, counted, target) in &series {
            let p = &series.latency;
            rows.push(vec![
                (*name).into(),
                thousands(series.requests),
                per_second_of(series.per_second, "req/s"),
                nanos(p.p50_ns as f64),
                nanos(p.p90_ns as f64),
                nanos(p.p99_ns as f64),
                thousands(series.errors.total()),
                counted.queries_cell(),
                counted.cache_cell(),
                target.clone(),
            ]);
        }
        let mut text = format!(
            "warren-bench jwt: {} CPUs, {} warren workers, {} users of each kind, \
             {} connections, {} s per series in {} alternating slices (+{} s warm-up)\n\n",
            self.machine.cpus,
            s.workers,
            s.users,
            s.concurrency,
            s.seconds,
            s.slices,
            s.warmup_seconds
        );
        text.push_str(&render(&rows));
        text.push_str(&format!(
            "\nJWT / API token throughput: {:.3}x (target >= {TARGET_RATIO}x {})\n",
            self.ratio,
            verdict(self.ratio >= TARGET_RATIO)
        ));
        text.push_str(&format!(
            "first request of each JWT user (verify + create user): p50 {}, max {}\n",
            nanos(self.first_jwt_request_p50_ns as f64),
            nanos(self.first_jwt_request_max_ns as f64)
        ));
        for (name, series, _, _) in &series {
            if series.errors.total() > 0 {
                text.push_str(&format!("{name}: {}\n", series.errors.describe()));
            }
        }
        text
    }
}

pub async fn run(args: &JwtArgs) -> Result<JwtReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let secret = random_hex(32)?;
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, &secret).context("cannot write the JWT secret file")?;
    let mut extra = os_args(["--jwt-secret-file"]);
    extra.push(secret_file.into());
    extra.extend(os_args([
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-username-claim",
        "preferred_username",
    ]));
    eprintln!("starting warren with {} workers ...", args.workers);
    let warren = start_warren(dir.path(), args.workers, extra).await?;
    if let Some(pid) = warren.process.pid() {
        eprintln!("warren's pid: {pid}");
    }
    let outcome = measure(args, &warren, secret.as_bytes()).await;
    stop(warren.process).await;
    outcome
}

/// `GET /api/v1/ping` with `Authorization: Bearer token`, answer checked.
fn ping(server: SocketAddr, token: &str) -> Result<RequestSpec> {
    Ok(api::bearer(server, Method::GET, "/api/v1/ping", token)?.checked(api::is_ping_body))
}

fn clients(server: SocketAddr, tokens: &[String], count: usize) -> Result<Vec<Client>> {
    (0..count)
        .map(|k| Client::new(server, ping(server, &tokens[k % tokens.len()])?))
        .collect()
}

/// A read-scope API token of a local user: logs in, then
/// `POST /api/v1/me/tokens` with the session.
async fn api_token(server: SocketAddr, name: &str, password: &str) -> Result<String> {
    let session = api::session(server, name, password).await?;
    let spec = api::bearer(server, Method::POST, "/api/v1/me/tokens", &session)?
        .json(&serde_json::json!({ "name": "warren-bench", "scope": "read" }))?;
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating an API token for {name:?}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let created: serde_json::Value =
        serde_json::from_slice(&answer.body).context("POST /api/v1/me/tokens: not JSON")?;
    created["secret"]
        .as_str()
        .map(str::to_string)
        .context("POST /api/v1/me/tokens: no secret in the answer")
}

/// The first request of a JWT user, timed (nanoseconds).
async fn first_request(server: SocketAddr, token: &str) -> Result<u64> {
    let spec = ping(server, token)?;
    let started = Instant::now();
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    let took = started.elapsed().as_nanos() as u64;
    if answer.status != StatusCode::OK || !api::is_ping_body(&answer.body) {
        bail!(
            "first JWT request: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(took)
}

/// `warren_db_queries_total` and the cache counter, by label set.
async fn counters(server: SocketAddr) -> Result<(Samples, Samples)> {
    let spec = RequestSpec::new(server, Method::GET, "/metrics");
    let answer = Connection::new(server).send(&spec, SETUP_TIMEOUT).await?;
    if !answer.status.is_success() {
        bail!("GET /metrics: {}", answer.status);
    }
    let text = std::str::from_utf8(&answer.body).context("GET /metrics: not UTF-8")?;
    Ok((
        api::samples(text, api::DB_QUERIES),
        api::samples(text, CACHE_REQUESTS),
    ))
}

async fn measure(args: &JwtArgs, warren: &Warren, secret: &[u8]) -> Result<JwtReport> {
    let server = warren.process.address;
    let users = args.users as usize;
    let concurrency = args.concurrency as usize;
    let window = args.seconds;
    let warmup = (window / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));

    // Local users with API tokens.
    let admin = api::session(server, "admin", &warren.admin_password)
        .await
        .context("logging in as admin")?;
    let password = random_hex(16)?;
    let names: Vec<String> = (0..users).map(|k| format!("bench-{k:05}")).collect();
    eprintln!("creating {users} accounts and their API tokens ...");
    futures_util::stream::iter(&names)
        .map(|name| api::create_user(server, &admin, name, &password))
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let api_tokens: Vec<String> = futures_util::stream::iter(&names)
        .map(|name| api_token(server, name, &password))
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await?;

    // JWTs, and their users' first requests.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let jwts = (0..users)
        .map(|k| sign(secret, &claims(k, now)))
        .collect::<Result<Vec<_>>>()?;
    eprintln!("first request of each of {users} JWT users ...");
    let mut firsts: Vec<u64> = futures_util::stream::iter(&jwts)
        .map(|jwt| first_request(server, jwt))
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await?;
    firsts.sort_unstable();

    let mut token_clients = clients(server, &api_tokens, concurrency)?;
    let mut jwt_clients = clients(server, &jwts, concurrency)?;
    eprintln!("GET /api/v1/ping, {concurrency} connections: warm-up ...");
    warm_up(&mut [&mut token_clients, &mut jwt_clients], warmup).await?;
    eprintln!(
        "measuring {} s each, in {SLICES} alternating slices ...",
        window.as_secs_f64()
    );
    let slice = window / SLICES;
    let (mut token_ping, mut jwt_ping) = (Outcome::new()?, Outcome::new()?);
    let (mut token_queries, mut jwt_queries) = (Samples::new(), Samples::new());
    let (mut token_cache, mut jwt_cache) = (Samples::new(), Samples::new());
    let mut last = counters(server).await?;
    for index in 0..SLICES {
        // JWT first in even slices, the API token in odd ones.
        for jwt_turn in turns(index) {
            let (clients, total, queries, cache) = if jwt_turn {
                (
                    &mut jwt_clients,
                    &mut jwt_ping,
                    &mut jwt_queries,
                    &mut jwt_cache,
                )
            } else {
                (
                    &mut token_clients,
                    &mut token_ping,
                    &mut token_queries,
                    &mut token_cache,
                )
            };
            run_into(clients, Plan::closed(slice), total).await?;
            let count = counters(server).await?;
            api::add_increase(queries, &last.0, &count.0);
            api::add_increase(cache, &last.1, &count.1);
            last = count;
        }
    }

    let api_token = Series::of(&token_ping);
    let jwt = Series::of(&jwt_ping);
    let ratio = if api_token.per_second > 0.0 {
        jwt.per_second / api_token.per_second
    } else {
        f64::NAN
    };
    let clean = api_token.clean() && jwt.clean();
    let targets = vec![Target {
        name: "JWT / API token throughput".into(),
        target: format!(">= {TARGET_RATIO}x"),
        measured: format!("{ratio:.3}x"),
        met: clean && ratio >= TARGET_RATIO,
    }];
    Ok(JwtReport {
        machine: Machine::current(),
        settings: Settings {
            seconds: window.as_secs_f64(),
            warmup_seconds: warmup.as_secs_f64(),
            slices: SLICES,
            users,
            concurrency,
            workers: args.workers,
            bench_threads: tokio::runtime::Handle::current().metrics().num_workers(),
            warren_pid: warren.process.pid(),
        },
        api_token_counted: Counted::new(token_queries, token_cache, token_ping.completed),
        jwt_counted: Counted::new(jwt_queries, jwt_cache, jwt_ping.completed),
        api_token,
        jwt,
        ratio,
        first_jwt_request_p50_ns: firsts.get(firsts.len() / 2).copied().unwrap_or(0),
        first_jwt_request_max_ns: firsts.last().copied().unwrap_or(0),
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn claims_name_distinct_users_and_expire_in_an_hour() {
        let (a, b) = (claims(0, 1_000), claims(17, 1_000));
        assert_eq!((a.iss.as_str(), a.aud.as_str()), (ISSUER, AUDIENCE));
        assert_eq!(a.preferred_username, "bench-jwt-00000");
        assert_eq!(b.preferred_username, "bench-jwt-00017");
        assert_ne!(a.sub, b.sub);
        assert_eq!((a.iat, a.exp), (1_000, 1_000 + LIFETIME_SECONDS));
        // A valid warren username (external::valid_username's rule).
        assert!(b
            .preferred_username
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }

    #[test]
    fn tokens_verify_with_the_secret_only() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let original = claims(3, now);
        let token = sign(secret, &original).unwrap();
        assert!(token.starts_with("eyJ") && token.matches('.').count() == 2);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let key = DecodingKey::from_secret(secret);
        let decoded = decode::<Claims>(&token, &key, &validation).unwrap();
        assert_eq!(decoded.claims, original);
        let other = DecodingKey::from_secret(b"another secret of thirty-two b..");
        assert!(decode::<Claims>(&token, &other, &validation).is_err());
    }
}
