//! The load generator: HTTP/1.1 keep-alive connections, each driven by its
//! own tokio task, one request at a time. Every answer is timed into an HDR
//! histogram; every failure (status other than 2xx, a body that fails the
//! request's check, a connection error, a timeout) is counted, never dropped.
//!
//! Two paces:
//! - [`Pace::Closed`]: back to back, the next request as soon as the answer is
//!   in; latency is answer minus send, throughput is what the server gives.
//! - [`Pace::Every`]: each connection sends on a fixed schedule (an open
//!   loop, like users who do not wait for the server to be fast). When an
//!   answer comes so late that the next send is overdue, that request's
//!   latency counts from its *scheduled* time, so a stalled server cannot
//!   hide its stall by delaying the requests that would have measured it
//!   (coordinated omission); a request sent on time counts from its send,
//!   so the timer's own lateness (1 ms resolution) is not blamed on the
//!   server.

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Latencies from 1 ns to 2 minutes, to 3 significant digits (~230 KiB).
const LOWEST_NS: u64 = 1;
const HIGHEST_NS: u64 = 120_000_000_000;

pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3).context("cannot create a histogram")
}

/// One request, sent again and again by a [`Client`].
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    /// Path and query.
    pub uri: Uri,
    /// Sent as they are; `Host` is always among them.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// A 2xx answer counts as a success only if its body passes this.
    pub check: fn(&[u8]) -> bool,
}

impl RequestSpec {
    /// `method path` to `server`, with `Host: server`, no body, any answer body.
    pub fn new(server: SocketAddr, method: Method, path: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        if let Ok(host) = HeaderValue::from_str(&server.to_string()) {
            headers.insert(HOST, host);
        }
        RequestSpec {
            method,
            uri: Uri::from_static(path),
            headers,
            body: Bytes::new(),
            check: |_| true,
        }
    }

    /// Adds a header; fails on a value that cannot be a header (such as one
    /// with a line break), which only bad input to the bench can produce.
    pub fn header(mut self, name: HeaderName, value: &str) -> Result<Self> {
        let value =
            HeaderValue::from_str(value).with_context(|| format!("bad {name} header {value:?}"))?;
        self.headers.append(name, value);
        Ok(self)
    }

    pub fn json(self, body: &serde_json::Value) -> Result<Self> {
        let mut spec = self.header(CONTENT_TYPE, "application/json")?;
        spec.body = Bytes::from(body.to_string());
        Ok(spec)
    }

    pub fn checked(mut self, check: fn(&[u8]) -> bool) -> Self {
        self.check = check;
        self
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 keep-alive connection that reconnects (on the next request)
/// after any failure. Its hyper connection is polled in the caller's task,
/// beside the request, not in a task of its own: one task per connection, no
/// hand-off between threads on each request.
pub struct Connection {
    server: SocketAddr,
    /// The local address connections are made from (any when `None`).
    bind: Option<std::net::IpAddr>,
    link: Option<Link>,
}

struct Link {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

impl Connection {
    /// Connects on the first request.
    pub fn new(server: SocketAddr) -> Self {
        Connection {
            server,
            bind: None,
            link: None,
        }
    }

    /// Connects from `local` (an address of this host, such as one of
    /// 127.0.0.0/8 when the server is on loopback), on the first request.
    pub fn bound(server: SocketAddr, local: Option<std::net::IpAddr>) -> Self {
        Connection {
            server,
            bind: local,
            link: None,
        }
    }

    /// Sends one request and reads the whole answer. An error leaves the
    /// connection closed; the next call opens a new one.
    pub async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let link = match self.link.take() {
            Some(link) => link,
            None => Link::open(self.server, self.bind).await?,
        };
        let link = self.link.insert(link);
        let answer = link.exchange(request).await;
        if answer.is_err() {
            self.link = None;
        }
        answer
    }

    /// Drops the connection (after a timeout or a cancelled request, when its
    /// state is unknown).
    pub fn reset(&mut self) {
        self.link = None;
    }

    /// One request with a timeout; any failure becomes an error.
    pub async fn send(&mut self, spec: &RequestSpec, timeout: Duration) -> Result<Answer> {
        match tokio::time::timeout(timeout, self.exchange(spec.request())).await {
            Ok(answer) => answer.map_err(|err| {
                anyhow::anyhow!("{} {} to {}: {err}", spec.method, spec.uri, self.server)
            }),
            Err(_) => {
                self.reset();
                anyhow::bail!(
                    "{} {} to {}: no answer within {timeout:?}",
                    spec.method,
                    spec.uri,
                    self.server
                )
            }
        }
    }
}

impl Link {
    async fn open(server: SocketAddr, bind: Option<std::net::IpAddr>) -> Result<Link, String> {
        let stream = connect_from(server, bind)
            .await
            .map_err(|err| format!("connect to {server}: {err}"))?;
        stream
            .set_nodelay(true)
            .map_err(|err| format!("TCP_NODELAY: {err}"))?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("HTTP handshake with {server}: {err}"))?;
        Ok(Link { sender, driver })
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let Link { sender, driver } = self;
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::select! {
            biased;
            answer = answer => answer.map_err(|err| err.to_string()),
            closed = driver => Err(match closed {
                Ok(()) => "the server closed the connection".to_string(),
                Err(err) => err.to_string(),
            }),
        }
    }
}

/// A TCP connection to `server`, from `local` when given.
pub async fn connect_from(
    server: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(server).await;
    };
    let socket = if server.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

/// Failed requests, by cause.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    /// Answers whose status was not 2xx, by status.
    pub status: BTreeMap<u16, u64>,
    /// 2xx answers whose body failed the request's check.
    pub bad_body: u64,
    /// Connect, I/O and HTTP protocol failures.
    pub transport: u64,
    /// Requests not answered within the timeout.
    pub timeout: u64,
    /// The first failure seen, as an example.
    pub first: Option<String>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status.values().sum::<u64>() + self.bad_body + self.transport + self.timeout
    }

    fn note(&mut self, describe: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(describe());
        }
    }

    fn merge(&mut self, other: Errors) {
        for (status, count) in other.status {
            *self.status.entry(status).or_default() += count;
        }
        self.bad_body += other.bad_body;
        self.transport += other.transport;
        self.timeout += other.timeout;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    /// `503 x12, transport x1 (first: ...)`, or `none`.
    pub fn describe(&self) -> String {
        if self.total() == 0 {
            return "none".into();
        }
        let mut parts: Vec<String> = self
            .status
            .iter()
            .map(|(status, count)| format!("{status} x{count}"))
            .collect();
        for (name, count) in [
            ("bad body", self.bad_body),
            ("transport", self.transport),
            ("timeout", self.timeout),
        ] {
            if count > 0 {
                parts.push(format!("{name} x{count}"));
            }
        }
        match &self.first {
            Some(first) => format!("{} (first: {first})", parts.join(", ")),
            None => parts.join(", "),
        }
    }
}

