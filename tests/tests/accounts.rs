//! Accounts, sessions and the authenticated API, end to end: the real
//! binary, driven over HTTP. Every scenario runs twice: on SQLite and on a
//! fresh database of the real PostgreSQL (skipped loudly when PostgreSQL is
//! unreachable, unless `WARREN_REQUIRE_POSTGRES=1`, as in CI).

use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use warren_tests::accounts::{login_response, session_cookie, Caller, Database};
use warren_tests::{eventually, metric_value, Server, ServerOptions, ADMIN_PASSWORD};

warren_tests::on_both_backends!(
    login_me_logout_and_cookie_flags,
    unknown_user_and_wrong_password_are_indistinguishable,
    lockout_and_rate_limit_answer_429_with_retry_after,
    sessions_expire_absolutely_and_when_idle,
    a_revoked_credential_fails_on_the_very_next_request,
    other_users_resources_are_404_and_admin_routes_403,
    cookie_changes_need_our_origin,
    the_database_holds_no_secret_in_plaintext,
    the_cli_manages_users_while_the_server_runs,
    bad_input_gets_the_json_error_shape,
    oldest_sessions_are_evicted_beyond_the_limit,
    admin_changes_take_effect_and_are_audited,
    first_start_prints_a_random_admin_password_once,
    single_user_mode_has_one_password_and_no_admin,
    signup_only_when_allowed,
    per_account_limits_and_forwarded_addresses,
    api_tokens_expire_and_audit_filters_by_time,
);

/// Two masters on one PostgreSQL: a revocation on one is honoured by the
/// other within 1 s, though the other had the session cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_masters_share_revocations() {
    let Some(db) = Database::postgres("postgres_two_masters_share_revocations").await else {
        return;
    };
    let first = start(&db, options()).await;
    let second = start(&db, options()).await;
    let on_first = Caller::admin(&first).await;
    let on_second = Caller {
        base_url: second.base_url.clone(),
        ..on_first.bearer()
    };
    assert_eq!(
        on_second.get("/api/v1/me").await.0,
        200,
        "cached on the second master"
    );
    // A revoked session: logout on the first master.
    let (status, _) = on_first.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204);
    let started = Instant::now();
    let revoked = eventually(Duration::from_secs(1), || async {
        on_second.get("/api/v1/me").await.0 == 401
    })
    .await;
    assert!(
        revoked,
        "the second master still accepts a logged-out session after 1 s"
    );
    eprintln!(
        "revocation reached the second master in {:?}",
        started.elapsed()
    );

    // A disabled user: every credential on every master.
    let admin = Caller::admin(&first).await;
    let grace_id = admin.create_user("grace", "grace-password").await;
    let grace = Caller::login(&second, "grace", "grace-password").await;
    assert_eq!(grace.get("/api/v1/ping").await.0, 200);
    let (status, _) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{grace_id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let revoked = eventually(Duration::from_secs(1), || async {
        grace.get("/api/v1/ping").await.0 == 401
    })
    .await;
    assert!(
        revoked,
        "a disable on one master is honoured by the other within 1 s"
    );
}

async fn start(db: &Database, options: ServerOptions) -> Server {
    Server::ready(&options.database(db)).await
}

fn options() -> ServerOptions {
    ServerOptions::workers(1)
}

async fn login_me_logout_and_cookie_flags(db: Database) {
    let server = start(&db, options().arg("--trusted-proxy").arg("127.0.0.0/8")).await;
    let response = login_response(
        &server,
        json!({"username": "ADMIN", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), 200, "usernames are case-insensitive");
    let (token, cookie) = session_cookie(&response).expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure flag: {cookie}"
    );
    assert_eq!(token.len(), 43, "256-bit token, base64url");
    for header in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(response.headers().contains_key(header), "{header} missing");
    }
    assert!(!response.headers().contains_key("strict-transport-security"));
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["user"]["username"], "admin");
    assert_eq!(body["user"]["role"], "admin");
    assert!(body["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Behind a trusted TLS proxy: Secure cookie and HSTS.
    let response = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "203.0.113.5")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let (_, cookie) = session_cookie(&response).expect("cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(response.headers().contains_key("strict-transport-security"));

    let caller = Caller::admin(&server).await;
    let (status, me) = caller.get("/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "admin");
    let (status, me) = caller.bearer().get("/api/v1/me").await;
    assert_eq!(status, 200, "the session works as a bearer token: {me}");
    let (status, ping) = caller.get("/api/v1/ping").await;
    assert_eq!((status, ping["slot"].as_u64()), (200, Some(0)), "{ping}");

    let (status, _) = caller.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204);
    let (status, body) = caller.get("/api/v1/me").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, _) = server.get_json("/api/v1/me").await;
    assert_eq!(status, 401, "no credentials");
}

