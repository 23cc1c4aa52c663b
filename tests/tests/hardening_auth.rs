//! Issue 9's accounts findings, kept as tests: the audit log cannot be
//! flooded (rate limit, field cap, retention), a lockout cannot be aimed at
//! someone else (and `warren user unlock` / the admin API end one), logout
//! with an API token is refused, and names with invisible characters are
//! refused. Every scenario runs on SQLite and on PostgreSQL (skipped loudly
//! when PostgreSQL is unreachable, unless `WARREN_REQUIRE_POSTGRES=1`).

use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use warren_tests::accounts::{Caller, Database};
use warren_tests::{eventually, metric_value, Server, ServerOptions, ADMIN_PASSWORD};

warren_tests::on_both_backends!(
    a_flood_of_denials_and_cross_site_logins_leaves_the_audit_log_bounded,
    audit_events_older_than_the_retention_are_deleted,
    the_audit_log_keeps_at_most_its_row_cap,
    api_tokens_per_user_are_capped,
    a_lockout_cannot_be_aimed_at_someone_else_and_unlock_ends_it,
    the_account_brake_spares_addresses_that_logged_in_before,
    logout_with_an_api_token_is_refused_not_faked,
    names_with_bidi_or_invisible_characters_are_refused,
);

/// The stored-field cap of the audit log (bytes).
const FIELD_CAP: usize = 256;

async fn start(db: &Database, options: ServerOptions) -> Server {
    Server::ready(&options.database(db)).await
}

fn options() -> ServerOptions {
    ServerOptions::workers(1)
}

