//! Users' web apps, the master's side: the operator's definitions
//! ([`config`]), what runs where (from the workers' `AppChanged` events),
//! and the reverse proxy ([`proxy`]) that serves `/user/{name}/{app}/…`
//! from the user's own instance.
//!
//! The worker owns each app's lifecycle (start, readiness, restarts, idle
//! stop); the master asks it for the app ([`AppOp::Ensure`]), learns where
//! the app answers and with what secret, and then talks to the app itself:
//! the worker never carries the bytes.
//!
//! Invariants: a user reaches only their own apps (the path's name must be
//! the caller's: another's is a 404); warren's session cookie and the
//! client's `Authorization` never reach an app; the app's secret never
//! reaches the client.

pub mod config;
pub mod proxy;

pub use config::{AppDef, AppsConfig};

use crate::metrics::AppMetrics;
use crate::pool::{Pool, PoolError};
use axum::http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use warren_protocol::{
    AppEndpoint, AppInfo, AppOp, AppSpec, AppState, Op, OpError, Reply, UserCtx, UserId,
};

/// How long the proxy trusts what it learnt of a running app before asking
/// its worker again (which also tells the worker the app is in use).
const ENDPOINT_TTL: Duration = Duration::from_secs(1);

/// Between SIGTERM and SIGKILL when an app is stopped on request.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where one user's running app answers, as the proxy uses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: AppEndpoint,
    /// The header proving the proxy to the app (from the launch's secret).
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// The proxy's connection pool key: changes with every launch.
    pub key: String,
}

/// The apps of this server.
pub struct AppsHub {
    /// Replaced as a whole by a reload (SIGHUP).
    config: arc_swap::ArcSwap<AppsConfig>,
    pool: Arc<Pool>,
    metrics: AppMetrics,
    /// Apps starting or running, by user and name, with their slot (from
    /// the workers' events; a worker's death clears its slot's).
    live: Mutex<HashMap<(UserId, String), (u32, AppState)>>,
    /// What the proxy knows of running apps, briefly.
    upstreams: moka::sync::Cache<(UserId, String), Arc<Upstream>>,
    /// Proxied requests in progress (bodies still moving), by user and app:
    /// an app is never stopped as idle while one lasts.
    in_flight: Mutex<HashMap<(UserId, String), InFlight>>,
    /// Pool keys to endpoints and the uid that must be listening there,
    /// for the proxy's connector.
    pub(crate) endpoints: moka::sync::Cache<String, (AppEndpoint, Option<u32>)>,
}

