-- Users deleted, kept as tombstones (SQLite): a master removes the files of a
-- user listed here, and only of such a user, so a database that merely lacks a
-- user (a wrong --database-url, a restored backup) never costs anyone their
-- files. Keep in step with ../postgres/.

CREATE TABLE deleted_users (
    id TEXT PRIMARY KEY NOT NULL,
    deleted_at BIGINT NOT NULL
);
