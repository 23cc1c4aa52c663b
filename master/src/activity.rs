//! The live activity feed: what users' tasks and file changes are doing,
//! as it happens, for `GET /api/v1/activity` (a user's own events in full,
//! only counts of everyone else's) and `GET /api/v1/admin/activity`
//! (everything, with names, and the workers' restarts).
//!
//! One bounded broadcast channel carries every event; each SSE client holds
//! a receiver. A client that falls more than [`CHANNEL_CAPACITY`] events
//! behind (it stopped reading, or reads too slowly) is told it lagged and
//! its stream ends: nothing is ever buffered for a client without bound.
//! The hub also keeps, per user, the tasks running and the time of the last
//! event, from which the aggregates other users see are counted. It knows
//! only this master's events (several masters sharing a database each have
//! their own feed).

use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events in flight to the feed's clients; a client further behind than
/// this is dropped.
pub const CHANNEL_CAPACITY: usize = 1024;

/// A user counts as active while a task of theirs runs, or for this long
/// after their last event.
pub const ACTIVE_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Users whose presence the hub remembers at most (the least recently
/// active are forgotten first), so the map cannot grow without bound.
const MAX_TRACKED_USERS: usize = 100_000;

/// What happened. A user's own feed shows it as it is; other users never
/// see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActivityKind {
    TaskStarted {
        task: Uuid,
        command: Vec<String>,
        cwd: String,
    },
    TaskFinished {
        task: Uuid,
        /// `exited`, `failed`, `killed`, `timed_out` or `lost`.
        state: &'static str,
        exit_code: Option<i32>,
        signal: Option<i32>,
        error: Option<String>,
    },
    FileWritten {
        path: String,
    },
    FileDeleted {
        path: String,
    },
    FileMoved {
        from: String,
        to: String,
    },
    FileCopied {
        from: String,
        to: String,
    },
    DirCreated {
        path: String,
    },
    /// A worker process died (admins only); its running tasks are lost.
    WorkerDown {
        slot: u32,
        worker_pid: u32,
        reason: String,
    },
    /// A worker process came up (admins only).
    WorkerUp {
        slot: u32,
        worker_pid: u32,
    },
}

/// Who an event is about.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActivityUser {
    pub id: Uuid,
    pub name: String,
}

/// One event of the feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Activity {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `None` for system events (workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<ActivityUser>,
    #[serde(flatten)]
    pub kind: ActivityKind,
}

/// What a user is told about everyone else: counts, never who or what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivitySummary {
    /// Other users with a task running or an event in the last 5 minutes.
    pub users_active: u64,
    /// Other users' tasks running.
    pub tasks_running: u64,
}

#[derive(Debug, Default)]
struct Presence {
    name: String,
    running: HashSet<Uuid>,
    last_event_ms: i64,
}

/// The feed's hub; one per master, shared.
pub struct ActivityHub {
    sender: broadcast::Sender<Arc<Activity>>,
    presence: Mutex<HashMap<Uuid, Presence>>,
}

impl Default for ActivityHub {
    fn default() -> Self {
        ActivityHub {
            sender: broadcast::Sender::new(CHANNEL_CAPACITY),
            presence: Mutex::default(),
        }
    }
}

impl ActivityHub {
    pub fn new() -> Arc<ActivityHub> {
        Arc::new(ActivityHub::default())
    }

