-- A user's own entry quota (files, directories, links... in their
-- workspace); NULL: the server's --default-file-quota. Keep in step with
-- ../postgres/.

ALTER TABLE users ADD COLUMN file_quota BIGINT;
