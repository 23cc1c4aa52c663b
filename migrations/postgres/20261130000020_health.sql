-- One row that readiness checks rewrite, so /readyz notices a database
-- that answers reads but cannot store anything (a full disk).
CREATE TABLE health (
    id INTEGER PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