/// What a set of connections achieved over one or more runs.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Successful requests (2xx, body checked).
    pub completed: u64,
    pub errors: Errors,
    /// Requests in flight when the run was cancelled: neither success nor
    /// failure, and not in the histogram.
    pub abandoned: u64,
    /// Wall time of the run(s), from the first task's start to the last one's end.
    pub elapsed: Duration,
    /// Latency of each successful request, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    pub fn new() -> Result<Self> {
        Ok(Outcome {
            completed: 0,
            errors: Errors::default(),
            abandoned: 0,
            elapsed: Duration::ZERO,
            latency: histogram()?,
        })
    }

    /// Successful requests per second of wall time.
    pub fn per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.completed as f64 / seconds
        } else {
            0.0
        }
    }

    /// Adds another run of the same series (its time included).
    pub fn merge(&mut self, other: &Outcome) -> Result<()> {
        self.completed += other.completed;
        self.errors.merge(other.errors.clone());
        self.abandoned += other.abandoned;
        self.elapsed += other.elapsed;
        self.latency
            .add(&other.latency)
            .context("cannot merge latency histograms")
    }
}

/// How a connection spaces its requests.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Back to back.
    Closed,
    /// One request per interval, on a fixed schedule.
    Every(Duration),
}

/// How long a run lasts and how its connections behave.
#[derive(Debug, Clone)]
pub struct Plan {
    /// No request starts at or after this instant; requests in flight then
    /// are finished and counted (unless `cancel` fires).
    pub until: Instant,
    pub pace: Pace,
    /// Ends the run at once, abandoning requests in flight. `None` for runs
    /// that end at `until` (it saves a synchronised check per request).
    pub cancel: Option<CancellationToken>,
    /// A request not answered in this time fails and its connection is reset.
    pub timeout: Duration,
}

