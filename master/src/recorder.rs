//! The task recorder: turns what the pool reports (a task ended, a worker
//! died or came up) into task records, metrics and activity events.
//!
//! Workers never touch the database; the master writes every record. A
//! record stays `running` only while a live worker of this master runs it:
//! - a worker's `TaskEnded` event ends it (only while it is `running`, so
//!   a late report never overwrites an end);
//! - a worker's death (`WorkerDown`, which the pool sends after that
//!   worker's last event) marks its running tasks `lost`: the worker took
//!   its users' processes with it;
//! - every [`RECONCILE_INTERVAL`], running tasks whose worker is not their
//!   slot's live one are marked `lost` too (a worker that died between
//!   answering a start and the handler recording its pid);
//! - at start, before any worker runs, every task this master left
//!   `running` is `lost` ([`lose_all_at_start`]).
//!
//! Events are applied in order, each retried with back-off while the
//! database is out of reach: they wait in the pool's queue meanwhile,
//! never dropped.

use crate::activity::{ActivityHub, ActivityKind};
use crate::metrics::TaskMetrics;
use crate::pool::{Pool, PoolEvent};
use crate::store::{now_ms, LostTasks, Store, StoreError, TaskRecord, TaskUpdate};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};
use uuid::Uuid;
use warren_protocol::Event;

/// How often running records are checked against the live workers.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// A confirmed task whose worker is not its slot's live one is lost once
/// its record is this old (younger ones may still be on their way).
const STALE_AFTER: Duration = Duration::from_secs(5);

/// A task no worker ever confirmed (the start's answer was lost with its
/// worker) is lost once its record is this old: longer than any start.
const UNCONFIRMED_AFTER: Duration = Duration::from_secs(60);

/// The longest wait between two attempts at writing an event.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Attempts at a write that fails for another reason than an outage (a
/// bug, a corrupt row) before the event is given up, loudly.
const NON_OUTAGE_ATTEMPTS: u32 = 3;

pub struct Recorder {
    pub store: Store,
    pub pool: Arc<Pool>,
    pub activity: Arc<ActivityHub>,
    pub metrics: TaskMetrics,
    /// This master's identity in the task records.
    pub master_id: String,
    /// Users' apps: told of their state changes and of workers' deaths.
    pub apps: Option<Arc<crate::apps::AppsHub>>,
}

/// Marks `lost` every task this master left `running`: at start, its old
/// workers (and their users' processes) are gone.
pub async fn lose_all_at_start(store: &Store, master_id: &str) -> Result<u64, StoreError> {
    let lost = store
        .lose_tasks(
            master_id,
            LostTasks::All,
            "the server restarted while the task ran",
        )
        .await?;
    if !lost.is_empty() {
        info!(
            tasks = lost.len(),
            "tasks left running by the last run of this server are lost"
        );
    }
    Ok(lost.len() as u64)
}

