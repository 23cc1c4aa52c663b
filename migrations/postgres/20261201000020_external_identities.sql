-- Identity from outside (issue 16). Keep in step with the other backend.
--
-- A user who logs in through an OpenID provider, a JWT bearer token or a
-- trusted proxy's identity header is keyed by who vouches for them
-- (issuer: the OpenID issuer URL, the JWT issuer, or "header:<name>" for a
-- plain identity header) and the subject that issuer gives them (the
-- `sub` claim, or the header's value), never by a username that could be
-- reused. Such users are created with a password hash that matches no
-- password ("!external").
CREATE TABLE external_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities (user_id);
