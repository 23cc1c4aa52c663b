-- Users' processes (issue 10). Keep in step with ../postgres/.
--
-- users.uid: the unprivileged uid (and gid) a user's processes run as when
-- warren runs as root, allocated from --uid-range at user creation (and
-- backfilled at serve start). Unique, so two masters sharing one database
-- can never hand out the same uid: a losing allocation retries.
-- users.limits: the admin's per-user overrides of the process limits (a
-- JSON object of ProcessLimits fields); NULL: the server's defaults.
ALTER TABLE users ADD COLUMN uid BIGINT;
ALTER TABLE users ADD COLUMN limits TEXT;
CREATE UNIQUE INDEX users_uid ON users (uid);

-- One row per task, written by the master only (workers report over the
-- protocol). command: a JSON array of strings; env_keys: a JSON array of
-- the names the caller set (never their values: they may hold secrets).
-- master_id: the master whose workers run it (several masters may share a
-- PostgreSQL database; each marks only its own tasks lost).
CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    command TEXT NOT NULL,
    cwd TEXT NOT NULL,
    env_keys TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('running', 'exited', 'failed', 'killed', 'timed_out', 'lost')),
    exit_code BIGINT,
    signal BIGINT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    output_bytes BIGINT NOT NULL DEFAULT 0,
    timeout_ms BIGINT NOT NULL DEFAULT 0,
    master_id TEXT NOT NULL,
    slot BIGINT NOT NULL,
    worker_pid BIGINT,
    pid BIGINT
);
CREATE INDEX tasks_user_created ON tasks (user_id, created_ms DESC);
CREATE INDEX tasks_state ON tasks (state);
