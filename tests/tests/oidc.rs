//! OpenID Connect login end to end, against a real OpenID provider (the
//! certified `oidc-provider` from npm, run by `tests/oidc/provider.mjs`):
//! a browser-like client with a cookie jar follows the redirects, logs in
//! at the provider and lands on warren with a session. Then the attacks
//! that must fail, one test each: a wrong or missing `state`, a replayed
//! code, and ID tokens the provider's test hook tampers with (wrong nonce,
//! another audience, expired, `alg: none`, HS256 with the RSA public key,
//! an unknown `kid`, another key under the right `kid`, another issuer, an
//! `iat` ahead), and an open redirect through `return_to`.
//!
//! Needs node and `tests/oidc/install.sh`; without them each test says so
//! loudly and passes, unless WARREN_REQUIRE_OIDC is set (CI), where they
//! fail.

use reqwest::redirect::Policy;
use reqwest::{StatusCode, Url};
use std::time::Duration;
use warren_tests::nginx::free_port;
use warren_tests::oidc::{log_in_at_provider, Provider, CLIENT_ID};
use warren_tests::{Server, ServerOptions};

/// warren and its provider, each knowing the other.
struct Setup {
    provider: Provider,
    server: Server,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &[&str]) -> Option<Setup> {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("a free port");
    let issuer = format!("http://127.0.0.1:{port}");
    let secret = dir.path().join("oidc-secret");
    std::fs::write(&secret, format!("{}\n", warren_tests::oidc::CLIENT_SECRET)).expect("secret");
    let mut options = ServerOptions::workers(1)
        .arg("--oidc-issuer")
        .arg(&issuer)
        .arg("--oidc-client-id")
        .arg(CLIENT_ID)
        .arg("--oidc-client-secret-file")
        .arg(&secret.display().to_string())
        .arg("--oidc-admin-claim")
        .arg("groups=warren-admins");
    for arg in extra {
        options = options.arg(arg);
    }
    let server = Server::ready(&options).await;
    let callback = server.url("/api/v1/auth/oidc/callback");
    let provider = Provider::start_on(Some(port), &[callback]).await?;
    assert_eq!(provider.issuer, issuer);
    Some(Setup {
        provider,
        server,
        _dir: dir,
    })
}

/// A browser: a cookie jar, redirects followed by hand.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_else(|| panic!("no Location in {response:?}"))
        .to_string()
}

/// Starts a login at warren: the provider's authorization URL.
async fn start(setup: &Setup, client: &reqwest::Client, return_to: &str) -> String {
    let url = Url::parse_with_params(
        &setup.server.url("/api/v1/auth/oidc/login"),
        &[("return_to", return_to)],
    )
    .expect("url");
    let response = client.get(url).send().await.expect("login start");
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{response:?}");
    let authorize = location(&response);
    assert!(authorize.starts_with(&setup.provider.issuer), "{authorize}");
    for needed in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
    ] {
        assert!(authorize.contains(needed), "{needed} missing: {authorize}");
    }
    authorize
}

/// Logs `login` in at the provider: warren's callback URL, not yet visited.
async fn through_provider(
    setup: &Setup,
    client: &reqwest::Client,
    login: &str,
    return_to: &str,
) -> Url {
    let authorize = start(setup, client, return_to).await;
    let password = format!("{login}-password");
    let callback = log_in_at_provider(client, &authorize, login, &password).await;
    assert!(
        callback.as_str().starts_with(&setup.server.base_url),
        "{callback}"
    );
    callback
}

async fn me(setup: &Setup, client: &reqwest::Client) -> (StatusCode, serde_json::Value) {
    let response = client
        .get(setup.server.url("/api/v1/me"))
        .send()
        .await
        .expect("me");
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let (status, code, _) = error_of(response).await;
    (status, code)
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    (status, code, message)
}

#[tokio::test]
async fn oidc_login_end_to_end_maps_username_and_role() {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let (status, methods) = setup.server.get_json("/api/v1/auth/methods").await;
    assert_eq!(status, 200);
    assert_eq!(methods["oidc_login_url"], "/api/v1/auth/oidc/login");
    assert_eq!(methods["password"], true);

    // alice: in the warren-admins group.
    let alice = browser();
    let callback = through_provider(&setup, &alice, "alice", "/files?dir=%2F").await;
    let response = alice.get(callback).send().await.expect("callback");
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{response:?}");
    assert_eq!(location(&response), "/files?dir=%2F");
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok().map(str::to_string))
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("warren_session=") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    let (status, user) = me(&setup, &alice).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["username"], "alice");
    assert_eq!(user["role"], "admin");

    // bob: not in it; a second login of alice finds the same user.
    let bob = browser();
    let callback = through_provider(&setup, &bob, "bob", "/").await;
    assert_eq!(
        bob.get(callback).send().await.expect("callback").status(),
        StatusCode::SEE_OTHER
    );
    let (_, bob_user) = me(&setup, &bob).await;
    assert_eq!(bob_user["username"], "bob");
    assert_eq!(bob_user["role"], "user");
    let again = browser();
    let callback = through_provider(&setup, &again, "alice", "/").await;
    assert_eq!(
        again.get(callback).send().await.expect("callback").status(),
        StatusCode::SEE_OTHER
    );
    let (_, same) = me(&setup, &again).await;
    assert_eq!(same["id"], user["id"], "keyed by (issuer, sub)");

    // The session works like any other: its user's worker answers.
    let ping = alice
        .get(setup.server.url("/api/v1/ping"))
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status(), StatusCode::OK);
    // And is audited.
    let admin = warren_tests::accounts::Caller::admin(&setup.server).await;
    let (_, audit) = admin.get("/api/v1/admin/audit?event=user_created").await;
    let text = audit.to_string();
    assert!(text.contains("first OpenID Connect login"), "{text}");
}

