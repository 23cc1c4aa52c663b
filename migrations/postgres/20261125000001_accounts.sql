-- Accounts, sessions, API tokens, audit log (PostgreSQL).
-- Times are milliseconds since the Unix epoch; ids are UUID text; flags are
-- 0/1 integers. Keep in step with ../sqlite/ (same tables, same columns).

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_login_at BIGINT,
    -- Per-user limits; NULL means the server default.
    max_sessions BIGINT,
    storage_quota_bytes BIGINT
);
-- Usernames are ASCII, so lower() agrees between SQLite and PostgreSQL.
CREATE UNIQUE INDEX users_username_ci ON users (lower(username));

CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    -- Hex SHA-256 of the secret token; the token itself is never stored.
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    address TEXT,
    user_agent TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, created_at);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    actor_id TEXT,
    actor_name TEXT,
    subject TEXT,
    address TEXT,
    detail TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at);

-- Revocations for every master sharing this database (and for the operator
-- CLI): each master polls rows newer than the last it saw and drops the
-- matching cache entries. kind: 'session' (subject = token hash) or 'user'
-- (subject = user id: every credential of that user).
CREATE TABLE auth_events (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL
);