    /// Every event from now on. A receiver more than [`CHANNEL_CAPACITY`]
    /// events behind gets `Lagged`, upon which its stream must end.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Activity>> {
        self.sender.subscribe()
    }

    /// Publishes an event about user `id` (`name` as known to the caller,
    /// or `None` to use the name the hub last saw for them).
    pub fn publish(&self, id: Uuid, name: Option<&str>, kind: ActivityKind) {
        let at_ms = crate::store::now_ms();
        let name = {
            let mut presence = self.lock();
            if presence.len() >= MAX_TRACKED_USERS && !presence.contains_key(&id) {
                forget_idle(&mut presence, at_ms);
            }
            let entry = presence.entry(id).or_default();
            if let Some(name) = name {
                if entry.name != name {
                    entry.name = name.to_string();
                }
            }
            entry.last_event_ms = at_ms;
            match &kind {
                ActivityKind::TaskStarted { task, .. } => {
                    entry.running.insert(*task);
                }
                ActivityKind::TaskFinished { task, .. } => {
                    entry.running.remove(task);
                }
                _ => {}
            }
            entry.name.clone()
        };
        // No subscriber is fine.
        let _ = self.sender.send(Arc::new(Activity {
            at_ms,
            user: Some(ActivityUser { id, name }),
            kind,
        }));
    }

    /// Publishes an event about the system (admins only).
    pub fn publish_system(&self, kind: ActivityKind) {
        let _ = self.sender.send(Arc::new(Activity {
            at_ms: crate::store::now_ms(),
            user: None,
            kind,
        }));
    }

    /// The counts `viewer` may see of everyone else, now.
    pub fn summary_for(&self, viewer: Uuid) -> ActivitySummary {
        let now = crate::store::now_ms();
        let presence = self.lock();
        let mut summary = ActivitySummary {
            users_active: 0,
            tasks_running: 0,
        };
        let others = presence
            .iter()
            .filter(|(user, _)| **user != viewer)
            .map(|(_, state)| state);
        for state in others {
            let running = state.running.len() as u64;
            summary.tasks_running += running;
            if running > 0 || now - state.last_event_ms < ACTIVE_WINDOW_MS {
                summary.users_active += 1;
            }
        }
        summary
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Presence>> {
        self.presence.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Forgets users with nothing running and no event within the window; if
/// that frees nothing, the least recently active without running tasks.
fn forget_idle(presence: &mut HashMap<Uuid, Presence>, now: i64) {
    presence.retain(|_, p| !p.running.is_empty() || now - p.last_event_ms < ACTIVE_WINDOW_MS);
    if presence.len() >= MAX_TRACKED_USERS {
        let oldest = presence
            .iter()
            .filter(|(_, p)| p.running.is_empty())
            .min_by_key(|(_, p)| p.last_event_ms)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            presence.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_counted_never_named() {
        let hub = ActivityHub::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let task = Uuid::new_v4();
        hub.publish(
            bob,
            Some("bob"),
            ActivityKind::TaskStarted {
                task,
                command: vec!["make".into()],
                cwd: String::new(),
            },
        );
        assert_eq!(
            hub.summary_for(alice),
            ActivitySummary {
                users_active: 1,
                tasks_running: 1
            }
        );
        assert_eq!(
            hub.summary_for(bob),
            ActivitySummary {
                users_active: 0,
                tasks_running: 0
            },
            "one's own activity is not in the counts of others"
        );
        hub.publish(
            bob,
            None,
            ActivityKind::TaskFinished {
                task,
                state: "exited",
                exit_code: Some(0),
                signal: None,
                error: None,
            },
        );
        let summary = hub.summary_for(alice);
        assert_eq!(summary.tasks_running, 0);
        assert_eq!(summary.users_active, 1, "active for five minutes more");
        // A second end of the same task (a late "lost") counts nothing.
        hub.publish(
            bob,
            None,
            ActivityKind::TaskFinished {
                task,
                state: "lost",
                exit_code: None,
                signal: None,
                error: None,
            },
        );
        assert_eq!(hub.summary_for(alice).tasks_running, 0);
    }

    #[tokio::test]
    async fn a_receiver_that_falls_behind_is_told_so() {
        let hub = ActivityHub::default();
        let mut receiver = hub.subscribe();
        for n in 0..CHANNEL_CAPACITY + 10 {
            hub.publish(
                Uuid::new_v4(),
                Some("u"),
                ActivityKind::FileWritten {
                    path: format!("f{n}"),
                },
            );
        }
        assert!(matches!(
            receiver.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