/// Every audit row with `event` (up to 1000).
async fn audit_rows(admin: &Caller, event: &str) -> Vec<Value> {
    let (status, rows) = admin
        .get(&format!("/api/v1/admin/audit?event={event}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array().cloned().unwrap_or_default()
}

async fn a_flood_of_denials_and_cross_site_logins_leaves_the_audit_log_bounded(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("mallory", "mallory-password").await;
    let mallory = Caller::login(&server, "mallory", "mallory-password").await;
    let started = Instant::now();
    // 200 requests to an admin route with a 15 KiB path (under the 16 KiB
    // request-target limit): each is a 403.
    let long = "x".repeat(15 * 1024);
    for _ in 0..200 {
        let (status, _) = mallory.get(&format!("/api/v1/admin/users/{long}")).await;
        assert_eq!(status, 403);
    }
    let rows = audit_rows(&admin, "access_denied").await;
    // 60 a minute per address and per user (the burst), plus what refilled
    // while the flood ran.
    let bound = 60 + started.elapsed().as_secs() as usize + 2;
    assert!(
        !rows.is_empty() && rows.len() <= bound,
        "{} access_denied rows for 200 denials (bound {bound})",
        rows.len()
    );
    for row in &rows {
        for field in ["actor_id", "actor_name", "subject", "address", "detail"] {
            let text = row[field].as_str().unwrap_or_default();
            assert!(
                text.len() <= FIELD_CAP,
                "{field} holds {} bytes",
                text.len()
            );
        }
        let subject = row["subject"].as_str().unwrap_or_default();
        assert!(subject.ends_with('…'), "a cut field is marked: {subject}");
        assert!(
            subject.starts_with("GET /api/v1/admin/users/xxx"),
            "{subject}"
        );
    }
    let metrics = server.metrics().await;
    let dropped = metric_value(
        &metrics,
        "warren_audit_dropped_total",
        "event=\"access_denied\"",
    )
    .unwrap_or(0.0);
    assert!(
        dropped as usize + rows.len() >= 200,
        "dropped {dropped} + stored {} < 200:\n{metrics}",
        rows.len()
    );
    let log = server
        .log_containing("audit events beyond the audit rate limit")
        .await;
    assert_eq!(
        log.matches("audit events beyond the audit rate limit")
            .count(),
        1,
        "drops are logged at most once a minute"
    );
    assert!(
        log.matches("security_event=true event=\"access_denied\"")
            .count()
            <= bound,
        "each dropped event was logged"
    );

    // Unauthenticated cross-site logins: the login throttle sees them (30
    // a minute per address; two logins above used two), so the flood turns
    // into 429s that write nothing.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = server
            .http
            .post(server.url("/api/v1/auth/login"))
            .header("origin", "http://evil.test")
            .json(&json!({"username": "admin", "password": "whatever-password"}))
            .send()
            .await
            .expect("login");
        statuses.push(response.status().as_u16());
    }
    let forbidden = statuses.iter().filter(|&&s| s == 403).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(forbidden + throttled, 40, "{statuses:?}");
    assert!(
        (26..=31).contains(&forbidden) && statuses.ends_with(&[429; 5]),
        "cross-site logins count against the login limit: {statuses:?}"
    );
    // Refused logins are logged, not stored; the log lines share the
    // address's audit allowance, which the flood above used up.
    let mut refused = 0;
    for _ in 0..30 {
        let response = warren_tests::accounts::login_response(
            &server,
            json!({"username": "admin", "password": "whatever-password"}),
        )
        .await;
        // (One may be admitted if the limit refilled meanwhile.)
        refused += usize::from(response.status() == 429);
    }
    assert!(refused >= 28, "{refused} of 30 refused");
    let metrics = server.metrics().await;
    let dropped = metric_value(
        &metrics,
        "warren_audit_dropped_total",
        "event=\"login_throttled\"",
    )
    .unwrap_or(0.0);
    let logged = server
        .log()
        .matches("security_event=true event=\"login_throttled\"")
        .count();
    assert!(
        logged <= started.elapsed().as_secs() as usize + 2 && dropped as usize + logged == refused,
        "{logged} refused logins logged, {dropped} dropped"
    );
}

async fn audit_events_older_than_the_retention_are_deleted(db: Database) {
    let server = start(&db, options().arg("--audit-retention").arg("2s")).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("olivia", "olivia-password").await;
    assert_eq!(audit_rows(&admin, "user_created").await.len(), 1);
    let gone = eventually(Duration::from_secs(8), || async {
        audit_rows(&admin, "user_created").await.is_empty()
    })
    .await;
    assert!(gone, "an event older than --audit-retention is still there");

    // The default keeps events (90 days).
    let db2 = match &db {
        Database::Sqlite => Database::Sqlite,
        Database::Postgres { .. } => match Database::postgres("audit retention default").await {
            Some(fresh) => fresh,
            None => return,
        },
    };
    let keeping = start(&db2, options()).await;
    let admin = Caller::admin(&keeping).await;
    admin.create_user("olivia", "olivia-password").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(audit_rows(&admin, "user_created").await.len(), 1);
    // A retention that is not a duration is refused at start.
    let output = std::process::Command::new(warren_tests::warren_binary())
        .args(["serve", "--audit-retention", "forever"])
        .output()
        .expect("run warren");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--audit-retention"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn the_audit_log_keeps_at_most_its_row_cap(db: Database) {
    // Pruning runs every quarter of the retention (here every 5 s, long
    // before any of these events is 20 s old: only the cap removes them).
    let options = options()
        .arg("--audit-max-rows")
        .arg("4")
        .arg("--audit-retention")
        .arg("20s");
    let server = start(&db, options).await;
    let admin = Caller::admin(&server).await;
    for n in 0..10 {
        admin
            .create_user(&format!("user{n}"), "a-password-of-users")
            .await;
    }
    let capped = eventually(Duration::from_secs(12), || async {
        let (status, rows) = admin.get("/api/v1/admin/audit?limit=1000").await;
        status == 200 && rows.as_array().is_some_and(|rows| rows.len() <= 4)
    })
    .await;
    let (_, rows) = admin.get("/api/v1/admin/audit?limit=1000").await;
    assert!(capped, "more rows than --audit-max-rows: {rows}");
    // The newest are the ones kept.
    assert!(rows.to_string().contains("user9"), "{rows}");
}

async fn api_tokens_per_user_are_capped(db: Database) {
    let server = start(&db, options().arg("--token-rate").arg("1000")).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("tess", "tess-password").await;
    let tess = Caller::login(&server, "tess", "tess-password").await;
    let mut last = String::new();
    for n in 0..100 {
        let (status, body) = tess.new_token(&format!("t{n}")).await;
        assert_eq!(status, 201, "token {n}: {body}");
        last = body["id"].as_str().expect("id").to_string();
    }
    let (status, body) = tess.new_token("one too many").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoke one")),
        "{body}"
    );
    assert_eq!(
        tess.delete(&format!("/api/v1/me/tokens/{last}")).await.0,
        204
    );
    let (status, body) = tess.new_token("room again").await;
    assert_eq!(status, 201, "{body}");

    // Creating and revoking in a loop (each revocation a row of the
    // revocation feed) is limited by --token-rate (default 30 a minute).
    let db = db_again(&db).await;
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("tess", "tess-password").await;
    let tess = Caller::login(&server, "tess", "tess-password").await;
    let mut statuses = Vec::new();
    for n in 0..31 {
        let (status, body) = tess.new_token(&format!("c{n}")).await;
        if let Some(id) = body["id"].as_str() {
            assert_eq!(tess.delete(&format!("/api/v1/me/tokens/{id}")).await.0, 204);
        }
        statuses.push(status);
    }
    assert!(statuses[..30].iter().all(|&s| s == 201), "{statuses:?}");
    assert_eq!(statuses[30], 429, "{statuses:?}");
}