async fn unknown_user_and_wrong_password_are_indistinguishable(db: Database) {
    let server = start(&db, options()).await;
    let mut answers = Vec::new();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..6 {
        for (which, username) in ["admin", "no-such-user"].into_iter().enumerate() {
            let started = Instant::now();
            let response = login_response(
                &server,
                json!({"username": username, "password": format!("wrong password {round}")}),
            )
            .await;
            times[which].push(started.elapsed());
            let status = response.status().as_u16();
            let cookie = session_cookie(&response);
            let body = response.text().await.expect("body");
            assert!(cookie.is_none());
            answers.push((status, body));
        }
    }
    // A look-alike of "admin" (PostgreSQL's lower() folds U+0130 to "i")
    // with the right password is an unknown user too.
    let body = json!({"username": "adm\u{130}n", "password": ADMIN_PASSWORD});
    let response = login_response(&server, body).await;
    answers.push((
        response.status().as_u16(),
        response.text().await.expect("body"),
    ));
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "{answers:?}"
    );
    assert_eq!(answers[0].0, 401);
    // The same work: both hash once. Medians within a generous factor (the
    // machine is shared); a skipped hash would be ~100x faster.
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (known, unknown) = (median(&mut times[0]), median(&mut times[1]));
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "known {known:?} vs unknown {unknown:?}"
    );
}

async fn lockout_and_rate_limit_answer_429_with_retry_after(db: Database) {
    let server = start(
        &db,
        options()
            .arg("--lockout-failures")
            .arg("3")
            .arg("--login-rate-per-address")
            .arg("8"),
    )
    .await;
    // Logged in before the lockout: sessions survive it.
    let admin = Caller::admin(&server).await;
    for _ in 0..3 {
        let response = login_response(
            &server,
            json!({"username": "admin", "password": "not it at all"}),
        )
        .await;
        assert_eq!(response.status(), 401);
    }
    // Locked: even the right password is refused now.
    let response = login_response(
        &server,
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((14 * 60..=15 * 60).contains(&retry), "retry-after {retry}");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_requests");
    // The per-address limit: 8 attempts a minute, 4 used so far (a refusal
    // for a locked account uses none).
    let mut statuses = Vec::new();
    for n in 0..5 {
        let response = login_response(
            &server,
            json!({"username": format!("user{n}"), "password": "whatever123"}),
        )
        .await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429]);
    let lockout = "security_event=true event=\"lockout\"";
    let caller_log = server.log_containing(lockout).await;
    assert!(caller_log.contains(lockout), "{caller_log}");
    let (status, rows) = admin.get("/api/v1/admin/audit?event=lockout").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let (_, failures) = admin
        .get("/api/v1/admin/audit?event=login_failed&user=admin")
        .await;
    assert_eq!(failures.as_array().map(Vec::len), Some(3), "{failures}");
}

async fn sessions_expire_absolutely_and_when_idle(db: Database) {
    let server = start(
        &db,
        options()
            .arg("--session-ttl")
            .arg("3s")
            .arg("--session-idle")
            .arg("1500ms"),
    )
    .await;
    // Kept busy, the session outlives the idle timeout but not the TTL.
    let caller = Caller::admin(&server).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let (status, body) = caller.get("/api/v1/me").await;
        assert_eq!(status, 200, "at {:?}: {body}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let expired = eventually(Duration::from_secs(2), || async {
        caller.get("/api/v1/me").await.0 == 401
    })
    .await;
    assert!(expired, "absolute expiry");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Left alone, a session ends after the idle timeout.
    let idle = Caller::admin(&server).await;
    assert_eq!(idle.get("/api/v1/me").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(idle.get("/api/v1/me").await.0, 401, "idle expiry");
}