impl Recorder {
    /// Records the pool's events until the pool stops (its queue closes).
    pub async fn run(self, mut events: UnboundedReceiver<PoolEvent>) {
        let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.apply(event).await,
                    None => break,
                },
                _ = reconcile.tick() => {
                    // What the pool already said comes first: a worker's
                    // last events before the check of its tasks.
                    while let Ok(event) = events.try_recv() {
                        self.apply(event).await;
                    }
                    self.reconcile().await;
                }
            }
        }
        debug!("task recorder stopped");
    }

    async fn apply(&self, event: PoolEvent) {
        match event {
            PoolEvent::Worker {
                event: Event::TaskEnded { user, task, end },
                ..
            } => {
                let id = Uuid::from_bytes(task.0);
                let update = TaskUpdate::Ended(end);
                let recorded = self
                    .retry("record a task's end", || {
                        self.store.update_task(id, &update)
                    })
                    .await
                    .flatten();
                match recorded {
                    Some(record) if record.user_id.as_bytes() == user.as_bytes() => {
                        self.finished(&record)
                    }
                    Some(record) => {
                        warn!(task = %id, "a worker reported a task's end for another user than its record's");
                        self.finished(&record);
                    }
                    // Already ended (a cancel raced its end) or deleted.
                    None => debug!(task = %id, "end of a task no longer running"),
                }
            }
            PoolEvent::Worker {
                slot,
                event:
                    Event::AppChanged {
                        user,
                        name,
                        state,
                        start_micros,
                    },
                ..
            } => {
                if let Some(apps) = &self.apps {
                    let took = start_micros.map(Duration::from_micros);
                    apps.changed(slot, user, name, state, took);
                }
            }
            PoolEvent::WorkerDown {
                slot,
                worker_pid,
                reason,
            } => {
                if let Some(apps) = &self.apps {
                    apps.worker_down(slot);
                }
                let which = LostTasks::OfWorker { slot, worker_pid };
                let error = format!("its worker process died ({reason})");
                let lost = self
                    .retry("mark a dead worker's tasks lost", || {
                        self.store.lose_tasks(&self.master_id, which, &error)
                    })
                    .await
                    .unwrap_or_default();
                if !lost.is_empty() {
                    warn!(
                        slot,
                        worker_pid,
                        tasks = lost.len(),
                        "a worker died: its running tasks are lost"
                    );
                }
                for record in &lost {
                    self.finished(record);
                }
                self.activity.publish_system(ActivityKind::WorkerDown {
                    slot,
                    worker_pid,
                    reason,
                });
                // The slot's processes are already gone: the supervisor
                // empties its cgroups once the worker is reaped, before it
                // sends WorkerDown (`PoolConfig::sandbox`).
            }
            PoolEvent::WorkerUp { slot, worker_pid } => {
                self.activity
                    .publish_system(ActivityKind::WorkerUp { slot, worker_pid });
            }
        }
    }

    /// Running records whose worker is not their slot's live one are lost.
    async fn reconcile(&self) {
        let now = now_ms();
        for (slot, live_pid) in self.pool.worker_pids().into_iter().enumerate() {
            let Ok(slot) = u32::try_from(slot) else {
                break;
            };
            let which = LostTasks::Stale {
                slot,
                live_pid,
                started_before_ms: now - STALE_AFTER.as_millis() as i64,
                unconfirmed_before_ms: now - UNCONFIRMED_AFTER.as_millis() as i64,
            };
            let error = "its worker process is gone";
            // One try: the next round tries again.
            match self.store.lose_tasks(&self.master_id, which, error).await {
                Ok(lost) => {
                    if !lost.is_empty() {
                        warn!(
                            slot,
                            tasks = lost.len(),
                            "running tasks of a worker that is gone are lost"
                        );
                    }
                    for record in &lost {
                        self.finished(record);
                    }
                }
                // During an outage every round (every slot's check) fails
                // alike: one line every few seconds says so.
                Err(err) => {
                    if let Some(left_out) = crate::store::OUTAGE_LOG.admit("check running tasks") {
                        warn!(
                            error = %err,
                            left_out,
                            "cannot check running tasks against the workers"
                        );
                    }
                }
            }
        }
    }

    /// Counts an ended task and tells the feed. A task whose start the
    /// handler has not recorded yet (a command that ended at once) is told
    /// by that handler, after its start, so the feed never shows an end
    /// before its start; a lost one is told here whatever came before.
    fn finished(&self, record: &TaskRecord) {
        self.metrics.finished(record.state);
        if record.worker_pid.is_some() || record.state == warren_protocol::TaskState::Lost {
            self.activity
                .publish(record.user_id, None, finished_event(record));
        }
    }

    /// Runs `write` until it succeeds, waiting longer after each failure
    /// (up to [`MAX_BACKOFF`]) while the database is out of reach; gives
    /// up after a few attempts on other errors, which waiting won't fix.
    async fn retry<T, F, Fut>(&self, what: &str, mut write: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match write().await {
                Ok(value) => {
                    if attempt > 1 {
                        info!(attempt, "recorded after the database came back: {what}");
                    }
                    return Some(value);
                }
                Err(err) if err.outage().is_none() && attempt >= NON_OUTAGE_ATTEMPTS => {
                    error!(error = %err, attempt, "cannot {what}; giving this event up");
                    return None;
                }
                Err(err) => {
                    // An outage's retries: one line every few seconds.
                    let admitted = match err.outage() {
                        None => Some(0),
                        Some(_) => crate::store::OUTAGE_LOG.admit("record task events"),
                    };
                    if let Some(left_out) = admitted {
                        warn!(error = %err, attempt, left_out, retry_in = ?delay, "cannot {what}; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The feed's event for a record that ended.
pub fn finished_event(record: &TaskRecord) -> ActivityKind {
    ActivityKind::TaskFinished {
        task: record.id,
        state: record.state.as_str(),
        exit_code: record.exit_code,
        signal: record.signal,
        error: record.error.clone(),
    }
}
