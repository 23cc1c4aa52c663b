//! Identity from outside (issue 16), end to end: JWT bearer tokens (a
//! shared secret, a JWKS file, a JWKS URL), a trusted proxy's identity
//! header, the `warren.bearer` WebSocket subprotocol, `/auth/methods` and
//! `--password-login off`.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warren_tests::accounts::{login_response, sandboxed, Caller};
use warren_tests::{warren_binary, Server, ServerOptions, ADMIN_PASSWORD};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "warren";
const SECRET: &[u8] = b"warren-identity-test-secret-0123456789abcdef";

// ---------------------------------------------------------------- tokens

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims valid for ten minutes for `sub`, named `username`; a `jti` of
/// their own, so that no two tokens are the same.
fn claims(sub: &str, username: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "preferred_username": username,
        "iat": now(), "exp": now() + 600, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("claims").remove(name);
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign a JWT")
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, None, &hmac_key(secret), claims)
}

/// An HMAC key of `secret` (through base64: `from_secret` returns a key in
/// jsonwebtoken 10 and a `Result` in 12; this works with both).
fn hmac_key(secret: &[u8]) -> EncodingKey {
    let mut text = base64url(secret);
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    EncodingKey::from_urlsafe_base64_secret(&text).expect("HMAC key")
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`), built by hand: no library makes one.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    )
}

// ---------------------------------------------------------------- keys

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (needed to make test keys)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A private key made by `openssl genpkey` with `options` into `dir/name`:
/// its DER (by `der_args`, in the form `EncodingKey::from_*_der` wants,
/// which needs no `use_pem` feature) and its public key's PEM.
fn generate(dir: &Path, name: &str, options: &[&str], der_args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let path = dir.join(name);
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["genpkey", "-out", path];
    args.extend_from_slice(options);
    openssl(&args);
    let mut args = der_args.to_vec();
    args.extend_from_slice(&["-in", path, "-outform", "DER"]);
    let der = openssl(&args);
    let public = openssl(&["pkey", "-in", path, "-pubout"]);
    (der, public)
}

/// An RSA key: the signing key and the public key's PEM.
fn rsa_key(dir: &Path, name: &str) -> (EncodingKey, Vec<u8>) {
    let (der, public) = generate(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        // PKCS#1.
        &["rsa", "-traditional"],
    );
    (EncodingKey::from_rsa_der(&der), public)
}

/// A P-256 key.
fn ec_key(dir: &Path, name: &str) -> EncodingKey {
    let (der, _) = generate(
        dir,
        name,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        // PKCS#8 (`pkey -outform DER` writes SEC1).
        &["pkcs8", "-topk8", "-nocrypt"],
    );
    EncodingKey::from_ec_der(&der)
}

/// The public JWK of `key` for `alg`, with `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("JWK of the key");
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).expect("JWK as JSON")
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

// ---------------------------------------------------------------- servers

/// One server's options: one worker, no proxy between warren and the
/// test's key server, and `args`.
fn options(args: &[&str]) -> ServerOptions {
    let mut options = ServerOptions::workers(1);
    for arg in args {
        options = options.arg(arg);
    }
    for key in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "WARREN_TRUSTED_PROXIES",
    ] {
        options.env_remove.push(key.to_string());
    }
    options
}

/// Writes the shared secret (with the newline an editor leaves) into `dir`.
fn secret_file(dir: &Path) -> PathBuf {
    let file = dir.join("jwt-secret");
    let mut text = SECRET.to_vec();
    text.push(b'\n');
    std::fs::write(&file, text).expect("write the JWT secret");
    file
}

