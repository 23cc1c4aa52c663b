-- Several hosts on one database (issue 14). Keep in step with ../postgres/.
--
-- hosts: every master started with --host-name registers itself here and
-- renews heartbeat_at every 2 s (the database's clock, so hosts' clocks
-- need not agree); heartbeat_at 0 marks a host that stopped cleanly.
-- users.home_host: the host that holds the user's files (NULL outside
-- cluster mode, and for users created before it); moved only by
-- `warren user move`. users.moving_to: set while a move is under way (the
-- user's requests get 503 user_moving everywhere until it is cleared).
CREATE TABLE hosts (
    name TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
ALTER TABLE users ADD COLUMN home_host TEXT;
ALTER TABLE users ADD COLUMN moving_to TEXT;
CREATE INDEX users_home_host ON users (home_host);
