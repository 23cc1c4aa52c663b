//! Task records: what users ran, how it went. Only the master writes them
//! (workers report starts and ends over the protocol); a record is
//! `running` until its end is known, and a task whose worker died, or
//! whose master restarted, is `lost`: it never stays `running` without a
//! process behind it.
//!
//! Several masters may share one PostgreSQL database, each with workers
//! of its own: every record names its master (`master_id`), and a master
//! marks only its own tasks lost.

use super::{now_ms, uuid_of, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;
use warren_protocol::{TaskEnd, TaskState};

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub command: Vec<String>,
    pub cwd: String,
    /// The names of the variables the caller set (their values are never
    /// stored).
    pub env_keys: Vec<String>,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub output_bytes: u64,
    /// 0: none.
    pub timeout_ms: u64,
    pub slot: u32,
    pub worker_pid: Option<u32>,
    pub pid: Option<u32>,
}

/// A task about to be started (recorded `running` before the worker is
/// asked, so that its end can never arrive for an unknown task).
pub struct NewTask<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub command: &'a [String],
    pub cwd: &'a str,
    pub env_keys: Vec<String>,
    pub timeout_ms: u64,
    pub master_id: &'a str,
    pub slot: u32,
}

/// Where a page of a user's tasks starts: after this task (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCursor {
    pub created_ms: i64,
    pub id: Uuid,
}

impl TaskCursor {
    /// `<created_ms>.<id>`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_ms, self.id)
    }

    pub fn parse(text: &str) -> Option<TaskCursor> {
        let (created, id) = text.split_once('.')?;
        Some(TaskCursor {
            created_ms: created.parse().ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub after: Option<TaskCursor>,
    pub limit: i64,
}

/// A change to a record (see [`Store::update_task`]).
#[derive(Debug, Clone)]
pub enum TaskUpdate {
    /// The worker exec'd the command.
    Started {
        worker_pid: u32,
        pid: u32,
        started_ms: i64,
    },
    /// The task ended (reported by its worker, or decided by the master:
    /// `failed` for a command that could not run, `lost`).
    Ended(TaskEnd),
}

macro_rules! task_columns {
    () => {
        "id, user_id, command, cwd, env_keys, state, exit_code, signal, error, created_ms, \
         started_ms, ended_ms, output_bytes, timeout_ms, slot, worker_pid, pid"
    };
}

fn json_list(row: &AnyRow, index: usize) -> Result<Vec<String>> {
    let text: String = row.try_get(index)?;
    serde_json::from_str(&text).map_err(|err| StoreError::Corrupt {
        table: "tasks",
        detail: format!("bad JSON list {text:?}: {err}"),
    })
}

fn small<T: TryFrom<i64>>(row: &AnyRow, index: usize) -> Result<Option<T>> {
    let value: Option<i64> = row.try_get(index)?;
    value
        .map(|v| {
            T::try_from(v).map_err(|_| StoreError::Corrupt {
                table: "tasks",
                detail: format!("value {v} out of range in column {index}"),
            })
        })
        .transpose()
}

fn task_of(row: &AnyRow) -> Result<TaskRecord> {
    let state: String = row.try_get(5)?;
    Ok(TaskRecord {
        id: uuid_of(row, 0, "tasks")?,
        user_id: uuid_of(row, 1, "tasks")?,
        command: json_list(row, 2)?,
        cwd: row.try_get(3)?,
        env_keys: json_list(row, 4)?,
        state: TaskState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            table: "tasks",
            detail: format!("unknown state {state:?}"),
        })?,
        exit_code: small(row, 6)?,
        signal: small(row, 7)?,
        error: row.try_get(8)?,
        created_ms: row.try_get(9)?,
        started_ms: row.try_get(10)?,
        ended_ms: row.try_get(11)?,
        output_bytes: small(row, 12)?.unwrap_or(0),
        timeout_ms: small(row, 13)?.unwrap_or(0),
        slot: small(row, 14)?.unwrap_or(0),
        worker_pid: small(row, 15)?,
        pid: small(row, 16)?,
    })
}

fn encode_list(list: &[String]) -> Result<String> {
    serde_json::to_string(list).map_err(|err| StoreError::Corrupt {
        table: "tasks",
        detail: format!("cannot encode a list: {err}"),
    })
}