#[tokio::test]
async fn a_wrong_state_is_refused() {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let client = browser();
    let mut callback = through_provider(&setup, &client, "alice", "/").await;
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged-state".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    callback.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, code) = error_code(client.get(callback).send().await.expect("cb")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert_eq!(me(&setup, &client).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_callback_in_another_browser_is_refused() {
    // Login CSRF: an attacker's own callback URL (their code, their state)
    // opened in the victim's browser must not log the victim in.
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let attacker = browser();
    let callback = through_provider(&setup, &attacker, "bob", "/").await;
    let victim = browser();
    let (status, _) = error_code(victim.get(callback.clone()).send().await.expect("cb")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(me(&setup, &victim).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_replayed_code_is_refused() {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let client = browser();
    let callback = through_provider(&setup, &client, "alice", "/").await;
    let first = client.get(callback.clone()).send().await.expect("cb");
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    // The same browser (its state cookie was cleared; send it again by
    // hand, as an attacker holding both would) replays the callback.
    let state = callback
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let replay = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
        .get(callback)
        .header("cookie", format!("warren_oidc_state={state}"))
        .send()
        .await
        .expect("replay");
    let (status, _) = error_code(replay).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a used state and code");
}

/// Logs alice in with the provider's next ID token tampered as `kind`:
/// warren must refuse (401, for the reason `why` names) and open no
/// session.
async fn tampered(kind: &str, why: &str) {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let client = browser();
    let callback = through_provider(&setup, &client, "alice", "/").await;
    setup.provider.tamper(Some(kind)).await;
    let response = client.get(callback).send().await.expect("callback");
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_token"),
        "tampered ID token {kind}: {message}"
    );
    assert!(
        message.contains(why),
        "{kind}: {message:?} should say {why:?}"
    );
    assert_eq!(me(&setup, &client).await.0, StatusCode::UNAUTHORIZED);
    // Nobody was created for it.
    let admin = warren_tests::accounts::Caller::admin(&setup.server).await;
    let (_, users) = admin.get("/api/v1/admin/users").await;
    assert!(!users.to_string().contains("\"alice\""), "{users}");
    let (_, audit) = admin.get("/api/v1/admin/audit?event=login_failed").await;
    assert!(audit.to_string().contains("OpenID Connect"), "{audit}");
}

#[tokio::test]
async fn an_id_token_with_a_wrong_nonce_is_refused() {
    tampered("wrong-nonce", "nonce").await;
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused() {
    tampered("other-aud", "audience").await;
}

#[tokio::test]
async fn an_expired_id_token_is_refused() {
    tampered("expired", "expired").await;
}

#[tokio::test]
async fn an_unsigned_id_token_alg_none_is_refused() {
    tampered("alg-none", "not a well-formed JWT").await;
}

#[tokio::test]
async fn an_hs256_id_token_keyed_with_the_rsa_public_key_is_refused() {
    tampered("hs256-rsa-public", "not allowed for its key").await;
}

#[tokio::test]
async fn an_id_token_with_an_unknown_kid_is_refused() {
    tampered("unknown-kid", "unknown key").await;
}

#[tokio::test]
async fn an_id_token_signed_by_another_key_under_the_right_kid_is_refused() {
    tampered("other-key-same-kid", "signature is not valid").await;
}

#[tokio::test]
async fn an_id_token_from_another_issuer_is_refused() {
    tampered("wrong-issuer", "issuer").await;
}

#[tokio::test]
async fn an_id_token_issued_in_the_future_is_refused() {
    tampered("future-iat", "in the future").await;
}

#[tokio::test]
async fn return_to_cannot_leave_the_server() {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    let client = browser();
    for target in [
        "https://evil.test/",
        "//evil.test/x",
        "/\\evil.test",
        "http:evil.test",
        "evil.test",
    ] {
        let url = Url::parse_with_params(
            &setup.server.url("/api/v1/auth/oidc/login"),
            &[("return_to", target)],
        )
        .expect("url");
        let response = client.get(url).send().await.expect("login");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{target}");
    }
    // A local path goes through to the end.
    let callback = through_provider(&setup, &client, "bob", "/api/v1/me").await;
    let response = client.get(callback).send().await.expect("cb");
    assert_eq!(location(&response), "/api/v1/me");
}

#[tokio::test]
async fn unknown_users_are_refused_when_creation_is_off_and_names_are_never_merged() {
    let Some(setup) = setup(&[]).await else {
        return;
    };
    // A local user already holds the name the provider gives alice.
    let admin = warren_tests::accounts::Caller::admin(&setup.server).await;
    admin.create_user("alice", "a-long-local-password").await;
    let client = browser();
    let callback = through_provider(&setup, &client, "alice", "/").await;
    let (status, code) = error_code(client.get(callback).send().await.expect("cb")).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(me(&setup, &client).await.0, StatusCode::UNAUTHORIZED);

    let Some(closed) = setup_closed().await else {
        return;
    };
    let client = browser();
    let callback = through_provider(&closed, &client, "bob", "/").await;
    let (status, code) = error_code(client.get(callback).send().await.expect("cb")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "identity_refused")
    );
}

async fn setup_closed() -> Option<Setup> {
    setup(&["--oidc-create-users", "false"]).await
}