/// Options for JWT bearer tokens signed with [`SECRET`], plus `extra`.
fn secret_options(dir: &Path, extra: &[&str]) -> ServerOptions {
    let file = secret_file(dir);
    let mut args = vec![
        "--jwt-secret-file",
        file.to_str().expect("utf-8 path"),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ];
    args.extend_from_slice(extra);
    options(&args)
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// GET /api/v1/me with one `X-Forwarded-User` per name (as a proxy would
/// send them).
async fn me_as(server: &Server, names: &[&str]) -> (u16, Value) {
    let mut request = server.http.get(server.url("/api/v1/me"));
    for name in names {
        request = request.header("x-forwarded-user", *name);
    }
    json_of(request.send().await.expect("GET")).await
}

/// GET `path` with `Authorization: Bearer <token>`.
async fn get_with(server: &Server, token: &str, path: &str) -> (u16, Value) {
    let response = server
        .http
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    json_of(response).await
}

async fn me(server: &Server, token: &str) -> (u16, Value) {
    get_with(server, token, "/api/v1/me").await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// `token` is refused with 401 `invalid_token`.
async fn refused(server: &Server, token: &str, what: &str) -> Value {
    let (status, body) = me(server, token).await;
    assert_eq!(
        (status, code(&body)),
        (401, "invalid_token"),
        "{what}: {body}"
    );
    body
}

/// The audit rows of `event`, newest first.
async fn audit(admin: &Caller, event: &str) -> Vec<Value> {
    let (status, rows) = admin
        .get(&format!("/api/v1/admin/audit?event={event}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array().cloned().expect("audit rows")
}

fn body_id(answer: &(u16, Value)) -> String {
    assert_eq!(answer.0, 200, "{}", answer.1);
    answer.1["id"].as_str().expect("id").to_string()
}

fn text_of<'v>(row: &'v Value, field: &str) -> &'v str {
    row[field].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_valid_expired_bad_signature_malformed_wrong_issuer_wrong_audience() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &["--jwt-username-claim", "preferred_username"],
    ))
    .await;

    // A valid token: its user is created at first sight, and the token
    // goes on working (from the cache the second time).
    let good = hs256(SECRET, &claims("sub-alice-0001", "alice"));
    let (status, first) = me(&server, &good).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["username"], "alice", "{first}");
    assert_eq!(first["role"], "user", "{first}");
    let (status, again) = me(&server, &good).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    // Another token of the same subject is the same user.
    let (status, other) = me(&server, &hs256(SECRET, &claims("sub-alice-0001", "alice"))).await;
    assert_eq!((status, &other["id"]), (200, &first["id"]), "{other}");

    // Refusals, each a 401 invalid_token.
    let expired = with(
        claims("sub-alice-0001", "alice"),
        "exp",
        json!(now() - 3600),
    );
    let body = refused(&server, &hs256(SECRET, &expired), "expired").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );
    let forged = hs256(
        b"another-secret-of-at-least-32-bytes-long!!",
        &claims("sub-alice-0001", "alice"),
    );
    refused(&server, &forged, "signed with another secret").await;
    refused(&server, "eyJhbGciOi.x.y", "malformed header").await;
    let header = good.split('.').next().expect("header");
    refused(
        &server,
        &format!("{header}.not*base64!.c2ln"),
        "a payload that is not base64",
    )
    .await;
    let wrong_issuer = with(
        claims("sub-alice-0001", "alice"),
        "iss",
        json!("https://evil.test"),
    );
    refused(&server, &hs256(SECRET, &wrong_issuer), "wrong iss").await;
    let wrong_audience = with(
        claims("sub-alice-0001", "alice"),
        "aud",
        json!("another-service"),
    );
    refused(&server, &hs256(SECRET, &wrong_audience), "wrong aud").await;
    let none = unsigned(&claims("sub-alice-0001", "alice"));
    assert!(none.starts_with("eyJ"), "{none}");
    refused(&server, &none, "alg none").await;
    let no_expiry = without(claims("sub-alice-0001", "alice"), "exp");
    refused(&server, &hs256(SECRET, &no_expiry), "no exp").await;
    let not_yet = with(
        claims("sub-alice-0001", "alice"),
        "nbf",
        json!(now() + 3600),
    );
    refused(&server, &hs256(SECRET, &not_yet), "nbf in the future").await;
    const REFUSALS: usize = 9;

    // The audit log: one login (the first sight; the cached second request
    // is not another), the user's creation, and every refusal.
    let admin = Caller::admin(&server).await;
    let logins: Vec<Value> = audit(&admin, "login")
        .await
        .into_iter()
        .filter(|row| text_of(row, "actor_name") == "alice")
        .collect();
    assert_eq!(
        logins.len(),
        2,
        "alice's logins (one per token first seen, two tokens): {logins:#?}"
    );
    assert!(
        logins
            .iter()
            .all(|row| text_of(row, "detail").contains("JWT bearer token")
                && text_of(row, "detail").contains(ISSUER)),
        "{logins:?}"
    );
    let created = audit(&admin, "user_created").await;
    assert!(
        created.iter().any(|row| text_of(row, "subject") == "alice"
            && text_of(row, "detail").contains("sub-alice-0001")),
        "{created:?}"
    );
    let failed: Vec<Value> = audit(&admin, "login_failed")
        .await
        .into_iter()
        .filter(|row| text_of(row, "detail").starts_with("JWT bearer token"))
        .collect();
    assert_eq!(failed.len(), REFUSALS, "{failed:#?}");
    for needle in ["expired", "signature", "wrong issuer", "wrong audience"] {
        assert!(
            failed
                .iter()
                .any(|row| text_of(row, "detail").contains(needle)),
            "no login_failed for {needle:?}: {failed:#?}"
        );
    }
    // No token ends up in the audit log or the server's log.
    for row in &failed {
        assert!(!row.to_string().contains(&good[..40]), "{row}");
    }
    let signature = good.rsplit('.').next().expect("signature");
    assert!(!server.log().contains(signature), "a token in the log");

    // Disabling alice refuses her token at once, cached or not; enabling
    // her lets it in again.
    let alice_path = format!("/api/v1/admin/users/{}", first["id"].as_str().expect("id"));
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            &alice_path,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = me(&server, &good).await;
    assert!(
        matches!(status, 401 | 403),
        "a disabled user's JWT: {status} {body}"
    );
    let fresh = hs256(SECRET, &claims("sub-alice-0001", "alice"));
    let (status, body) = me(&server, &fresh).await;
    assert!(
        matches!(status, 401 | 403),
        "a disabled user's new JWT: {status} {body}"
    );
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            &alice_path,
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(me(&server, &good).await.0, 200);

    // Warren's own credentials still work beside JWTs: a password user's
    // API token (no dots: never taken for a JWT).
    admin.create_user("erin", "erin-password-1234").await;
    let erin = Caller::login(&server, "erin", "erin-password-1234").await;
    let (status, created) = erin.new_token("script").await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("token secret");
    let (status, body) = me(&server, secret).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("erin")),
        "{body}"
    );
    let (status, body) = me(&server, &erin.token).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("erin")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_users_are_keyed_by_subject_and_never_merged() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &[
            "--jwt-username-claim",
            "preferred_username",
            "--jwt-admin-claim",
            "groups=warren-admins",
        ],
    ))
    .await;
    let admin = Caller::admin(&server).await;

    // A local carol exists: a token naming carol (of a subject no user is
    // linked to) is refused, not merged into her account.
    let carol_id = admin.create_user("carol", "carol-password-1234").await;
    let (status, body) = me(&server, &hs256(SECRET, &claims("sub-carol-x", "carol"))).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let carol = Caller::login(&server, "carol", "carol-password-1234").await;
    assert_eq!(carol.user_id(), carol_id);
    let (status, users) = admin.get("/api/v1/admin/users").await;
    assert_eq!(status, 200, "{users}");
    let carols = users
        .as_array()
        .or_else(|| users["users"].as_array())
        .expect("users")
        .iter()
        .filter(|user| user["username"] == "carol")
        .count();
    assert_eq!(carols, 1, "{users}");
    let failed = audit(&admin, "login_failed").await;
    assert!(
        failed
            .iter()
            .any(|row| text_of(row, "detail").contains("sub-carol-x")
                && text_of(row, "detail").contains("another warren account")),
        "{failed:#?}"
    );

    // The role follows the admin claim at each first sight of a token.
    let with_group = with(
        claims("sub-frank-0001", "frank"),
        "groups",
        json!(["staff", "warren-admins"]),
    );
    let admin_token = hs256(SECRET, &with_group);
    let (status, frank) = me(&server, &admin_token).await;
    assert_eq!(status, 200, "{frank}");
    assert_eq!(
        (frank["username"].as_str(), frank["role"].as_str()),
        (Some("frank"), Some("admin"))
    );
    let (status, _) = get_with(&server, &admin_token, "/api/v1/admin/users").await;
    assert_eq!(status, 200);
    let without_group = with(
        claims("sub-frank-0001", "frank"),
        "groups",
        json!(["staff"]),
    );
    let user_token = hs256(SECRET, &without_group);
    let (status, demoted) = me(&server, &user_token).await;
    assert_eq!(status, 200, "{demoted}");
    assert_eq!(demoted["id"], frank["id"]);
    assert_eq!(demoted["role"], "user", "{demoted}");
    let (status, body) = get_with(&server, &user_token, "/api/v1/admin/users").await;
    assert_eq!(status, 403, "{body}");

    // Users are keyed by subject: the same subject under a new name is
    // still frank; a new subject under frank's name is someone else (409).
    let renamed = hs256(SECRET, &claims("sub-frank-0001", "franklin"));
    let (status, body) = me(&server, &renamed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["id"], body["username"].as_str()),
        (&frank["id"], Some("frank"))
    );
    let impostor = hs256(SECRET, &claims("sub-frank-9999", "frank"));
    let (status, body) = me(&server, &impostor).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    // First sight by many requests at once (different tokens of one new
    // subject): one user, and every request gets in.
    let answers = futures_util::future::join_all((0..8).map(|_| {
        let token = hs256(SECRET, &claims("sub-henry", "henry"));
        let server = &server;
        async move { me(server, &token).await }
    }))
    .await;
    let ids: std::collections::BTreeSet<String> = answers.iter().map(body_id).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let (_, users) = admin.get("/api/v1/admin/users").await;
    let henrys = users
        .as_array()
        .expect("users")
        .iter()
        .filter(|user| user["username"] == "henry")
        .count();
    assert_eq!(henrys, 1, "{users}");

    // A name warren cannot use is refused, not mangled; no `sub`, no user.
    for bad in ["al ice", ".hidden", "x/../y", ""] {
        let token = hs256(SECRET, &claims(&format!("sub-bad-{bad}"), bad));
        let (status, body) = me(&server, &token).await;
        assert_eq!(
            (status, code(&body)),
            (403, "identity_refused"),
            "{bad:?}: {body}"
        );
    }
    let token = hs256(SECRET, &with(claims("x", "nosub"), "sub", json!(42)));
    let (status, body) = me(&server, &token).await;
    assert!(
        matches!(status, 401 | 403),
        "a numeric sub: {status} {body}"
    );
    let token = hs256(
        SECRET,
        &without(claims("sub-noname", "x"), "preferred_username"),
    );
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, code(&body)),
        (403, "identity_refused"),
        "no username claim: {body}"
    );
    drop(server);

    // --jwt-create-users false: an unknown subject is not let in.
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &[
            "--jwt-username-claim",
            "preferred_username",
            "--jwt-create-users",
            "false",
        ],
    ))
    .await;
    let (status, body) = me(&server, &hs256(SECRET, &claims("sub-gina", "gina"))).await;
    assert_eq!((status, code(&body)), (403, "identity_refused"), "{body}");
    let admin = Caller::admin(&server).await;
    let (_, users) = admin.get("/api/v1/admin/users").await;
    assert!(!users.to_string().contains("gina"), "{users}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_with_rs256_and_es256_jwks_file_and_key_confusion() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (rsa, rsa_public) = rsa_key(dir.path(), "rsa.pem");
    let (other_rsa, _) = rsa_key(dir.path(), "other-rsa.pem");
    let ec = ec_key(dir.path(), "ec.pem");
    let file = dir.path().join("jwks.json");
    std::fs::write(
        &file,
        jwks(&[
            jwk(&rsa, Algorithm::RS256, "rsa-1"),
            jwk(&ec, Algorithm::ES256, "ec-1"),
        ]),
    )
    .expect("write the JWKS");
    let server = Server::ready(&options(&[
        "--jwt-jwks-file",
        file.to_str().expect("utf-8 path"),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]))
    .await;

    // The username claim is `sub` by default.
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa,
        &claims("rosa", "ignored"),
    );
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("rosa")),
        "{body}"
    );
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &ec,
        &claims("eli", "ignored"),
    );
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("eli")),
        "{body}"
    );

    // Key confusion: an HS256 token whose HMAC key is the RSA public key.
    let confused = hmac_key(&rsa_public);
    let token = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &confused,
        &claims("mallory", "x"),
    );
    refused(&server, &token, "HS256 with the RSA public key").await;
    let token = sign(Algorithm::HS256, None, &confused, &claims("mallory", "x"));
    refused(&server, &token, "HS256 with the RSA public key, no kid").await;
    // Another algorithm than the key's own.
    let token = sign(Algorithm::RS384, Some("rsa-1"), &rsa, &claims("rosa", "x"));
    refused(&server, &token, "RS384 with an RS256 key").await;
    let token = sign(Algorithm::ES256, Some("rsa-1"), &ec, &claims("eli", "x"));
    refused(&server, &token, "ES256 naming the RSA key").await;
    // Signed by another key under a known kid; an unknown kid.
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &other_rsa,
        &claims("rosa", "x"),
    );
    refused(&server, &token, "RS256 by another key").await;
    let token = sign(Algorithm::RS256, Some("rsa-9"), &rsa, &claims("rosa", "x"));
    refused(&server, &token, "unknown kid").await;
    let token = sign(Algorithm::RS256, None, &rsa, &claims("rosa", "x"));
    refused(&server, &token, "no kid with two keys").await;
}