/// A second, fresh database of the same backend.
async fn db_again(db: &Database) -> Database {
    match db {
        Database::Sqlite => Database::Sqlite,
        Database::Postgres { .. } => Database::postgres("a second server")
            .await
            .expect("PostgreSQL was reachable a moment ago"),
    }
}

/// One login attempt; `forwarded` is sent as X-Forwarded-For (the tests'
/// servers trust 127.0.0.1 as a proxy, so it is the client's address; none
/// means 127.0.0.1 itself).
async fn login_from(
    server: &Server,
    forwarded: Option<&str>,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let mut request = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}));
    if let Some(address) = forwarded {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.expect("login")
}

async fn status_from(server: &Server, forwarded: Option<&str>, user: &str, password: &str) -> u16 {
    login_from(server, forwarded, user, password)
        .await
        .status()
        .as_u16()
}

/// Runs `warren user ARGS` against the server's database.
fn warren_user(server: &Server, db: &Database, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(warren_tests::warren_binary());
    command
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env_remove("WARREN_DATABASE_URL")
        .env("WARREN_LOG", "warn");
    if let Some(url) = db.url() {
        command.arg("--database-url").arg(url);
    }
    let output = command.output().expect("run warren user");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn a_lockout_cannot_be_aimed_at_someone_else_and_unlock_ends_it(db: Database) {
    let server = start(
        &db,
        options()
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32")
            .arg("--login-rate-per-account")
            .arg("60"),
    )
    .await;
    let admin = Caller::admin(&server).await;
    // The attacker, at 127.0.0.1, guesses admin's password 12 times: the
    // 10th failure locks admin out *for 127.0.0.1*.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(status_from(&server, None, "admin", "wrong-password").await);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 429, 429]
    );
    let locked = login_from(&server, None, "admin", ADMIN_PASSWORD).await;
    assert_eq!(locked.status(), 429, "locked for the attacker's address");
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry > 14 * 60, "retry-after {retry}");
    // The real admin, elsewhere (and never seen before), still logs in.
    assert_eq!(
        status_from(&server, Some("203.0.113.7"), "admin", ADMIN_PASSWORD).await,
        200
    );
    assert_eq!(
        status_from(&server, Some("2001:db8:7::1"), "Admin", ADMIN_PASSWORD).await,
        200
    );
    let lockouts = audit_rows(&admin, "lockout").await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert_eq!(lockouts[0]["address"], "127.0.0.1");
    assert_eq!(lockouts[0]["actor_name"], "admin");

    // `warren user unlock` on the running server's database.
    let (ok, out) = warren_user(&server, &db, &["unlock", "admin"]);
    assert!(ok, "{out}");
    let unlocked = eventually(Duration::from_secs(1), || async {
        status_from(&server, None, "admin", ADMIN_PASSWORD).await == 200
    })
    .await;
    assert!(unlocked, "warren user unlock reaches the server within 1 s");
    let (ok, out) = warren_user(&server, &db, &["unlock", "nobody"]);
    assert!(!ok && out.contains("no user named"), "{out}");

    // The admin API: lock admin out for 198.51.100.9, then unlock.
    for _ in 0..10 {
        assert_eq!(
            status_from(&server, Some("198.51.100.9"), "admin", "wrong-password").await,
            401
        );
    }
    assert_eq!(
        status_from(&server, Some("198.51.100.9"), "admin", ADMIN_PASSWORD).await,
        429
    );
    let id = admin.user_id();
    let (status, body) = admin
        .post(&format!("/api/v1/admin/users/{id}/unlock"), json!({}))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        status_from(&server, Some("198.51.100.9"), "admin", ADMIN_PASSWORD).await,
        200,
        "the admin API's unlock applies at once"
    );
    let missing = uuid::Uuid::new_v4();
    let (status, body) = admin
        .post(&format!("/api/v1/admin/users/{missing}/unlock"), json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    admin.create_user("walter", "walter-password").await;
    let walter = Caller::login(&server, "walter", "walter-password").await;
    let (status, _) = walter
        .post(&format!("/api/v1/admin/users/{id}/unlock"), json!({}))
        .await;
    assert_eq!(status, 403);
    let unlocks = audit_rows(&admin, "unlock").await;
    assert_eq!(unlocks.len(), 2, "{unlocks:?}");
    assert!(unlocks.iter().all(|row| row["subject"] == "admin"));
    assert!(
        unlocks
            .iter()
            .any(|row| row["actor_name"].as_str().unwrap_or("").starts_with("cli:")),
        "{unlocks:?}"
    );
}