/// `u64` counts as `BIGINT` (saturating; no real count comes near).
fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a task as `running` (started, not yet confirmed by its
    /// worker).
    pub async fn insert_task(&self, new: &NewTask<'_>) -> Result<TaskRecord> {
        let record = TaskRecord {
            id: new.id,
            user_id: new.user_id,
            command: new.command.to_vec(),
            cwd: new.cwd.to_string(),
            env_keys: new.env_keys.clone(),
            state: TaskState::Running,
            exit_code: None,
            signal: None,
            error: None,
            created_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            output_bytes: 0,
            timeout_ms: new.timeout_ms,
            slot: new.slot,
            worker_pid: None,
            pid: None,
        };
        self.count(1);
        sqlx::query(
            "INSERT INTO tasks (id, user_id, command, cwd, env_keys, state, created_ms, \
             output_bytes, timeout_ms, master_id, slot) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, 0, $7, $8, $9)",
        )
        .bind(record.id.to_string())
        .bind(record.user_id.to_string())
        .bind(encode_list(&record.command)?)
        .bind(&record.cwd)
        .bind(encode_list(&record.env_keys)?)
        .bind(record.created_ms)
        .bind(bigint(record.timeout_ms))
        .bind(new.master_id)
        .bind(i64::from(record.slot))
        .execute(&self.pool)
        .await?;
        Ok(record)
    }

    /// Applies `update` to task `id`; returns the record as it is now, or
    /// `None` if nothing changed. An end applies only while the task is
    /// `running` (a later report never overwrites an end); a start always
    /// applies (a short task's end may be recorded before its start).
    pub async fn update_task(&self, id: Uuid, update: &TaskUpdate) -> Result<Option<TaskRecord>> {
        self.count(1);
        let row = match update {
            TaskUpdate::Started {
                worker_pid,
                pid,
                started_ms,
            } => {
                sqlx::query(concat!(
                    "UPDATE tasks SET worker_pid = $1, pid = $2, started_ms = $3 \
                     WHERE id = $4 RETURNING ",
                    task_columns!()
                ))
                .bind(i64::from(*worker_pid))
                .bind(i64::from(*pid))
                .bind(*started_ms)
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?
            }
            TaskUpdate::Ended(end) => {
                sqlx::query(concat!(
                    "UPDATE tasks SET state = $1, exit_code = $2, signal = $3, ended_ms = $4, \
                     output_bytes = $5, error = $6 WHERE id = $7 AND state = 'running' RETURNING ",
                    task_columns!()
                ))
                .bind(end.state.as_str())
                .bind(end.exit_code.map(i64::from))
                .bind(end.signal.map(i64::from))
                .bind(end.ended_ms)
                .bind(bigint(end.output_bytes))
                .bind(end.error.clone().map(super::audit::cap_field))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(task_of).transpose()
    }

    /// One of `user`'s tasks (another user's is `None`, like a missing one).
    pub async fn task(&self, user: Uuid, id: Uuid) -> Result<Option<TaskRecord>> {
        self.count(1);
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1 AND user_id = $2"
        ))
        .bind(id.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_of).transpose()
    }

    /// `user`'s tasks, newest first, at most `filter.limit`.
    pub async fn list_tasks(&self, user: Uuid, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.count(1);
        let (after_ms, after_id) = match filter.after {
            Some(cursor) => (Some(cursor.created_ms), Some(cursor.id.to_string())),
            None => (None, None),
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE user_id = $1 \
               AND (CAST($2 AS TEXT) IS NULL OR state = $2) \
               AND (CAST($3 AS BIGINT) IS NULL OR created_ms < $3 \
                    OR (created_ms = $3 AND id < $4)) \
             ORDER BY created_ms DESC, id DESC LIMIT $5"
        ))
        .bind(user.to_string())
        .bind(filter.state.map(TaskState::as_str))
        .bind(after_ms)
        .bind(after_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_of).collect()
    }

    /// Deletes one of `user`'s finished tasks; `false` if there is no such
    /// task or it is still running.
    pub async fn delete_task(&self, user: Uuid, id: Uuid) -> Result<bool> {
        self.count(1);
        let done =
            sqlx::query("DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND state <> 'running'")
                .bind(id.to_string())
                .bind(user.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The user's finished tasks beyond the newest `keep` records (of any
    /// state), oldest last, at most `batch` of them: what the history
    /// bound removes.
    pub async fn tasks_beyond(&self, user: Uuid, keep: u64, batch: i64) -> Result<Vec<Uuid>> {
        self.count(1);
        let rows = sqlx::query(
            "SELECT id, state FROM tasks WHERE user_id = $1 \
             ORDER BY created_ms DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user.to_string())
        .bind(batch)
        .bind(bigint(keep))
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::new();
        for row in rows {
            if row.try_get::<String, _>(1)? != "running" {
                ids.push(uuid_of(&row, 0, "tasks")?);
            }
        }
        Ok(ids)
    }

    /// Removes the record of a task that never started (its worker refused
    /// it: too many tasks, no sandbox).
    pub async fn forget_task(&self, id: Uuid) -> Result<()> {
        self.count(1);
        sqlx::query("DELETE FROM tasks WHERE id = $1 AND state = 'running'")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks `lost` this master's running tasks that match `which`, and
    /// returns them as they are now.
    pub async fn lose_tasks(
        &self,
        master_id: &str,
        which: LostTasks,
        error: &str,
    ) -> Result<Vec<TaskRecord>> {
        let now = now_ms();
        self.count(1);
        let query = sqlx::query(match which {
            LostTasks::All => concat!(
                "UPDATE tasks SET state = 'lost', ended_ms = $1, error = $2 \
                 WHERE state = 'running' AND master_id = $3 RETURNING ",
                task_columns!()
            ),
            LostTasks::OfWorker { .. } => concat!(
                "UPDATE tasks SET state = 'lost', ended_ms = $1, error = $2 \
                 WHERE state = 'running' AND master_id = $3 AND slot = $4 \
                   AND worker_pid = $5 RETURNING ",
                task_columns!()
            ),
            LostTasks::Stale { .. } => concat!(
                "UPDATE tasks SET state = 'lost', ended_ms = $1, error = $2 \
                 WHERE state = 'running' AND master_id = $3 AND slot = $4 \
                   AND ((worker_pid IS NOT NULL AND worker_pid <> $5 AND created_ms < $6) \
                        OR (worker_pid IS NULL AND created_ms < $7)) RETURNING ",
                task_columns!()
            ),
        })
        .bind(now)
        .bind(error.to_string())
        .bind(master_id.to_string());
        let query = match which {
            LostTasks::All => query,
            LostTasks::OfWorker { slot, worker_pid } => {
                query.bind(i64::from(slot)).bind(i64::from(worker_pid))
            }
            LostTasks::Stale {
                slot,
                live_pid,
                started_before_ms,
                unconfirmed_before_ms,
            } => query
                .bind(i64::from(slot))
                // No live worker: every worker pid is a dead one.
                .bind(live_pid.map_or(-1, i64::from))
                .bind(started_before_ms)
                .bind(unconfirmed_before_ms),
        };
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(task_of).collect()
    }
}

/// Which running tasks [`Store::lose_tasks`] marks lost.
#[derive(Debug, Clone, Copy)]
pub enum LostTasks {
    /// Every one (a master starting: its old workers are gone).
    All,
    /// Those of one worker process, which died.
    OfWorker { slot: u32, worker_pid: u32 },
    /// Those of `slot` whose worker is not the slot's live one
    /// (`live_pid`), recorded before `started_before_ms`, and those never
    /// confirmed by a worker recorded before `unconfirmed_before_ms`.
    Stale {
        slot: u32,
        live_pid: Option<u32>,
        started_before_ms: i64,
        unconfirmed_before_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;
    use crate::store::{NewUser, Role};

    async fn user(store: &Store, name: &str) -> Uuid {
        store
            .create_user(NewUser {
                username: name,
                password_hash: "h",
                role: Role::User,
                home_host: None,
            })
            .await
            .expect("create user")
            .id
    }

    async fn task(store: &Store, user: Uuid, master: &str, slot: u32) -> TaskRecord {
        let command = vec!["echo".to_string(), "hi".to_string()];
        store
            .insert_task(&NewTask {
                id: Uuid::new_v4(),
                user_id: user,
                command: &command,
                cwd: "",
                env_keys: vec!["SECRET".into()],
                timeout_ms: 0,
                master_id: master,
                slot,
            })
            .await
            .expect("insert task")
    }

    fn end(state: TaskState) -> TaskEnd {
        TaskEnd {
            state,
            exit_code: Some(3),
            signal: None,
            ended_ms: now_ms(),
            output_bytes: 12,
            error: None,
        }
    }

    /// Store-level checks run on both backends.
    pub(crate) async fn records_end_once_and_lost_only_marks_our_own(store: &Store) {
        let alice = user(store, "alice").await;
        let bob = user(store, "bob").await;
        let first = task(store, alice, "m1", 0).await;
        assert_eq!(
            store.task(bob, first.id).await.expect("query"),
            None,
            "another user's task is not found"
        );
        let started = TaskUpdate::Started {
            worker_pid: 100,
            pid: 101,
            started_ms: now_ms(),
        };
        let now = store
            .update_task(first.id, &started)
            .await
            .expect("update")
            .expect("running");
        assert_eq!(now.worker_pid, Some(100));
        let ended = store
            .update_task(first.id, &TaskUpdate::Ended(end(TaskState::Exited)))
            .await
            .expect("update")
            .expect("was running");
        assert_eq!((ended.state, ended.exit_code), (TaskState::Exited, Some(3)));
        // A second report (a late "lost") never overwrites an end.
        assert!(store
            .update_task(first.id, &TaskUpdate::Ended(end(TaskState::Lost)))
            .await
            .expect("update")
            .is_none());
        // Lost marking: only this master's, only the dead worker's.
        let of_dead = task(store, alice, "m1", 0).await;
        store
            .update_task(of_dead.id, &started)
            .await
            .expect("started");
        let of_other_slot = task(store, alice, "m1", 1).await;
        store
            .update_task(of_other_slot.id, &started)
            .await
            .expect("started");
        let of_other_master = task(store, bob, "m2", 0).await;
        store
            .update_task(of_other_master.id, &started)
            .await
            .expect("started");
        let lost = store
            .lose_tasks(
                "m1",
                LostTasks::OfWorker {
                    slot: 0,
                    worker_pid: 100,
                },
                "worker died",
            )
            .await
            .expect("lose");
        assert_eq!(
            lost.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![of_dead.id]
        );
        assert_eq!(lost[0].state, TaskState::Lost);
        assert_eq!(lost[0].error.as_deref(), Some("worker died"));
        // Stale: slot 1's live worker is 200 now; its task of worker 100
        // is lost once old enough.
        let stale = LostTasks::Stale {
            slot: 1,
            live_pid: Some(200),
            started_before_ms: now_ms() + 1,
            unconfirmed_before_ms: now_ms() + 1,
        };
        let lost = store
            .lose_tasks("m1", stale, "stale")
            .await
            .expect("lose stale");
        assert_eq!(
            lost.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![of_other_slot.id]
        );
        // A master starting: all of its own, none of another's.
        let unconfirmed = task(store, alice, "m1", 0).await;
        let lost = store
            .lose_tasks("m1", LostTasks::All, "restart")
            .await
            .expect("lose all");
        assert_eq!(
            lost.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![unconfirmed.id]
        );
        let other = store
            .task(bob, of_other_master.id)
            .await
            .expect("query")
            .expect("exists");
        assert_eq!(other.state, TaskState::Running);
        // Listing: newest first, paged, filtered; deletes only finished.
        let page = store
            .list_tasks(
                alice,
                &TaskFilter {
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(page.len(), 2);
        assert!(page[0].created_ms >= page[1].created_ms);
        let cursor = TaskCursor {
            created_ms: page[1].created_ms,
            id: page[1].id,
        };
        assert_eq!(TaskCursor::parse(&cursor.encode()), Some(cursor));
        let rest = store
            .list_tasks(
                alice,
                &TaskFilter {
                    limit: 10,
                    after: Some(cursor),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(page.len() + rest.len(), 4, "alice has 4 tasks");
        assert!(rest.iter().all(|t| page.iter().all(|p| p.id != t.id)));
        let exited = store
            .list_tasks(
                alice,
                &TaskFilter {
                    limit: 10,
                    state: Some(TaskState::Exited),
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].env_keys, vec!["SECRET".to_string()]);
        assert!(!store
            .delete_task(bob, of_other_master.id)
            .await
            .expect("delete"));
        // The history bound: finished records beyond the newest two.
        let beyond = store.tasks_beyond(alice, 2, 100).await.expect("beyond");
        assert_eq!(beyond.len(), 2, "four records, the newest two kept");
        assert!(beyond.iter().all(|id| page.iter().all(|p| p.id != *id)));
        assert!(store.delete_task(alice, first.id).await.expect("delete"));
        assert!(store.task(alice, first.id).await.expect("query").is_none());
    }

    #[tokio::test]
    async fn records_end_once_and_lost_only_marks_our_own_on_sqlite() {
        let (store, _dir) = sqlite_store().await;
        records_end_once_and_lost_only_marks_our_own(&store).await;
    }

    #[tokio::test]
    async fn records_end_once_and_lost_only_marks_our_own_on_postgres() {
        let Some((store, guard)) =
            crate::store::tests::postgres_store("records_end_once_and_lost_only_marks_our_own")
                .await
        else {
            return;
        };
        records_end_once_and_lost_only_marks_our_own(&store).await;
        guard.drop_database(vec![store]).await;
    }
}