/// A JWKS served over HTTP by the test, counting its fetches; an empty
/// document is a 503 (the provider is down).
struct KeyServer {
    url: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    async fn start(document: String) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the key server");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("address")
        );
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let task = {
            let (document, fetches) = (document.clone(), fetches.clone());
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (document, fetches) = (document.clone(), fetches.clone());
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buffer = [0u8; 4096];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                            if request.len() > 65536 {
                                return;
                            }
                        }
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let body = document.lock().expect("document").clone();
                        // An empty document: the provider is down.
                        let status = if body.is_empty() {
                            "503 Service Unavailable"
                        } else {
                            "200 OK"
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            })
        };
        KeyServer {
            url,
            document,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_from_a_jwks_url_is_fetched_and_refetched_for_a_new_kid() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let k1 = ec_key(dir.path(), "k1.pem");
    let k2 = ec_key(dir.path(), "k2.pem");
    let keys = KeyServer::start(jwks(&[jwk(&k1, Algorithm::ES256, "k1")])).await;
    let server = Server::ready(&options(&[
        "--jwt-jwks-url",
        &keys.url,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]))
    .await;
    assert_eq!(keys.fetches(), 0, "the keys are fetched when first needed");

    let token = sign(Algorithm::ES256, Some("k1"), &k1, &claims("kim", "x"));
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("kim")),
        "{body}"
    );
    assert_eq!(keys.fetches(), 1);

    // The provider rotates: k2 is published. A token of k2 makes warren
    // fetch again (once the 5 s since the last fetch have passed).
    *keys.document.lock().expect("document") = jwks(&[
        jwk(&k1, Algorithm::ES256, "k1"),
        jwk(&k2, Algorithm::ES256, "k2"),
    ]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let token = sign(Algorithm::ES256, Some("k2"), &k2, &claims("kai", "x"));
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("kai")),
        "{body}"
    );
    assert_eq!(keys.fetches(), 2);
    // k1 goes on working without a fetch.
    let token = sign(Algorithm::ES256, Some("k1"), &k1, &claims("kim", "x"));
    assert_eq!(me(&server, &token).await.0, 200);
    assert_eq!(keys.fetches(), 2);

    // Made-up kids do not become a flood of fetches.
    let before = keys.fetches();
    let started = Instant::now();
    for n in 0..20 {
        let token = sign(
            Algorithm::ES256,
            Some(&format!("made-up-{n}")),
            &k2,
            &claims("kai", "x"),
        );
        refused(&server, &token, "unknown kid").await;
    }
    let fetched = keys.fetches() - before;
    assert!(
        fetched <= 2,
        "20 unknown kids in {:?} fetched the keys {fetched} times",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_from_a_trusted_proxy_only() {
    let server = Server::ready(&options(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--identity-header",
        "X-Forwarded-User",
    ]))
    .await;
    let (status, body) = me_as(&server, &["dave"]).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("dave")),
        "{body}"
    );

    // The header counts as a cookie: a change needs our own Origin.
    let put = |origin: Option<&str>| {
        let mut request = server
            .http
            .put(server.url("/api/v1/files/from-proxy.txt"))
            .header("x-forwarded-user", "dave")
            .body("hello from the proxy");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move { json_of(request.send().await.expect("PUT")).await }
    };
    let (status, body) = put(None).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = put(Some("http://evil.test")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(Some(&server.base_url)).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, bytes) = {
        let response = server
            .http
            .get(server.url("/api/v1/files/from-proxy.txt"))
            .header("x-forwarded-user", "dave")
            .send()
            .await
            .expect("GET");
        (
            response.status().as_u16(),
            response.bytes().await.unwrap_or_default(),
        )
    };
    assert_eq!((status, &bytes[..]), (200, &b"hello from the proxy"[..]));
    let header_get = |name: &str| {
        let request = server
            .http
            .get(server.url("/api/v1/me"))
            .header("x-forwarded-user", name);
        async move { json_of(request.send().await.expect("GET")).await }
    };
    let admin = Caller::admin(&server).await;
    admin.create_user("carl", "carl-password-1234").await;
    let (status, body) = header_get("carl").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, body) = header_get("no/such name").await;
    assert_eq!((status, code(&body)), (403, "identity_refused"), "{body}");
    let dave_path = format!("/api/v1/admin/users/{}", body_id(&header_get("dave").await));
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            &dave_path,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = header_get("dave").await;
    assert!(
        matches!(status, 401 | 403),
        "a disabled user's header: {status} {body}"
    );
    drop(server);

    // From a peer that is not a trusted proxy the header is ignored,
    // logged and audited.
    let server = Server::ready(&options(&[
        "--trusted-proxy",
        "10.0.0.0/8",
        "--identity-header",
        "X-Forwarded-User",
    ]))
    .await;
    let (status, body) = me_as(&server, &["dave"]).await;
    assert_eq!(status, 401, "{body}");
    let log = server.log_containing("not a trusted proxy").await;
    assert!(log.contains("not a trusted proxy"), "{log}");
    let admin = Caller::admin(&server).await;
    let failed = audit(&admin, "login_failed").await;
    assert!(
        failed.iter().any(|row| {
            let detail = text_of(row, "detail").to_ascii_lowercase();
            detail.contains("identity header") && detail.contains("x-forwarded-user")
        }),
        "{failed:#?}"
    );
    // Beside an admin's session, the header changes nothing either.
    let (status, body) = json_of(
        server
            .http
            .get(server.url("/api/v1/me"))
            .header("x-forwarded-user", "dave")
            .header("cookie", format!("warren_session={}", admin.token))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("admin")),
        "{body}"
    );
    drop(server);

    // A header that is a JWT (`--identity-header-format jwt`), verified
    // with the --jwt-* keys.
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &[
            "--trusted-proxy",
            "127.0.0.1/32",
            "--identity-header",
            "X-Auth-Token",
            "--identity-header-format",
            "jwt",
            "--jwt-username-claim",
            "preferred_username",
        ],
    ))
    .await;
    let header_get = |value: String| {
        let request = server
            .http
            .get(server.url("/api/v1/me"))
            .header("x-auth-token", value);
        async move { json_of(request.send().await.expect("GET")).await }
    };
    let (status, body) = header_get(hs256(SECRET, &claims("sub-ivy", "ivy"))).await;
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("ivy")),
        "{body}"
    );
    let forged = hs256(
        b"another-secret-of-at-least-32-bytes-long!!",
        &claims("sub-ivy", "ivy"),
    );
    let (status, body) = header_get(forged).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"), "{body}");
    let (status, body) = header_get("ivy".to_string()).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"), "{body}");
    // The proxy's assertion is for the proxy's header only: the same JWT
    // as a bearer token, straight at warren, is nothing (unless the
    // operator turns bearer JWTs on with --jwt-bearer true).
    let assertion = hs256(SECRET, &claims("sub-ivy", "ivy"));
    let (status, body) = get_with(&server, &assertion, "/api/v1/me").await;
    assert_eq!(status, 401, "{body}");
    let (_, methods) = server.get_json("/api/v1/auth/methods").await;
    assert_eq!(methods["jwt_bearer"], false, "{methods}");
    drop(server);

    // Two identity headers (a proxy that adds its own after the client's)
    // are refused, never one of them picked.
    let server = Server::ready(&options(&[
        "--trusted-proxy",
        "127.0.0.1/32",
        "--identity-header",
        "X-Forwarded-User",
    ]))
    .await;
    let (status, body) = me_as(&server, &["mallory", "dave"]).await;
    assert_eq!(status, 400, "{body}");
    drop(server);

    // An identity header without trusted proxies, or a JWT header without
    // keys, is refused at start.
    for (args, needle) in [
        (
            &["--identity-header", "X-Forwarded-User"][..],
            "--trusted-proxy",
        ),
        (
            &[
                "--identity-header",
                "X-Forwarded-User",
                "--trusted-proxy",
                "127.0.0.1/32",
                "--identity-header-format",
                "jwt",
            ][..],
            "--jwt-secret-file",
        ),
    ] {
        let (success, stderr) = failed_start(args);
        assert!(!success, "warren started with {args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Runs `warren serve` with `args` on a fresh data directory, expecting it
/// to exit within 20 s: whether it succeeded, and its stderr.
fn failed_start(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(warren_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(args)
        .env("WARREN_UID_RANGE", warren_tests::uid_range_of(dir.path()))
        .env_remove("WARREN_TRUSTED_PROXIES")
        .env_remove("WARREN_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren {args:?} did not exit: it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.success(), stderr)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Attaches to terminal `id` offering `protocols` (no Authorization): the
/// socket and the answered subprotocol, or the refusing HTTP status.
async fn attach(server: &Server, id: &str, protocols: &str) -> Result<(Socket, String), u16> {
    let url = server
        .url(&format!("/api/v1/terminals/{id}/ws"))
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.parse().expect("header value"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => {
            let answered = response
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .map(|value| value.to_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join(" | ");
            Ok((socket, answered))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("connect: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_with_a_jwt_in_the_subprotocol() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &["--jwt-username-claim", "preferred_username"],
    ))
    .await;
    let token = hs256(SECRET, &claims("sub-wanda", "wanda"));
    let forged = hs256(
        b"another-secret-of-at-least-32-bytes-long!!",
        &claims("sub-wanda", "wanda"),
    );
    let (status, body) = me(&server, &token).await;
    assert_eq!(status, 200, "{body}");
    let offer = |token: &str| format!("warren.bearer, warren.bearer.{token}");

    // Whatever the sandbox: the subprotocol's token is checked before the
    // terminal is looked up (a bad one 401, a good one on to a 404).
    let nobody = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        attach(&server, &nobody, &offer(&forged)).await.err(),
        Some(401)
    );
    assert_eq!(
        attach(&server, &nobody, &offer(&token)).await.err(),
        Some(404)
    );
    assert_eq!(
        attach(&server, &nobody, "warren.bearer").await.err(),
        Some(401)
    );

    if !sandboxed(&server).await {
        return;
    }
    let response = server
        .http
        .post(server.url("/api/v1/terminals"))
        .bearer_auth(&token)
        .json(&json!({"command": ["/bin/sh"], "cols": 80, "rows": 24, "env": {"PS1": "$ "}}))
        .send()
        .await
        .expect("POST /terminals");
    let (status, terminal) = json_of(response).await;
    assert_eq!(status, 201, "{terminal}");
    let id = terminal["id"].as_str().expect("terminal id").to_string();

    assert_eq!(attach(&server, &id, &offer(&forged)).await.err(), Some(401));
    let (mut socket, answered) = attach(&server, &id, &offer(&token))
        .await
        .expect("the upgrade with a JWT in the subprotocol");
    assert_eq!(answered, "warren.bearer", "the token is never echoed");
    assert!(!server.log().contains(&token), "the token is never logged");
    socket
        .send(Message::Binary(b"echo jwt''-ok\n".to_vec().into()))
        .await
        .expect("send");
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Binary(bytes) = message {
                seen.extend_from_slice(&bytes);
                if String::from_utf8_lossy(&seen).contains("jwt-ok") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(
        found.ok(),
        Some(true),
        "the terminal showed: {}",
        String::from_utf8_lossy(&seen)
    );
    let _ = socket.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_and_password_login_off() {
    let server = Server::ready(&options(&[])).await;
    let (status, methods) = server.get_json("/api/v1/auth/methods").await;
    assert_eq!(status, 200, "{methods}");
    assert_eq!(
        methods,
        json!({
            "password": true, "signup": false, "oidc_login_url": null,
            "jwt_bearer": false, "identity_header": false,
        })
    );
    // Without JWTs configured a JWT-shaped bearer token is simply not a
    // credential.
    let (status, body) = me(&server, &hs256(SECRET, &claims("sub-x", "x"))).await;
    assert_eq!(status, 401, "{body}");
    drop(server);

    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::ready(&secret_options(
        dir.path(),
        &[
            "--password-login",
            "off",
            "--allow-signup",
            "--jwt-username-claim",
            "preferred_username",
            "--jwt-admin-claim",
            "role=admin",
        ],
    ))
    .await;
    let (status, methods) = server.get_json("/api/v1/auth/methods").await;
    assert_eq!(status, 200, "{methods}");
    assert_eq!(
        methods,
        json!({
            "password": false, "signup": false, "oidc_login_url": null,
            "jwt_bearer": true, "identity_header": false,
        })
    );
    // The admin the harness created has the right password, and still
    // cannot log in with it; nor can anyone sign up.
    let response = login_response(
        &server,
        json!({ "username": "admin", "password": ADMIN_PASSWORD }),
    )
    .await;
    assert!(
        warren_tests::accounts::session_cookie(&response).is_none(),
        "no session cookie"
    );
    let (status, body) = json_of(response).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let response = server
        .http
        .post(server.url("/api/v1/auth/signup"))
        .header("origin", &server.base_url)
        .json(&json!({ "username": "newbie", "password": "newbie-password-1234" }))
        .send()
        .await
        .expect("POST /auth/signup");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 403, "{body}");
    // The operator makes the admin an API token with the CLI (on the
    // running server's database), and it works.
    let output = Command::new(warren_binary())
        .args(["user", "token", "admin", "--label", "ops", "--data-dir"])
        .arg(&server.data_dir)
        .env(
            "WARREN_UID_RANGE",
            warren_tests::uid_range_of(&server.data_dir),
        )
        .env_remove("WARREN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run warren user token");
    assert!(
        output.status.success(),
        "warren user token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = String::from_utf8(output.stdout).expect("utf-8 token");
    let secret = secret.trim();
    let (status, body) = me(&server, secret).await;
    assert_eq!(
        (status, body["username"].as_str(), body["role"].as_str()),
        (200, Some("admin"), Some("admin")),
        "{body}"
    );
    let (status, tokens) = get_with(&server, secret, "/api/v1/me/tokens").await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens.to_string().contains("\"ops\""), "{tokens}");

    // An administrator comes in by JWT instead.
    let token = hs256(
        SECRET,
        &with(claims("sub-root", "root"), "role", json!("admin")),
    );
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        (status, body["role"].as_str()),
        (200, Some("admin")),
        "{body}"
    );
    let (status, users) = get_with(&server, &token, "/api/v1/admin/users").await;
    assert_eq!(status, 200, "{users}");
    assert!(users.to_string().contains("\"admin\""), "{users}");
}

/// A failed fetch is remembered like a successful one (`KeySet::key_for`):
/// while the provider is down, tokens with an unknown `kid` do not each
/// become another request to it, and the keys held still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_is_down_is_not_fetched_on_every_request() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let k1 = ec_key(dir.path(), "k1.pem");
    let keys = KeyServer::start(jwks(&[jwk(&k1, Algorithm::ES256, "k1")])).await;
    let server = Server::ready(&options(&[
        "--jwt-jwks-url",
        &keys.url,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]))
    .await;
    let token = sign(Algorithm::ES256, Some("k1"), &k1, &claims("kim", "x"));
    assert_eq!(me(&server, &token).await.0, 200);
    assert_eq!(keys.fetches(), 1);

    // The provider goes down. Known keys go on working; tokens of unknown
    // kids are refused (or found unverifiable), and cause at most one
    // fetch per 5 s between them, failed or not.
    keys.document.lock().expect("document").clear();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    for n in 0..20 {
        let token = sign(
            Algorithm::ES256,
            Some(&format!("made-up-{n}")),
            &k1,
            &claims("kim", "x"),
        );
        let (status, _) = me(&server, &token).await;
        statuses.push(status);
    }
    let token = sign(Algorithm::ES256, Some("k1"), &k1, &claims("kim", "x"));
    let (status, body) = me(&server, &token).await;
    assert_eq!(
        status, 200,
        "a known key while the provider is down: {body}"
    );
    let fetched = keys.fetches() - 1;
    assert!(
        fetched <= 2,
        "20 unknown kids in {:?} while the provider was down fetched the keys {fetched} \
         times (answers {statuses:?})",
        started.elapsed()
    );
}