async fn the_account_brake_spares_addresses_that_logged_in_before(db: Database) {
    let server = start(
        &db,
        options()
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32")
            .arg("--login-rate-per-account")
            .arg("3"),
    )
    .await;
    // The admin logs in from home (one of the account's three a minute).
    assert_eq!(
        status_from(&server, Some("203.0.113.7"), "admin", ADMIN_PASSWORD).await,
        200
    );
    // Strangers from many addresses use up the rest of the account's
    // allowance; then the brake refuses them (a short wait, not a lock).
    let mut statuses = Vec::new();
    for n in 1..=4 {
        let address = format!("198.51.100.{n}");
        statuses.push(status_from(&server, Some(&address), "admin", "wrong-password").await);
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    let braked = login_from(&server, Some("192.0.2.99"), "admin", ADMIN_PASSWORD).await;
    assert_eq!(braked.status(), 429, "a new address waits for the brake");
    let retry: u64 = braked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        retry <= 60,
        "the brake is never a lock: retry-after {retry}"
    );
    // Home is exempt.
    assert_eq!(
        status_from(&server, Some("203.0.113.7"), "admin", ADMIN_PASSWORD).await,
        200,
        "the brake was aimed at the admin's own known address"
    );
}

async fn logout_with_an_api_token_is_refused_not_faked(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    let (status, created) = admin
        .post(
            "/api/v1/me/tokens",
            json!({"name": "script", "scope": "write"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let script = Caller {
        token: created["secret"].as_str().expect("secret").to_string(),
        ..admin.bearer()
    };
    let (status, body) = script.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("DELETE /api/v1/me/tokens/{id}")),
        "{message}"
    );
    assert_eq!(script.get("/api/v1/me").await.0, 200, "nothing changed");
    assert!(
        audit_rows(&admin, "logout").await.is_empty(),
        "no logout was audited"
    );
    // Revoking the token the way the message says ends it.
    assert_eq!(
        script
            .send(Method::DELETE, &format!("/api/v1/me/tokens/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(script.get("/api/v1/me").await.0, 401);
    // A session's logout still works, as a cookie or a bearer token.
    assert_eq!(admin.post("/api/v1/auth/logout", json!({})).await.0, 204);
    assert_eq!(admin.get("/api/v1/me").await.0, 401);
    let bearer = Caller::admin(&server).await.bearer();
    assert_eq!(bearer.post("/api/v1/auth/logout", json!({})).await.0, 204);
    assert_eq!(bearer.get("/api/v1/me").await.0, 401);
}

/// Bidi controls, zero-width and other invisible characters.
const INVISIBLE: [char; 16] = [
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}',
    '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}',
];

async fn names_with_bidi_or_invisible_characters_are_refused(db: Database) {
    let server = start(&db, options().arg("--allow-signup")).await;
    let admin = Caller::admin(&server).await;
    for c in INVISIBLE {
        let name = format!("adm{c}in");
        let (status, body) = admin
            .post(
                "/api/v1/admin/users",
                json!({"username": name, "password": "spoofer-password"}),
            )
            .await;
        assert_eq!(status, 422, "admin create {name:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid");
        let response = server
            .http
            .post(server.url("/api/v1/auth/signup"))
            .json(&json!({"username": name, "password": "spoofer-password"}))
            .send()
            .await
            .expect("signup");
        assert_eq!(response.status(), 422, "signup {name:?}");
        let (status, body) = admin
            .post(
                "/api/v1/me/tokens",
                json!({"name": format!("deploy{c}key"), "scope": "read"}),
            )
            .await;
        assert_eq!(
            status,
            422,
            "token name with U+{:04X}: {body}",
            u32::from(c)
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("invisible"), "{message}");
    }
    let (ok, out) = warren_user(&server, &db, &["add", "ad\u{202E}min"]);
    assert!(!ok && out.contains("usernames are"), "{out}");
    let (status, body) = admin
        .post(
            "/api/v1/me/tokens",
            json!({"name": "déploiement ✓ 日本", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "printable names stay allowed: {body}");
    let (_, users) = admin.get("/api/v1/admin/users").await;
    assert_eq!(users.as_array().map(Vec::len), Some(1), "{users}");
}
