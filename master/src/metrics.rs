//! Prometheus metrics, exposed at `/metrics` in the OpenMetrics text format.

use crate::pool::supervisor::SlotState;
use crate::pool::SlotReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    feature: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: u32,
}

/// The metrics the pool records on its hot path; cheap to clone.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    restarts: Family<SlotLabels, Counter>,
    ipc_duration: Histogram,
    ipc_inflight: Gauge,
}

impl PoolMetrics {
    pub(crate) fn touch_slot(&self, slot: u32) {
        let _ = self.restarts.get_or_create(&SlotLabels { slot });
    }

    pub(crate) fn count_restart(&self, slot: u32) {
        self.restarts.get_or_create(&SlotLabels { slot }).inc();
    }

    pub(crate) fn observe_call(&self, took: Duration) {
        self.ipc_duration.observe(took.as_secs_f64());
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn inflight_guard(&self) -> InflightGuard {
        self.ipc_inflight.inc();
        InflightGuard(self.ipc_inflight.clone())
    }
}

pub(crate) struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

/// Logins, sessions, the session cache and database queries.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    login_attempts: Family<ResultLabels, Counter>,
    audit_dropped: Family<EventLabels, Counter>,
    sessions_active: Gauge,
    cache_requests: Family<ResultLabels, Counter>,
    db_queries: Family<OriginLabels, Counter>,
}

impl AuthMetrics {
    /// `result`: success, failure, throttled or locked.
    pub(crate) fn login(&self, result: &'static str) {
        self.login_attempts
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// An audit event not stored: beyond the audit log's rate limit.
    pub(crate) fn audit_dropped(&self, event: &'static str) {
        self.audit_dropped
            .get_or_create(&EventLabels { event })
            .inc();
    }

    /// `result`: hit or miss.
    pub(crate) fn cache(&self, result: &'static str) {
        self.cache_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn set_sessions(&self, n: i64) {
        self.sessions_active.set(n);
    }

    /// The counter of queries made while serving requests.
    pub fn request_queries(&self) -> Counter {
        self.db_queries
            .get_or_create(&OriginLabels { origin: "request" })
            .clone()
    }

    /// The counter of queries made by background work (revocation feed,
    /// batched writes, housekeeping).
    pub fn background_queries(&self) -> Counter {
        self.db_queries
            .get_or_create(&OriginLabels {
                origin: "background",
            })
            .clone()
    }
}

/// Requests by route template and status, and their durations.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RouteStatusLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Route templates seen so far. They come from the router's own route
    /// table (never from a raw path), so the set is small and fixed, and
    /// each is leaked once to label metrics without an allocation per
    /// request.
    routes: Arc<RwLock<HashSet<&'static str>>>,
}

impl HttpMetrics {
    /// The `'static` copy of a route template.
    pub(crate) fn route(&self, template: &str) -> &'static str {
        let known = self.routes.read().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = known.get(template) {
            return route;
        }
        drop(known);
        let mut known = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = known.get(template) {
            return route;
        }
        let route: &'static str = Box::leak(template.to_string().into_boxed_str());
        known.insert(route);
        route
    }

    pub(crate) fn observe(&self, route: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RouteStatusLabels { route, status })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileOpLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Workspace file traffic.
#[derive(Debug, Clone)]
pub struct FileMetrics {
    operations: Family<FileOpLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    /// The two members of `bytes`, looked up once.
    bytes_in: Counter,
    bytes_out: Counter,
    quota_rejections: Counter,
}

impl FileMetrics {
    /// `op`: read, write, delete, mkdir, move, copy, clone; `result`: ok or
    /// the error code.
    pub(crate) fn operation(&self, op: &'static str, result: &'static str) {
        self.operations
            .get_or_create(&FileOpLabels { op, result })
            .inc();
        if result == "quota_exceeded" {
            self.quota_rejections.inc();
        }
    }

    /// The counter of request body bytes (uploads).
    pub(crate) fn bytes_in(&self) -> &Counter {
        &self.bytes_in
    }

    /// The counter of response body bytes (downloads).
    pub(crate) fn bytes_out(&self) -> &Counter {
        &self.bytes_out
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// HTTP connections: open, refused by a cap, closed by a timeout.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    rejected: Family<ReasonLabels, Counter>,
    timeouts: Family<KindLabels, Counter>,
    sendfile_bytes: Counter,
}

impl ConnectionMetrics {
    /// Counts file bytes sent with `sendfile` (see `http::sendfile`).
    pub(crate) fn sendfile_bytes(&self) -> Counter {
        self.sendfile_bytes.clone()
    }