async fn a_revoked_credential_fails_on_the_very_next_request(db: Database) {
    let server = start(&db, options()).await;
    let laptop = Caller::admin(&server).await;
    let phone = Caller::admin(&server).await;
    assert_eq!(phone.get("/api/v1/me").await.0, 200, "cached now");
    let (status, sessions) = laptop.get("/api/v1/me/sessions").await;
    assert_eq!(status, 200);
    let sessions = sessions.as_array().expect("list").clone();
    assert_eq!(sessions.len(), 2);
    let phone_session = sessions
        .iter()
        .find(|s| s["current"] == false)
        .expect("the other session");
    let (status, _) = laptop
        .delete(&format!(
            "/api/v1/me/sessions/{}",
            phone_session["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 204);
    assert_eq!(phone.get("/api/v1/me").await.0, 401);
    assert_eq!(laptop.get("/api/v1/me").await.0, 200);

    // API tokens: shown once, usable, revocable; read scope only reads.
    let (status, created) = laptop
        .post("/api/v1/me/tokens", json!({"name": "ci", "scope": "write"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let script = Caller {
        token: secret.clone(),
        ..laptop.bearer()
    };
    assert_eq!(script.get("/api/v1/ping").await.0, 200);
    let (_, listed) = laptop.get("/api/v1/me/tokens").await;
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );
    let (status, _) = laptop
        .delete(&format!(
            "/api/v1/me/tokens/{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 204);
    assert_eq!(script.get("/api/v1/ping").await.0, 401);

    let (_, read_only) = laptop
        .post(
            "/api/v1/me/tokens",
            json!({"name": "reader", "scope": "read"}),
        )
        .await;
    let reader = Caller {
        token: read_only["secret"].as_str().expect("secret").to_string(),
        ..laptop.bearer()
    };
    assert_eq!(reader.get("/api/v1/me").await.0, 200);
    let (status, body) = reader
        .post("/api/v1/me/tokens", json!({"name": "x", "scope": "write"}))
        .await;
    assert_eq!(status, 403, "{body}");

    // A password change ends the other sessions at once, not this one.
    let other = Caller::admin(&server).await;
    let (status, body) = laptop
        .post(
            "/api/v1/me/password",
            json!({"current_password": ADMIN_PASSWORD, "new_password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(other.get("/api/v1/me").await.0, 401);
    assert_eq!(laptop.get("/api/v1/me").await.0, 200);
    Caller::login(&server, "admin", "a brand new password").await;
}

async fn other_users_resources_are_404_and_admin_routes_403(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("alice", "alice-password").await;
    admin.create_user("bob", "bob-password").await;
    let alice = Caller::login(&server, "alice", "alice-password").await;
    let bob = Caller::login(&server, "bob", "bob-password").await;
    let (_, sessions) = alice.get("/api/v1/me/sessions").await;
    let alice_session = sessions[0]["id"].as_str().expect("id").to_string();
    let (_, token) = alice
        .post("/api/v1/me/tokens", json!({"name": "t", "scope": "read"}))
        .await;
    let alice_token = token["id"].as_str().expect("id").to_string();

    for path in [
        format!("/api/v1/me/sessions/{alice_session}"),
        format!("/api/v1/me/tokens/{alice_token}"),
        format!("/api/v1/me/sessions/{}", uuid::Uuid::new_v4()),
        "/api/v1/me/sessions/not-a-uuid".to_string(),
    ] {
        let (status, body) = bob.delete(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert_eq!(
        alice.get("/api/v1/me").await.0,
        200,
        "alice's session survived"
    );
    let (_, tokens) = alice.get("/api/v1/me/tokens").await;
    assert_eq!(tokens.as_array().map(Vec::len), Some(1));

    for (method, path) in [
        (Method::GET, "/api/v1/admin/users".to_string()),
        (Method::GET, "/api/v1/admin/sessions".to_string()),
        (Method::GET, "/api/v1/admin/audit".to_string()),
        (
            Method::DELETE,
            format!("/api/v1/admin/sessions/{alice_session}"),
        ),
    ] {
        let (status, body) = bob.send(method.clone(), &path, None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _) = server
            .http
            .request(method.clone(), server.url(&path))
            .send()
            .await
            .map(|r| (r.status().as_u16(), ()))
            .expect("request");
        assert_eq!(status, 401, "{method} {path} without a session");
    }
    let (status, denials) = admin
        .get("/api/v1/admin/audit?event=access_denied&user=bob")
        .await;
    assert_eq!(status, 200);
    assert_eq!(denials.as_array().map(Vec::len), Some(4), "{denials}");
}

async fn cookie_changes_need_our_origin(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    let body = json!({"name": "t", "scope": "read"});
    let cookie = format!("warren_session={}", admin.token);
    let post = || {
        server
            .http
            .post(server.url("/api/v1/me/tokens"))
            .header("cookie", &cookie)
            .json(&body)
    };
    let no_origin = post().send().await.expect("post");
    assert_eq!(no_origin.status(), 403);
    let evil = post()
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(evil.status(), 403);
    let evil_referer = post()
        .header("referer", "http://evil.example/page")
        .send()
        .await
        .expect("post");
    assert_eq!(evil_referer.status(), 403);
    let ours = post()
        .header("origin", &server.base_url)
        .send()
        .await
        .expect("post");
    assert_eq!(ours.status(), 201);
    let referer = post()
        .header("referer", format!("{}/some/page", server.base_url))
        .send()
        .await
        .expect("post");
    assert_eq!(referer.status(), 201);
    // Bearer requests carry no ambient authority: exempt.
    let (status, _) = admin.bearer().post("/api/v1/me/tokens", body.clone()).await;
    assert_eq!(status, 201);
    // A cross-site login attempt is refused too.
    let response = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .header("origin", "http://evil.example")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 403);
}

async fn the_database_holds_no_secret_in_plaintext(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("carol", "carol-secret-password").await;
    let carol = Caller::login(&server, "carol", "carol-secret-password").await;
    let (_, token) = carol
        .post("/api/v1/me/tokens", json!({"name": "t", "scope": "write"}))
        .await;
    let secret = token["secret"].as_str().expect("secret").to_string();
    // Let the batched last-seen writes happen too.
    carol.get("/api/v1/me").await;
    let dump = db.dump(&server).await;
    assert!(dump.contains("carol"), "the dump reads the tables");
    for needle in [
        ADMIN_PASSWORD,
        "carol-secret-password",
        admin.token.as_str(),
        carol.token.as_str(),
        secret.as_str(),
        &secret["wrn_".len()..],
    ] {
        assert!(!dump.contains(needle), "{needle:?} is stored in plaintext");
    }
    for user in ["admin", "carol"] {
        let hash = db.password_hash(&server, user).await;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{user}: {hash}"
        );
    }
    // Nor in the log.
    let log = server.log();
    for needle in [
        ADMIN_PASSWORD,
        "carol-secret-password",
        admin.token.as_str(),
        secret.as_str(),
    ] {
        assert!(!log.contains(needle), "{needle:?} is in the log");
    }
}

fn warren(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(warren_tests::warren_binary())
        .args(args)
        .env_remove("WARREN_DATABASE_URL")
        .env("WARREN_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run warren");
    if let Some(input) = stdin {
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("wait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn the_cli_manages_users_while_the_server_runs(db: Database) {
    let server = start(&db, options()).await;
    let data_dir = server.data_dir.to_string_lossy().into_owned();
    let mut store_args = vec!["--data-dir", data_dir.as_str()];
    if let Some(url) = db.url() {
        store_args.extend(["--database-url", url]);
    }
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut all: Vec<&str> = vec!["user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&store_args);
        warren(&all, stdin)
    };
    let password_file = server.data_dir.join("dave-password");
    std::fs::write(&password_file, "dave-password-1\n").expect("write");
    let (ok, out, err) = cli(
        &[
            "add",
            "dave",
            "--password-file",
            password_file.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    let dave = Caller::login(&server, "dave", "dave-password-1").await;
    assert_eq!(dave.login["user"]["role"], "user");

    let (ok, out, err) = cli(&["add", "Dave"], Some("another-password\n"));
    assert!(!ok, "duplicate name: {out}");
    assert!(err.contains("already exists"), "{err}");
    let (ok, _, err) = cli(&["add", "erin"], Some("short\n"));
    assert!(!ok && err.contains("at least 10 bytes"), "{err}");

    let (ok, out, _) = cli(&["list"], None);
    assert!(ok && out.contains("dave") && out.contains("admin"), "{out}");
    // Users made by the CLI get a uid from the range too.
    assert!(out.contains("UID") && out.contains(" 2000"), "{out}");

    let (ok, out, err) = cli(&["set-role", "dave", "admin"], None);
    assert!(ok, "{out}{err}");
    let promoted = eventually(Duration::from_secs(1), || async {
        dave.get("/api/v1/admin/users").await.0 == 200
    })
    .await;
    assert!(
        promoted,
        "a role change applies to a live session within 1 s"
    );

    let (ok, _, err) = cli(&["disable", "dave"], None);
    assert!(ok, "{err}");
    let revoked = eventually(Duration::from_secs(1), || async {
        dave.get("/api/v1/me").await.0 == 401
    })
    .await;
    assert!(revoked, "disable ends the sessions within 1 s");
    let response = login_response(
        &server,
        json!({"username": "dave", "password": "dave-password-1"}),
    )
    .await;
    assert_eq!(response.status(), 401, "a disabled user cannot log in");

    let (ok, _, err) = cli(&["enable", "dave"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["passwd", "dave"], Some("dave-password-2\n"));
    assert!(ok, "{err}");
    let dave = Caller::login(&server, "dave", "dave-password-2").await;
    let (ok, _, err) = cli(&["delete", "dave"], None);
    assert!(ok, "{err}");
    let revoked = eventually(Duration::from_secs(1), || async {
        dave.get("/api/v1/me").await.0 == 401
    })
    .await;
    assert!(revoked, "delete ends the sessions within 1 s");
    let (ok, _, err) = cli(&["delete", "dave"], None);
    assert!(!ok && err.contains("no user named"), "{err}");
}

async fn bad_input_gets_the_json_error_shape(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    let login = server.url("/api/v1/auth/login");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            server
                .http
                .post(&login)
                .header("content-type", "application/json")
                .body("{\"username\":"),
            400,
        ),
        (
            "wrong type",
            server
                .http
                .post(&login)
                .json(&json!({"username": 5, "password": "x"})),
            422,
        ),
        (
            "missing field",
            server.http.post(&login).json(&json!({"username": "admin"})),
            422,
        ),
        (
            "unknown field",
            server
                .http
                .post(&login)
                .json(&json!({"username": "a", "password": "b", "x": 1})),
            422,
        ),
        (
            "not JSON",
            server.http.post(&login).body("username=admin"),
            415,
        ),
        (
            "oversized",
            server
                .http
                .post(&login)
                .header("content-type", "application/json")
                .body(format!("{{\"username\":\"{}\"}}", "a".repeat(100_000))),
            413,
        ),
        (
            "unknown route",
            server.http.get(server.url("/api/v1/nope")),
            404,
        ),
        (
            "bad id",
            admin.request(Method::GET, "/api/v1/admin/users/12"),
            404,
        ),
        (
            "bad query",
            admin.request(Method::GET, "/api/v1/admin/audit?limit=lots"),
            400,
        ),
        (
            "bad username",
            admin
                .request(Method::POST, "/api/v1/admin/users")
                .json(&json!({"username": "../x", "password": "long enough pw"})),
            422,
        ),
        (
            "short password",
            admin
                .request(Method::POST, "/api/v1/admin/users")
                .json(&json!({"username": "x", "password": "short"})),
            422,
        ),
        (
            "bad role",
            admin
                .request(Method::POST, "/api/v1/admin/users")
                .json(&json!({"username": "x", "password": "long enough pw", "role": "root"})),
            422,
        ),
        (
            "taken name",
            admin
                .request(Method::POST, "/api/v1/admin/users")
                .json(&json!({"username": "Admin", "password": "long enough pw"})),
            409,
        ),
        (
            "signup off",
            server
                .http
                .post(server.url("/api/v1/auth/signup"))
                .json(&json!({"username": "x", "password": "long enough pw"})),
            404,
        ),
        (
            "last admin",
            admin
                .request(
                    Method::PATCH,
                    &format!("/api/v1/admin/users/{}", admin.user_id()),
                )
                .json(&json!({"role": "user"})),
            409,
        ),
    ];
    for (what, request, expected) in cases {
        let response = request.send().await.expect(what);
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    // Still serving, and the OpenAPI document lists the routes.
    let (status, doc) = server.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/auth/signup",
        "/api/v1/me",
        "/api/v1/me/sessions",
        "/api/v1/me/sessions/{id}",
        "/api/v1/me/password",
        "/api/v1/me/tokens",
        "/api/v1/me/tokens/{id}",
        "/api/v1/admin/users",
        "/api/v1/admin/users/{id}",
        "/api/v1/admin/users/{id}/sessions",
        "/api/v1/admin/sessions",
        "/api/v1/admin/sessions/{id}",
        "/api/v1/admin/audit",
        "/api/v1/ping",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(paths["/api/v1/admin/users/{id}"].get("patch").is_some());
    assert!(paths["/api/v1/admin/users/{id}"].get("delete").is_some());
}

async fn oldest_sessions_are_evicted_beyond_the_limit(db: Database) {
    let server = start(&db, options().arg("--max-sessions").arg("2")).await;
    let first = Caller::admin(&server).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = Caller::admin(&server).await;
    assert_eq!(first.get("/api/v1/me").await.0, 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let third = Caller::admin(&server).await;
    assert_eq!(
        first.get("/api/v1/me").await.0,
        401,
        "the oldest was evicted"
    );
    assert_eq!(second.get("/api/v1/me").await.0, 200);
    assert_eq!(third.get("/api/v1/me").await.0, 200);
}

async fn admin_changes_take_effect_and_are_audited(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    let frank_id = admin.create_user("frank", "frank-password").await;
    let frank = Caller::login(&server, "frank", "frank-password").await;
    assert_eq!(frank.get("/api/v1/ping").await.0, 200);
    let settings = Some(serde_json::json!({"theme": "dark"}));
    let (status, body) = frank
        .send(Method::PUT, "/api/v1/me/settings", settings)
        .await;
    assert_eq!(status, 200, "{body}");
    let franks_files = server.data_dir.join("users").join(&frank_id);
    assert!(franks_files.exists());
    let (status, body) = admin
        .delete(&format!("/api/v1/admin/users/{frank_id}/sessions"))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(frank.get("/api/v1/ping").await.0, 401, "force logout");

    let frank = Caller::login(&server, "frank", "frank-password").await;
    let (_, token) = frank
        .post(
            "/api/v1/me/tokens",
            json!({"name": "cron", "scope": "read"}),
        )
        .await;
    let script = Caller {
        token: token["secret"].as_str().expect("secret").to_string(),
        ..frank.bearer()
    };
    // A PATCH that changes nothing that matters ends nothing.
    let frank_path = format!("/api/v1/admin/users/{frank_id}");
    let patch = |body: serde_json::Value| admin.send(Method::PATCH, &frank_path, Some(body));
    let (status, _) = patch(json!({"role": "user", "disabled": false})).await;
    assert_eq!(status, 200);
    assert_eq!(
        frank.get("/api/v1/me").await.0,
        200,
        "a no-op PATCH kept the session"
    );

    let (status, user) = patch(json!({"disabled": true, "max_sessions": 3})).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["disabled"], true);
    assert_eq!(user["limits"]["max_sessions"], 3);
    assert_eq!(
        frank.get("/api/v1/me").await.0,
        401,
        "disable ends sessions"
    );
    assert_eq!(script.get("/api/v1/me").await.0, 401, "and refuses tokens");
    let (status, _) = patch(json!({"disabled": false})).await;
    assert_eq!(status, 200);
    assert_eq!(
        script.get("/api/v1/me").await.0,
        200,
        "enable brings tokens back"
    );
    assert_eq!(
        frank.get("/api/v1/me").await.0,
        401,
        "but not the old sessions"
    );
    let (status, user) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{frank_id}"),
            Some(
                json!({"disabled": false, "password": "frank-new-password", "max_sessions": null}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["limits"]["max_sessions"], serde_json::Value::Null);
    assert_eq!(script.get("/api/v1/me").await.0, 401, "a reset ends tokens");
    let frank = Caller::login(&server, "frank", "frank-new-password").await;
    let (status, sessions) = admin.get("/api/v1/admin/sessions").await;
    assert_eq!(status, 200);
    let franks = sessions
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["user_id"] == frank_id.as_str())
        .expect("frank's session")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        admin
            .delete(&format!("/api/v1/admin/sessions/{franks}"))
            .await
            .0,
        204
    );
    assert_eq!(frank.get("/api/v1/me").await.0, 401);
    assert_eq!(
        admin
            .delete(&format!("/api/v1/admin/users/{frank_id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        admin
            .get(&format!("/api/v1/admin/users/{frank_id}"))
            .await
            .0,
        404
    );
    let purged = eventually(Duration::from_secs(10), || async { !franks_files.exists() }).await;
    assert!(
        purged,
        "a deleted user's files stay; log:\n{}",
        server.log()
    );

    let (status, events) = admin.get("/api/v1/admin/audit?user=frank&limit=100").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = events
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for event in [
        "user_created",
        "login",
        "sessions_revoked",
        "user_disabled",
        "user_enabled",
        "password_reset",
        "limits_changed",
        "session_revoked",
        "user_deleted",
    ] {
        assert!(names.contains(&event), "{event} not audited: {names:?}");
    }
    let deleted = "security_event=true event=\"user_deleted\"";
    let log = server.log_containing(deleted).await;
    assert!(log.contains(deleted), "{log}");
    let metrics = server.metrics().await;
    for metric in [
        "warren_login_attempts_total{result=\"success\"}",
        "warren_sessions_active",
        "warren_http_requests_total{route=\"/api/v1/me\",status=\"401\"}",
        "warren_http_request_duration_seconds_bucket{",
        "warren_session_cache_requests_total{result=\"hit\"}",
        "warren_db_queries_total{origin=\"request\"}",
    ] {
        assert!(metrics.contains(metric), "{metric} missing");
    }
    assert!(metric_value(&metrics, "warren_login_attempts_total", "success").unwrap_or(0.0) >= 4.0);
}

async fn first_start_prints_a_random_admin_password_once(db: Database) {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let options = ServerOptions {
        no_admin_password: true,
        ..options()
    }
    .database(&db);
    let mut server = Server::start(data_dir.path(), &options);
    server.wait_ready().await;
    let log = server.log();
    let password = log
        .lines()
        .skip_while(|line| !line.contains("created the administrator `admin`"))
        .map(str::trim)
        .find(|line| line.len() == 20)
        .unwrap_or_else(|| panic!("no password printed:\n{log}"))
        .to_string();
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    let admin = Caller::login(&server, "admin", &password).await;
    assert_eq!(admin.login["user"]["role"], "admin");
    assert!(
        !db.dump(&server).await.contains(&password),
        "stored in plaintext"
    );
    let on_disk = walk(data_dir.path());
    assert!(
        !on_disk.contains(&password),
        "written to the data directory"
    );
    assert_eq!(server.stop().code(), Some(0));

    // A second start of the same database creates and prints nothing.
    let mut again = Server::start(data_dir.path(), &options);
    again.wait_ready().await;
    assert!(
        !again.log().contains("created the administrator"),
        "{}",
        again.log()
    );
    Caller::login(&again, "admin", &password).await;
    assert_eq!(again.stop().code(), Some(0));
}

/// Every file under `dir`, concatenated (lossily) for scanning.
fn walk(dir: &std::path::Path) -> String {
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return text;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&walk(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

async fn single_user_mode_has_one_password_and_no_admin(db: Database) {
    let server = start(
        &db,
        options()
            .arg("--mode")
            .arg("single")
            .env("WARREN_PASSWORD", "the only password"),
    )
    .await;
    let response = login_response(&server, json!({"password": "the wrong password"})).await;
    assert_eq!(response.status(), 401);
    let response = login_response(&server, json!({"password": "the only password"})).await;
    assert_eq!(response.status(), 200);
    let (token, _) = session_cookie(&response).expect("cookie");
    let owner = Caller {
        token,
        base_url: server.base_url.clone(),
        via_cookie: false,
        http: server.http.clone(),
        login: serde_json::Value::Null,
    };
    let (status, me) = owner.get("/api/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "owner");
    assert_eq!(owner.get("/api/v1/ping").await.0, 200);
    assert_eq!(
        owner.get("/api/v1/admin/users").await.0,
        404,
        "no user admin"
    );
    let (status, _) = owner
        .post(
            "/api/v1/me/password",
            json!({"current_password": "the only password", "new_password": "another password"}),
        )
        .await;
    assert_eq!(status, 403, "the operator sets the password");
    let (_, doc) = server.get_json("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| !p.starts_with("/api/v1/admin")));

    // The operator may give an argon2 hash instead of the password.
    let hash = db.password_hash(&server, "owner").await;
    drop(server);
    let fresh = match db {
        Database::Sqlite => Database::Sqlite,
        Database::Postgres { .. } => match Database::postgres("single-user hash").await {
            Some(fresh) => fresh,
            None => return,
        },
    };
    let password_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(password_file.path(), format!("{hash}\n")).expect("write");
    let hashed = start(
        &fresh,
        options()
            .arg("--mode")
            .arg("single")
            .arg("--password-file")
            .arg(password_file.path().to_str().expect("utf-8")),
    )
    .await;
    let response = login_response(&hashed, json!({"password": "the only password"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fresh.password_hash(&hashed, "owner").await, hash);
}

async fn signup_only_when_allowed(db: Database) {
    let server = start(&db, options().arg("--allow-signup")).await;
    let signup = |username: &str, password: &str| {
        server
            .http
            .post(server.url("/api/v1/auth/signup"))
            .json(&json!({"username": username, "password": password}))
            .send()
    };
    let response = signup("heidi", "heidi-password").await.expect("signup");
    assert_eq!(response.status(), 201);
    let (token, _) = session_cookie(&response).expect("logged in");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["user"]["role"], "user", "sign-up never makes admins");
    assert!(!token.is_empty());
    let response = signup("HEIDI", "another-password").await.expect("signup");
    assert_eq!(response.status(), 409);
    let response = signup("ivan", "short").await.expect("signup");
    assert_eq!(response.status(), 422);
    Caller::login(&server, "heidi", "heidi-password").await;
}

/// One login attempt from `forwarded` (sent as X-Forwarded-For).
async fn login_from(server: &Server, forwarded: &str, username: &str, password: &str) -> u16 {
    server
        .http
        .post(server.url("/api/v1/auth/login"))
        .header("x-forwarded-for", forwarded)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login")
        .status()
        .as_u16()
}

async fn per_account_limits_and_forwarded_addresses(db: Database) {
    // Not behind a trusted proxy: X-Forwarded-For is ignored, so rotating
    // it does not escape the per-address limit.
    let direct = start(&db, options().arg("--login-rate-per-address").arg("3")).await;
    let mut statuses = Vec::new();
    for n in 0..4 {
        let forwarded = format!("198.51.100.{n}");
        statuses.push(login_from(&direct, &forwarded, &format!("u{n}"), "wrong-password").await);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "spoofed X-Forwarded-For was believed"
    );
    drop(direct);

    // Behind a trusted proxy: each client address has its own allowance,
    // and one account has a limit across all addresses.
    let db2 = match &db {
        Database::Sqlite => Database::Sqlite,
        Database::Postgres { .. } => match Database::postgres("per-account limits").await {
            Some(fresh) => fresh,
            None => return,
        },
    };
    let proxied = start(
        &db2,
        options()
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32")
            .arg("--login-rate-per-address")
            .arg("3")
            .arg("--login-rate-per-account")
            .arg("4"),
    )
    .await;
    // One of admin's 4 attempts a minute: this login.
    let caller = Caller::admin(&proxied).await;
    let mut statuses = Vec::new();
    for n in 0..4 {
        let forwarded = format!("198.51.100.{n}");
        statuses.push(login_from(&proxied, &forwarded, "admin", "wrong-password").await);
    }
    assert_eq!(statuses, [401, 401, 401, 429], "per-account limit");
    // Another account from a fresh address is unaffected.
    assert_eq!(
        login_from(&proxied, "203.0.113.1", "someone", "wrong-password").await,
        401
    );
    let (_, rows) = caller
        .get("/api/v1/admin/audit?event=login_failed&user=admin")
        .await;
    let addresses: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["address"].as_str())
        .collect();
    assert!(
        addresses.contains(&"198.51.100.2"),
        "the audit log records the forwarded client: {addresses:?}"
    );
}

async fn api_tokens_expire_and_audit_filters_by_time(db: Database) {
    let server = start(&db, options()).await;
    let admin = Caller::admin(&server).await;
    let (status, created) = admin
        .post(
            "/api/v1/me/tokens",
            json!({"name": "short-lived", "scope": "read", "expires_in_seconds": 1}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["expires_at"].is_string());
    let script = Caller {
        token: created["secret"].as_str().expect("secret").to_string(),
        ..admin.bearer()
    };
    assert_eq!(script.get("/api/v1/me").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(script.get("/api/v1/me").await.0, 401, "expired token");
    let (status, body) = admin
        .post(
            "/api/v1/me/tokens",
            json!({"name": "forever", "scope": "read", "expires_in_seconds": 0}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, all) = admin
        .get("/api/v1/admin/audit?since=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    assert!(all.as_array().is_some_and(|rows| !rows.is_empty()));
    let (status, none) = admin
        .get("/api/v1/admin/audit?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    assert_eq!(none.as_array().map(Vec::len), Some(0));
    let (status, limited) = admin.get("/api/v1/admin/audit?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(limited.as_array().map(Vec::len), Some(1));
    let (status, body) = admin.get("/api/v1/admin/audit?since=yesterday").await;
    assert_eq!(status, 400, "{body}");
}