impl Plan {
    pub fn closed(length: Duration) -> Self {
        Plan {
            until: Instant::now() + length,
            pace: Pace::Closed,
            cancel: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// One connection and the request it sends: one simulated client.
pub struct Client {
    connection: Connection,
    spec: RequestSpec,
    /// Reused from run to run (an HDR histogram is ~230 KiB).
    latency: Histogram<u64>,
}

impl Client {
    pub fn new(server: SocketAddr, spec: RequestSpec) -> Result<Self> {
        Ok(Client {
            connection: Connection::new(server),
            spec,
            latency: histogram()?,
        })
    }

    async fn run(mut self, plan: Plan, first: Instant) -> (Client, TaskCounts) {
        let mut outcome = TaskCounts::default();
        let mut next = first;
        loop {
            let scheduled = match plan.pace {
                Pace::Closed => Instant::now(),
                Pace::Every(interval) => {
                    let due = next;
                    next += interval;
                    if due >= plan.until {
                        break;
                    }
                    if Instant::now() >= due {
                        // Behind schedule because an answer came late: the
                        // wait counts against the server.
                        due
                    } else {
                        match &plan.cancel {
                            Some(cancel) => tokio::select! {
                                _ = cancel.cancelled() => break,
                                _ = tokio::time::sleep_until(due.into()) => {}
                            },
                            None => tokio::time::sleep_until(due.into()).await,
                        }
                        // On schedule: timed from now, so the timer's own
                        // lateness (tokio's resolution is 1 ms) is not counted.
                        Instant::now()
                    }
                }
            };
            if scheduled >= plan.until {
                break;
            }
            let request = self.spec.request();
            let exchange = tokio::time::timeout(plan.timeout, self.connection.exchange(request));
            let result = match &plan.cancel {
                Some(cancel) => tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        outcome.abandoned += 1;
                        self.connection.reset();
                        break;
                    }
                    result = exchange => result,
                },
                None => exchange.await,
            };
            let took = scheduled.elapsed();
            let errors = &mut outcome.errors;
            match result {
                Ok(Ok(answer)) if !answer.status.is_success() => {
                    *errors.status.entry(answer.status.as_u16()).or_default() += 1;
                    errors.note(|| {
                        format!(
                            "{} {}: {} {}",
                            self.spec.method,
                            self.spec.uri,
                            answer.status,
                            String::from_utf8_lossy(&answer.body)
                        )
                    });
                }
                Ok(Ok(answer)) if !(self.spec.check)(&answer.body) => {
                    errors.bad_body += 1;
                    errors.note(|| {
                        format!(
                            "{} {}: unexpected body {:?}",
                            self.spec.method,
                            self.spec.uri,
                            String::from_utf8_lossy(&answer.body)
                        )
                    });
                }
                Ok(Ok(_)) => {
                    outcome.completed += 1;
                    self.latency.saturating_record(took.as_nanos() as u64);
                }
                Ok(Err(message)) => {
                    errors.transport += 1;
                    errors.note(|| message);
                }
                Err(_) => {
                    errors.timeout += 1;
                    self.connection.reset();
                    errors.note(|| format!("no answer within {:?}", plan.timeout));
                }
            }
            if let Some(cancel) = &plan.cancel {
                if cancel.is_cancelled() {
                    break;
                }
            }
        }
        (self, outcome)
    }
}

/// A task's counts (its latencies stay in its [`Client`] until merged).
#[derive(Default)]
struct TaskCounts {
    completed: u64,
    errors: Errors,
    abandoned: u64,
}

/// Runs every client in its own task under `plan` and gathers the outcome.
/// The clients come back (connections still open) for the next run.
/// One run of `clients` under `plan`, added to `total`.
pub async fn run_into(clients: &mut Vec<Client>, plan: Plan, total: &mut Outcome) -> Result<()> {
    let (back, outcome) = drive(std::mem::take(clients), plan).await?;
    *clients = back;
    total.merge(&outcome)
}

/// Runs each group of clients for `duration`, discarding the figures; a run
/// whose warm-up fails will fail its figures too, so that is said now.
/// Who runs first in slice `index` of an alternating measurement: warren
/// (`true`) in even slices, the reference in odd ones (W B B W W B …), so
/// neither always follows the other.
pub fn turns(index: u32) -> [bool; 2] {
    if index.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

pub async fn warm_up(groups: &mut [&mut Vec<Client>], duration: Duration) -> Result<()> {
    let mut discard = Outcome::new()?;
    for clients in groups.iter_mut() {
        run_into(clients, Plan::closed(duration), &mut discard).await?;
    }
    if discard.errors.total() > 0 {
        eprintln!(
            "warning: errors in the warm-up: {}",
            discard.errors.describe()
        );
    }
    Ok(())
}

pub async fn drive(clients: Vec<Client>, plan: Plan) -> Result<(Vec<Client>, Outcome)> {
    let count = clients.len().max(1);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            // Paced clients start spread evenly over one interval.
            let phase = match plan.pace {
                Pace::Closed => Duration::ZERO,
                Pace::Every(interval) => interval.mul_f64(index as f64 / count as f64),
            };
            tokio::spawn(client.run(plan.clone(), started + phase))
        })
        .collect();
    let mut total = Outcome::new()?;
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (mut client, outcome) = task.await.context("a load task panicked")?;
        total.completed += outcome.completed;
        total.abandoned += outcome.abandoned;
        total.errors.merge(outcome.errors);
        total
            .latency
            .add(&client.latency)
            .context("cannot merge latency histograms")?;
        client.latency.reset();
        clients.push(client);
    }
    total.elapsed = started.elapsed();
    Ok((clients, total))
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(latency: &Histogram<u64>) -> Self {
        Percentiles {
            samples: latency.len(),
            mean_ns: latency.mean(),
            p50_ns: latency.value_at_quantile(0.50),
            p90_ns: latency.value_at_quantile(0.90),
            p99_ns: latency.value_at_quantile(0.99),
            p999_ns: latency.value_at_quantile(0.999),
            max_ns: latency.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    /// An in-process server: `/ok` answers `{"slot":0}`, `/missing` 404.
    async fn server() -> SocketAddr {
        let app = axum::Router::new().route("/ok", get(|| async { r#"{"slot":0}"# }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    fn clients(server: SocketAddr, path: &'static str, count: usize) -> Vec<Client> {
        (0..count)
            .map(|_| Client::new(server, RequestSpec::new(server, Method::GET, path)).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_counts_every_answer_and_times_it() {
        let server = server().await;
        let (clients, outcome) = drive(
            clients(server, "/ok", 4),
            Plan::closed(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        assert_eq!(clients.len(), 4);
        assert!(
            outcome.completed > 10,
            "{} done, {:?}",
            outcome.completed,
            outcome.errors
        );
        assert_eq!(outcome.errors.total(), 0, "{:?}", outcome.errors);
        assert_eq!(outcome.latency.len(), outcome.completed);
        assert!(outcome.elapsed >= Duration::from_millis(200));
        // The same connections serve a second run, and outcomes add up.
        let (_, again) = drive(clients, Plan::closed(Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(again.latency.len(), again.completed, "histograms are reset");
        let mut sum = outcome.clone();
        sum.merge(&again).unwrap();
        assert_eq!(sum.completed, outcome.completed + again.completed);
        assert_eq!(sum.latency.len(), sum.completed);
    }

    #[tokio::test]
    async fn failures_are_counted_by_cause() {
        let server = server().await;
        let (_, outcome) = drive(
            clients(server, "/missing", 1),
            Plan::closed(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        assert_eq!(outcome.completed, 0);
        assert!(outcome.errors.status[&404] > 0);
        assert_eq!(outcome.errors.total(), outcome.errors.status[&404]);

        let spec = RequestSpec::new(server, Method::GET, "/ok").checked(|body| body == b"{}");
        let (_, outcome) = drive(
            vec![Client::new(server, spec).unwrap()],
            Plan::closed(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        assert!(outcome.errors.bad_body > 0 && outcome.completed == 0);
        assert!(outcome.errors.describe().contains("unexpected body"));

        // Nobody listens on a port just released.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (_, outcome) = drive(
            clients(closed, "/ok", 1),
            Plan::closed(Duration::from_millis(20)),
        )
        .await
        .unwrap();
        assert!(outcome.errors.transport > 0 && outcome.completed == 0);
    }

    #[tokio::test]
    async fn a_paced_client_keeps_its_schedule_and_cancel_stops_it() {
        let server = server().await;
        let plan = Plan {
            until: Instant::now() + Duration::from_millis(300),
            pace: Pace::Every(Duration::from_millis(10)),
            cancel: None,
            timeout: Duration::from_secs(5),
        };
        let (_, outcome) = drive(clients(server, "/ok", 2), plan).await.unwrap();
        // 2 clients x 30 slots at most; slack for a loaded machine.
        assert!(
            (40..=60).contains(&outcome.completed),
            "{} done, {:?}",
            outcome.completed,
            outcome.errors
        );

        let cancel = CancellationToken::new();
        let plan = Plan {
            until: Instant::now() + Duration::from_secs(60),
            pace: Pace::Closed,
            cancel: Some(cancel.clone()),
            timeout: Duration::from_secs(5),
        };
        let run = tokio::spawn(drive(clients(server, "/ok", 2), plan));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        let (_, outcome) = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(outcome.completed > 0 && outcome.errors.total() == 0);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut latency = histogram().unwrap();
        for micros in 1..=1000u64 {
            latency.record(micros * 1_000).unwrap();
        }
        let summary = Percentiles::of(&latency);
        assert_eq!(summary.samples, 1000);
        // Three significant digits.
        assert!(summary.p50_ns.abs_diff(500_000) <= 500, "{summary:?}");
        assert!(summary.p99_ns.abs_diff(990_000) <= 990, "{summary:?}");
        assert!(summary.max_ns.abs_diff(1_000_000) <= 1_000, "{summary:?}");
    }

    #[test]
    fn errors_describe_themselves() {
        let mut errors = Errors::default();
        assert_eq!(errors.describe(), "none");
        errors.status.insert(503, 2);
        errors.timeout = 1;
        errors.note(|| "first one".into());
        errors.note(|| "second one".into());
        assert_eq!(errors.total(), 3);
        assert_eq!(errors.describe(), "503 x2, timeout x1 (first: first one)");
    }
}