impl AppsHub {
    pub fn new(config: AppsConfig, pool: Arc<Pool>, metrics: AppMetrics) -> Arc<AppsHub> {
        for name in config.apps.keys() {
            metrics.declare(name);
        }
        Arc::new(AppsHub {
            config: arc_swap::ArcSwap::from_pointee(config),
            pool,
            metrics,
            live: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            upstreams: moka::sync::Cache::builder()
                .time_to_live(ENDPOINT_TTL)
                .max_capacity(100_000)
                .build(),
            endpoints: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(3600))
                .max_capacity(100_000)
                .build(),
        })
    }

    pub fn config(&self) -> Arc<AppsConfig> {
        self.config.load_full()
    }

    pub fn def(&self, name: &str) -> Option<Arc<AppDef>> {
        self.config.load().apps.get(name).cloned()
    }

    /// New definitions (SIGHUP): each start from now on uses them; an app
    /// still running keeps the definition it started with until it stops,
    /// except that running instances of an app no longer defined are
    /// stopped. Returns what changed, for the log.
    pub async fn reload(&self, config: AppsConfig) -> AppsReload {
        let old = self.config.load_full();
        let mut change = AppsReload::default();
        for (name, def) in &config.apps {
            match old.apps.get(name) {
                None => change.added.push(name.clone()),
                Some(before) if format!("{before:?}") != format!("{def:?}") => {
                    change.changed.push(name.clone())
                }
                Some(_) => {}
            }
            self.metrics.declare(name);
        }
        change.removed = old
            .apps
            .keys()
            .filter(|name| !config.apps.contains_key(*name))
            .cloned()
            .collect();
        self.config.store(Arc::new(config));
        let running: Vec<(UserId, String)> = self
            .lock_live()
            .keys()
            .filter(|(_, name)| change.removed.contains(name))
            .cloned()
            .collect();
        for (user, name) in running {
            let op = Op::Apps(AppOp::Stop {
                name: name.clone(),
                grace_ms: STOP_GRACE.as_millis() as u64,
            });
            // Only the id matters to the worker (and to the slot it is on).
            if let Err(err) = self.pool.call(&UserCtx::only_id(user), op).await {
                tracing::warn!(app = %name, error = %err, "cannot stop an app no longer defined");
            }
            self.forget(user, &name);
        }
        change
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn metrics(&self) -> &AppMetrics {
        &self.metrics
    }

    /// What the worker is sent to start `def` for `user`.
    pub fn spec(&self, def: &AppDef, user: &UserCtx) -> AppSpec {
        AppSpec {
            name: def.name.clone(),
            argv: def.command.clone(),
            env: def.env.clone(),
            listen: def.listen,
            base_url: format!("/user/{}/{}/", user.name, def.name),
            ready_path: def.ready_path.clone(),
            auth: def.auth.clone(),
            start_timeout_ms: def.start_timeout.as_millis() as u64,
            idle_timeout_ms: def.idle_timeout.as_millis() as u64,
            max_per_user: self.config.load().max_running_per_user,
            read_execute: paths(&def.read_execute),
            read_only: paths(&def.read_only),
        }
    }

    /// Whether the server's limit for `def` leaves room for `user`'s.
    fn may_start(&self, def: &AppDef, user: UserId) -> bool {
        if def.max_running == 0 {
            return true;
        }
        let live = self.lock_live();
        if live.contains_key(&(user, def.name.clone())) {
            return true;
        }
        let running = live.keys().filter(|(_, name)| *name == def.name).count();
        running < def.max_running as usize
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, String), (u32, AppState)>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the user's worker for the app (starting it if need be), waiting
    /// up to `wait` for it to run.
    pub async fn ensure(
        &self,
        def: &AppDef,
        user: &UserCtx,
        wait: Duration,
        retry: bool,
    ) -> Result<AppInfo, PoolError> {
        let op = AppOp::Ensure {
            spec: Box::new(self.spec(def, user)),
            wait_ms: wait.as_millis() as u64,
            may_start: self.may_start(def, user.id),
            retry,
        };
        match self.pool.call(user, Op::Apps(op)).await {
            Ok(Reply::App(info)) => Ok(info),
            Ok(other) => Err(PoolError::Op(OpError::Internal(format!(
                "unexpected reply {other:?}"
            )))),
            Err(PoolError::Op(OpError::TooManyApps {
                app,
                per_user: false,
                ..
            })) => Err(PoolError::Op(OpError::TooManyApps {
                app,
                limit: def.max_running,
                per_user: false,
            })),
            Err(err) => Err(err),
        }
    }

    /// Where the user's app answers, starting it if need be: `Ok(Err(info))`
    /// when it is not running (yet).
    pub async fn upstream(
        &self,
        def: &AppDef,
        user: &UserCtx,
        wait: Duration,
    ) -> Result<Result<Arc<Upstream>, AppInfo>, PoolError> {
        let key = (user.id, def.name.clone());
        if let Some(upstream) = self.upstreams.get(&key) {
            return Ok(Ok(upstream));
        }
        let mut info = self.ensure(def, user, wait, false).await?;
        let Some((endpoint, secret)) = info.endpoint.take() else {
            return Ok(Err(info));
        };
        let auth = def
            .auth
            .header(&user.name, &secret)
            .and_then(|(name, value)| {
                Some((
                    HeaderName::try_from(name).ok()?,
                    HeaderValue::try_from(value).ok()?,
                ))
            });
        // The secret's digest names the launch: a restarted app gets fresh
        // connections.
        let digest = {
            use sha2::Digest;
            let hash = sha2::Sha256::digest(secret.as_bytes());
            hash[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let pool_key = format!("app-{digest}.invalid");
        self.endpoints
            .insert(pool_key.clone(), (endpoint.clone(), info.owner_uid));
        let upstream = Arc::new(Upstream {
            endpoint,
            auth,
            key: pool_key,
        });
        self.upstreams.insert(key, upstream.clone());
        Ok(Ok(upstream))
    }

    /// The proxy could not reach the app: forget where it was.
    pub fn forget(&self, user: UserId, app: &str) {
        self.upstreams.invalidate(&(user, app.to_string()));
    }

    /// A worker said an app changed state.
    pub fn changed(
        &self,
        slot: u32,
        user: UserId,
        name: String,
        state: AppState,
        start: Option<Duration>,
    ) {
        match state {
            AppState::Starting | AppState::Running => {
                self.lock_live().insert((user, name.clone()), (slot, state));
                // A restart has a new endpoint and secret.
                if state == AppState::Starting {
                    self.upstreams.invalidate(&(user, name.clone()));
                }
            }
            AppState::Stopped | AppState::Failed => {
                self.lock_live().remove(&(user, name.clone()));
                self.upstreams.invalidate(&(user, name.clone()));
            }
        }
        match (state, start) {
            (AppState::Running, Some(took)) => self.metrics.started(&name, "running", took),
            (AppState::Failed, _) => self.metrics.start_failed(&name),
            _ => {}
        }
        self.metrics.set_running(&name, self.running_of(&name));
    }

    fn running_of(&self, name: &str) -> usize {
        self.lock_live()
            .iter()
            .filter(|((_, app), (_, state))| app == name && *state == AppState::Running)
            .count()
    }

    /// A worker died, and its users' apps with it.
    pub fn worker_down(&self, slot: u32) {
        let gone: Vec<(UserId, String)> = {
            let mut live = self.lock_live();
            let gone = live
                .iter()
                .filter(|(_, (s, _))| *s == slot)
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>();
            for key in &gone {
                live.remove(key);
            }
            gone
        };
        for key in gone {
            self.upstreams.invalidate(&key);
        }
        for name in self.config.load().apps.keys() {
            self.metrics.set_running(name, self.running_of(name));
        }
    }

    /// Stops every app of `user` (disabled or deleted).
    pub async fn stop_all(&self, user: &UserCtx) {
        let op = AppOp::StopAll {
            grace_ms: STOP_GRACE.as_millis() as u64,
        };
        if let Err(err) = self.pool.call(user, Op::Apps(op)).await {
            tracing::warn!(user = %user.name, error = %err, "cannot stop a user's apps");
        }
        let names: Vec<String> = self.config.load().apps.keys().cloned().collect();
        for name in names {
            self.forget(user.id, &name);
        }
    }
}

fn paths(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

struct InFlight {
    user: UserCtx,
    count: usize,
    last_touch: std::time::Instant,
}

/// A proxied request (or WebSocket) in progress: the app counts as used
/// until this is dropped.
pub struct InFlightGuard {
    hub: Arc<AppsHub>,
    key: (UserId, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self.hub.lock_in_flight();
        if let Some(entry) = in_flight.get_mut(&self.key) {
            entry.count -= 1;
            if entry.count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl AppsHub {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, String), InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a proxied request to `app` of `user` in progress.
    pub fn begin(self: &Arc<Self>, user: &UserCtx, app: &str) -> InFlightGuard {
        let key = (user.id, app.to_string());
        self.lock_in_flight()
            .entry(key.clone())
            .or_insert_with(|| InFlight {
                user: user.clone(),
                count: 0,
                last_touch: std::time::Instant::now(),
            })
            .count += 1;
        InFlightGuard {
            hub: self.clone(),
            key,
        }
    }

    /// How often an app in use is told so: well within its idle timeout.
    pub fn touch_every(&self, app: &str) -> Duration {
        let idle = self.def(app).map_or(Duration::ZERO, |def| def.idle_timeout);
        (idle / 3).clamp(Duration::from_millis(300), Duration::from_secs(10))
    }

    /// Tells the worker the app is in use.
    pub async fn touch(&self, user: &UserCtx, app: &str) {
        let op = Op::Apps(AppOp::Touch {
            name: app.to_string(),
        });
        let _ = self.pool.call(user, op).await;
    }

    /// Until `stop`: tells the workers of the apps with requests in
    /// progress that they are in use (a long download or event stream is
    /// traffic the whole time it lasts).
    pub async fn keep_in_use(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_millis(300));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let due: Vec<(UserCtx, String)> = {
                let mut in_flight = self.lock_in_flight();
                let now = std::time::Instant::now();
                in_flight
                    .iter_mut()
                    .filter(|((_, app), entry)| {
                        now.duration_since(entry.last_touch) >= self.touch_every(app)
                    })
                    .map(|((_, app), entry)| {
                        entry.last_touch = now;
                        (entry.user.clone(), app.clone())
                    })
                    .collect()
            };
            for (user, app) in due {
                let hub = self.clone();
                tokio::spawn(async move { hub.touch(&user, &app).await });
            }
        }
    }
}

/// Stops the apps of each user the feed names who was deleted or disabled,
/// until `stop`.
/// What a reload of the app definitions changed.
#[derive(Debug, Default)]
pub struct AppsReload {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

pub async fn stop_for_gone_users(
    hub: Arc<AppsHub>,
    store: crate::store::Store,
    mut users: tokio::sync::broadcast::Receiver<uuid::Uuid>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let id = tokio::select! {
            () = stop.cancelled() => return,
            user = users.recv() => match user {
                Ok(id) => id,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
        };
        let gone = match store.user_by_id(id).await {
            Ok(None) => true,
            Ok(Some(user)) => user.disabled,
            Err(err) => {
                tracing::warn!(user = %id, error = %err, "cannot check a changed user; their apps keep running");
                false
            }
        };
        if gone {
            // Only the id matters to the worker (and to the slot it is on).
            hub.stop_all(&UserCtx::only_id(id.into())).await;
        }
    }
}