    pub(crate) fn opened(&self) {
        self.accepted.inc();
        self.open.inc();
    }

    pub(crate) fn closed(&self) {
        self.open.dec();
    }

    /// `reason`: max_connections or max_connections_per_address.
    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// `kind`: header_read, send or body.
    pub(crate) fn timed_out(&self, kind: &'static str) {
        self.timeouts.get_or_create(&KindLabels { kind }).inc();
    }
}

/// Users' terminals and the WebSockets attached to them.
#[derive(Debug, Clone)]
pub struct TerminalMetrics {
    open: Gauge,
    websockets: Gauge,
    bytes: Family<DirectionLabels, Counter>,
}

impl TerminalMetrics {
    pub(crate) fn websocket_opened(&self) {
        self.websockets.inc();
    }

    pub(crate) fn websocket_closed(&self) {
        self.websockets.dec();
    }

    /// `direction`: in (typed) or out (shown).
    pub(crate) fn bytes(&self, direction: &'static str, count: usize) {
        self.bytes
            .get_or_create(&DirectionLabels { direction })
            .inc_by(count as u64);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppResultLabels {
    app: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostStatusLabels {
    host: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppStatusLabels {
    app: String,
    status: u16,
}

/// Users' apps: running, starts, and the proxy's answers. Label values
/// are the operator's app names (never a client's input) and statuses.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    running: Family<AppLabels, Gauge>,
    starts: Family<AppResultLabels, Counter>,
    start_duration: Family<AppLabels, Histogram, fn() -> Histogram>,
    proxied: Family<AppStatusLabels, Counter>,
}

impl AppMetrics {
    /// Makes an app's series exist before its first start.
    pub(crate) fn declare(&self, app: &str) {
        let _ = self.running.get_or_create(&AppLabels { app: app.into() });
        for result in ["running", "failed"] {
            let _ = self.starts.get_or_create(&AppResultLabels {
                app: app.into(),
                result,
            });
        }
    }

    pub(crate) fn set_running(&self, app: &str, count: usize) {
        self.running
            .get_or_create(&AppLabels { app: app.into() })
            .set(count as i64);
    }

    pub(crate) fn started(&self, app: &str, result: &'static str, took: std::time::Duration) {
        self.starts
            .get_or_create(&AppResultLabels {
                app: app.into(),
                result,
            })
            .inc();
        self.start_duration
            .get_or_create(&AppLabels { app: app.into() })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn start_failed(&self, app: &str) {
        self.starts
            .get_or_create(&AppResultLabels {
                app: app.into(),
                result: "failed",
            })
            .inc();
    }

    pub(crate) fn proxied(&self, app: &str, status: u16) {
        self.proxied
            .get_or_create(&AppStatusLabels {
                app: app.into(),
                status,
            })
            .inc();
    }
}

/// Users' tasks: how they end and how long they take to start.
#[derive(Debug, Clone)]
pub struct TaskMetrics {
    finished: Family<ResultLabels, Counter>,
    spawn_duration: Histogram,
    running: Gauge,
}

impl TaskMetrics {
    /// A task ended: `result` is its final state (exited, failed, killed,
    /// timed_out, lost).
    pub(crate) fn finished(&self, result: warren_protocol::TaskState) {
        self.finished
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// From the worker's receipt of a start to the command's `execve`.
    pub(crate) fn observe_spawn(&self, micros: u64) {
        self.spawn_duration.observe(micros as f64 / 1e6);
    }
}

pub struct Metrics {
    registry: Registry,
    apps: AppMetrics,
    tasks: TaskMetrics,
    terminals: TerminalMetrics,
    connections: ConnectionMetrics,
    files: FileMetrics,
    workers: Family<StateLabels, Gauge>,
    sandbox: Family<FeatureLabels, Gauge>,
    pool: PoolMetrics,
    auth: AuthMetrics,
    http: HttpMetrics,
    forwarded: Family<HostStatusLabels, Counter>,
}

impl Metrics {
    /// A request forwarded to `host`, the user's home host (several
    /// hosts), answered `status` (503: the host is down or out of reach).
    pub fn forwarded(&self, host: &str, status: u16) {
        self.forwarded
            .get_or_create(&HostStatusLabels {
                host: host.into(),
                status,
            })
            .inc();
    }

    /// Sets `warren_sandbox_level{feature}` from the sandbox report.
    pub fn set_sandbox_levels(&self, levels: &[(&'static str, i64)]) {
        for (feature, level) in levels {
            self.sandbox
                .get_or_create(&FeatureLabels { feature })
                .set(*level);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let workers = Family::<StateLabels, Gauge>::default();
        registry.register("warren_workers", "Worker slots by state", workers.clone());
        let sandbox = Family::<FeatureLabels, Gauge>::default();
        registry.register(
            "warren_sandbox_level",
            "What the sandbox of users' processes uses, by feature (1: used, 0: not; landlock: the ABI; allowed: users' processes may start)",
            sandbox.clone(),
        );
        let restarts = Family::<SlotLabels, Counter>::default();
        registry.register(
            "warren_worker_restarts",
            "Times each slot's worker failed and was restarted",
            restarts.clone(),
        );
        // 5 us to ~5 s.
        let ipc_duration = Histogram::new(exponential_buckets(5e-6, 2.0, 21));
        registry.register(
            "warren_ipc_request_duration_seconds",
            "Master-side time of a request to a worker, including any wait for a restart",
            ipc_duration.clone(),
        );
        let ipc_inflight = Gauge::default();
        registry.register(
            "warren_ipc_inflight_requests",
            "Requests sent to workers and not yet answered",
            ipc_inflight.clone(),
        );
        let auth = AuthMetrics {
            login_attempts: Family::default(),
            audit_dropped: Family::default(),
            sessions_active: Gauge::default(),
            cache_requests: Family::default(),
            db_queries: Family::default(),
        };
        registry.register(
            "warren_login_attempts",
            "Login attempts by result (success, failure, throttled, locked)",
            auth.login_attempts.clone(),
        );
        registry.register(
            "warren_audit_dropped",
            "Audit events not stored because their client or user exceeded the audit rate limit, by event",
            auth.audit_dropped.clone(),
        );
        registry.register(
            "warren_sessions_active",
            "Unexpired login sessions in the database",
            auth.sessions_active.clone(),
        );
        registry.register(
            "warren_session_cache_requests",
            "Credential validations by cache result (hit, miss)",
            auth.cache_requests.clone(),
        );
        registry.register(
            "warren_db_queries",
            "Database statements sent, by origin (request, background)",
            auth.db_queries.clone(),
        );
        // Touch both origins so they show as 0 before the first query.
        let _ = (auth.request_queries(), auth.background_queries());
        let http = HttpMetrics {
            routes: Arc::default(),
            requests: Family::default(),
            // 100 us to ~6.5 s.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-4, 2.0, 17))
            }),
        };
        registry.register(
            "warren_http_requests",
            "HTTP requests by route template and status",
            http.requests.clone(),
        );
        registry.register(
            "warren_http_request_duration_seconds",
            "HTTP request duration by route template",
            http.duration.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        let bytes_in = bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .clone();
        let bytes_out = bytes
            .get_or_create(&DirectionLabels { direction: "out" })
            .clone();
        let files = FileMetrics {
            operations: Family::default(),
            bytes,
            bytes_in,
            bytes_out,
            quota_rejections: Counter::default(),
        };
        registry.register(
            "warren_file_operations",
            "Workspace file operations by kind and result",
            files.operations.clone(),
        );
        registry.register(
            "warren_file_bytes",
            "File body bytes by direction (in: uploads, out: downloads)",
            files.bytes.clone(),
        );
        registry.register(
            "warren_quota_rejections",
            "Writes and copies refused because they would exceed the user's quota",
            files.quota_rejections.clone(),
        );
        let connections = ConnectionMetrics {
            open: Gauge::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            timeouts: Family::default(),
            sendfile_bytes: Counter::default(),
        };
        // Every series shows from the start, at 0.
        for reason in ["max_connections", "max_connections_per_address"] {
            let _ = connections.rejected.get_or_create(&ReasonLabels { reason });
        }
        for kind in ["header_read", "send", "body"] {
            let _ = connections.timeouts.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "warren_http_connections_open",
            "HTTP connections open now",
            connections.open.clone(),
        );
        registry.register(
            "warren_http_connections_accepted",
            "HTTP connections accepted (within the connection caps)",
            connections.accepted.clone(),
        );
        registry.register(
            "warren_http_connections_rejected",
            "HTTP connections refused by a cap, by reason (max_connections, max_connections_per_address)",
            connections.rejected.clone(),
        );
        registry.register(
            "warren_http_connection_timeouts",
            "HTTP connections closed by a timeout, by kind (header_read: no complete request headers in time, idle keep-alive included; send: the client accepted no byte of a response for --send-timeout; body: a JSON request body not complete within --body-timeout)",
            connections.timeouts.clone(),
        );
        registry.register(
            "warren_files_sendfile_bytes",
            "File bytes sent to clients with sendfile(2), straight from a file the worker opened (downloads of files over 64 KiB)",
            connections.sendfile_bytes.clone(),
        );
        let tasks = TaskMetrics {
            finished: Family::default(),
            // 100 us to ~6.5 s.
            spawn_duration: Histogram::new(exponential_buckets(1e-4, 2.0, 17)),
            running: Gauge::default(),
        };
        for state in [
            warren_protocol::TaskState::Exited,
            warren_protocol::TaskState::Failed,
            warren_protocol::TaskState::Killed,
            warren_protocol::TaskState::TimedOut,
            warren_protocol::TaskState::Lost,
        ] {
            let _ = tasks.finished.get_or_create(&ResultLabels {
                result: state.as_str(),
            });
        }
        registry.register(
            "warren_tasks",
            "Users' tasks ended, by result (exited, failed, killed, timed_out, lost)",
            tasks.finished.clone(),
        );
        registry.register(
            "warren_task_spawn_duration_seconds",
            "From a worker's receipt of a task to the command's execve (sandbox set-up included)",
            tasks.spawn_duration.clone(),
        );
        registry.register(
            "warren_tasks_running",
            "Users' tasks running now (the workers' last heartbeats)",
            tasks.running.clone(),
        );
        let terminals = TerminalMetrics {
            open: Gauge::default(),
            websockets: Gauge::default(),
            bytes: Family::default(),
        };
        for direction in ["in", "out"] {
            let _ = terminals
                .bytes
                .get_or_create(&DirectionLabels { direction });
        }
        registry.register(
            "warren_terminals_open",
            "Users' terminals open now (the workers' last heartbeats)",
            terminals.open.clone(),
        );
        registry.register(
            "warren_websocket_connections",
            "WebSockets attached to terminals now",
            terminals.websockets.clone(),
        );
        registry.register(
            "warren_terminal_bytes",
            "Bytes through terminals' WebSockets, by direction (in: typed, out: shown)",
            terminals.bytes.clone(),
        );
        let apps = AppMetrics {
            running: Family::default(),
            starts: Family::default(),
            // 10 ms to ~80 s.
            start_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 14))
            }),
            proxied: Family::default(),
        };
        registry.register(
            "warren_apps_running",
            "Users' apps running now, by app",
            apps.running.clone(),
        );
        registry.register(
            "warren_app_starts",
            "Users' app starts, by app and result (running, failed)",
            apps.starts.clone(),
        );
        registry.register(
            "warren_app_start_duration_seconds",
            "From an app's launch to its first answer on ready_path, by app",
            apps.start_duration.clone(),
        );
        registry.register(
            "warren_proxy_requests",
            "Requests proxied to users' apps, by app and status (502: unreachable)",
            apps.proxied.clone(),
        );
        let forwarded = Family::<HostStatusLabels, Counter>::default();
        registry.register(
            "warren_forwarded_requests",
            "Requests of users homed on another host, forwarded there, by host and status (503: down or unreachable)",
            forwarded.clone(),
        );
        Metrics {
            registry,
            forwarded,
            apps,
            sandbox,
            tasks,
            terminals,
            connections,
            files,
            workers,
            auth,
            http,
            pool: PoolMetrics {
                restarts,
                ipc_duration,
                ipc_inflight,
            },
        }
    }

    pub fn apps(&self) -> AppMetrics {
        self.apps.clone()
    }

    pub fn tasks(&self) -> TaskMetrics {
        self.tasks.clone()
    }

    pub fn terminals(&self) -> TerminalMetrics {
        self.terminals.clone()
    }

    pub fn pool(&self) -> PoolMetrics {
        self.pool.clone()
    }

    pub fn files(&self) -> &FileMetrics {
        &self.files
    }

    pub fn auth(&self) -> AuthMetrics {
        self.auth.clone()
    }

    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The text exposition, with gauges derived from the slots' current state.
    pub fn render(&self, slots: &[SlotReport]) -> String {
        for state in SlotState::ALL {
            let count = slots.iter().filter(|slot| slot.state == state).count();
            self.workers
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(count as i64);
        }
        self.tasks
            .running
            .set(slots.iter().map(|slot| i64::from(slot.tasks_running)).sum());
        self.terminals.open.set(
            slots
                .iter()
                .map(|slot| i64::from(slot.terminals_open))
                .sum(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
