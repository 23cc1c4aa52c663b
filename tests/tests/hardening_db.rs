//! The accounts database under failure: a disk that fills up (SQLite on a
//! small tmpfs; users cannot fill it past warren's reserve, so something
//! else does) and connections that die mid-transaction (PostgreSQL). A
//! failed write must be answered as failed (`507` / `503`, JSON, never
//! `500`), must not change anything, and must not poison the connection it
//! ran on: everything works again as soon as the cause is gone.

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use warren_tests::accounts::{Caller, Database};
use warren_tests::{eventually, Server, ServerOptions, SmallFs};

/// A status the server may give for a write the database could not store.
fn is_outage(status: u16, body: &Value) -> bool {
    matches!(
        (status, body["error"]["code"].as_str()),
        (507, Some("disk_full")) | (503, Some("busy" | "database_unavailable"))
    )
}

/// Everything that writes to the accounts database works: login, logout
/// (which really ends the session), token revocation, disabling a user and
/// ending their sessions.
async fn all_writes_work(server: &Server, admin: &Caller, user_id: &str) {
    let user = Caller::login(server, "alice", "alice-password")
        .await
        .bearer();
    let (status, body) = user.new_token("after").await;
    assert_eq!(status, 201, "{body}");
    let token_id = body["id"].as_str().expect("token id").to_string();
    let (status, body) = user.delete(&format!("/api/v1/me/tokens/{token_id}")).await;
    assert_eq!(status, 204, "revoke a token: {body}");
    let (status, body) = user.send(Method::POST, "/api/v1/auth/logout", None).await;
    assert_eq!(status, 204, "logout: {body}");
    assert_eq!(user.get("/api/v1/me").await.0, 401, "a logged-out session");
    let other = Caller::login(server, "alice", "alice-password")
        .await
        .bearer();
    let (status, body) = admin
        .delete(&format!("/api/v1/admin/users/{user_id}/sessions"))
        .await;
    assert_eq!(status, 204, "end a user's sessions: {body}");
    assert_eq!(other.get("/api/v1/me").await.0, 401, "an ended session");
    let (status, body) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{user_id}"),
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(status, 200, "disable: {body}");
    let (status, body) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{user_id}"),
            Some(json!({ "disabled": false })),
        )
        .await;
    assert_eq!(status, 200, "enable: {body}");
}

#[tokio::test]
async fn a_full_disk_fails_writes_cleanly_and_everything_recovers_when_space_returns() {
    let test = "a_full_disk_fails_writes_cleanly_and_everything_recovers_when_space_returns";
    let Some(fs) = SmallFs::mount(test, "size=24m") else {
        return;
    };
    let server = Server::start(fs.path(), &ServerOptions::workers(1));
    server.wait_ready().await;
    let admin = Caller::admin(&server).await.bearer();
    let user_id = admin.create_user("alice", "alice-password").await;
    let alice = Caller::login(&server, "alice", "alice-password")
        .await
        .bearer();
    let doomed = Caller::login(&server, "alice", "alice-password")
        .await
        .bearer();
    let (status, body) = alice.new_token("before").await;
    assert_eq!(status, 201, "{body}");
    let token_id = body["id"].as_str().expect("token id").to_string();

    // Users fill the disk through the files API (big files, then small ones
    // for the last blocks) until warren refuses: it keeps a reserve (a
    // tenth of this small file system) that users' writes never take.
    let mut files = Vec::new();
    for size in [1 << 20, 4096] {
        for n in 0.. {
            let path = format!("fill-{size}-{n}");
            let response = alice
                .request(Method::PUT, &format!("/api/v1/files/{path}"))
                .body(vec![7u8; size])
                .send()
                .await
                .expect("PUT");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            if status == 507 {
                assert_eq!(body["error"]["code"], "disk_full", "{body}");
                break;
            }
            assert!(status == 201, "filling: {status} {body}");
            files.push(path);
            assert!(n < 1000, "the disk never filled");
        }
    }
    let room = rustix::fs::statvfs(fs.path()).expect("statvfs");
    let free = room.f_bavail * room.f_frsize;
    assert!(
        free >= 2 << 20,
        "users took the server's reserve: {free} bytes left"
    );
    // So the accounts database still has room.
    for n in 0..20 {
        let (status, body) = alice.new_token(&format!("kept{n}")).await;
        assert_eq!(status, 201, "the reserve did not keep room: {body}");
    }

    // Something else (another program, a log) takes the rest of the disk.
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while file.write_all(&small).is_ok() {}
        let _ = file.sync_all();
    }

    // Readiness tells: the database answers reads but stores nothing.
    let not_ready = eventually(Duration::from_secs(5), || async {
        let (status, body) = server.get_json("/readyz").await;
        status == 503
            && body["database"]
                .as_str()
                .is_some_and(|d| d.contains("full"))
    })
    .await;
    assert!(not_ready, "/readyz: {:?}", server.get_json("/readyz").await);

    // The database now runs out of room: writes fail as failures, never
    // as 500, whatever they are.
    let mut refused = 0;
    for n in 0..2000 {
        let (status, body) = alice.new_token(&format!("t{n}")).await;
        if status == 201 {
            continue;
        }
        assert!(
            is_outage(status, &body),
            "a token while full: {status} {body}"
        );
        refused += 1;
        break;
    }
    assert_eq!(refused, 1, "the database never ran out of room");
    for _ in 0..5 {
        let response = warren_tests::accounts::login_response(
            &server,
            json!({ "username": "alice", "password": "alice-password" }),
        )
        .await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        assert!(
            status == 200 || is_outage(status, &body),
            "login while full: {status} {body}"
        );
    }
    // A logout either happens or says it did not: never a 204 for a session
    // that stays valid.
    let (status, body) = doomed.send(Method::POST, "/api/v1/auth/logout", None).await;
    let after = doomed.get("/api/v1/me").await.0;
    match status {
        204 => assert_eq!(after, 401, "a logout that said 204"),
        _ => {
            assert!(
                is_outage(status, &body),
                "logout while full: {status} {body}"
            );
            assert_eq!(after, 200, "a failed logout changes nothing");
        }
    }
    let (status, body) = alice.delete(&format!("/api/v1/me/tokens/{token_id}")).await;
    assert!(
        status == 204 || is_outage(status, &body),
        "revoke while full: {status} {body}"
    );

    // Free the space: every kind of write works again at once, on every
    // pooled connection (a poisoned one would fail some of several rounds).
    std::fs::remove_file(&filler).expect("remove the filler");
    for path in &files {
        let (status, body) = alice.delete(&format!("/api/v1/files/{path}")).await;
        assert_eq!(status, 204, "delete {path}: {body}");
    }
    let recovered = eventually(Duration::from_secs(10), || async {
        let response = warren_tests::accounts::login_response(
            &server,
            json!({ "username": "alice", "password": "alice-password" }),
        )
        .await;
        response.status() == 200
    })
    .await;
    assert!(recovered, "login never recovered; log:\n{}", server.log());
    let ready = eventually(Duration::from_secs(5), || async {
        server.get_json("/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "/readyz: {:?}", server.get_json("/readyz").await);
    for _ in 0..3 {
        all_writes_work(&server, &admin, &user_id).await;
    }
    if status != 204 {
        let (status, body) = doomed.send(Method::POST, "/api/v1/auth/logout", None).await;
        assert!(
            status == 204 || status == 401,
            "logout after: {status} {body}"
        );
    }
    let log = server.log();
    assert!(
        !log.contains("internal error"),
        "a 500 was answered:\n{log}"
    );
    assert!(!log.contains("non-zero transaction depth"), "{log}");
    drop(server);
    drop(fs);
}

/// Kills every PostgreSQL backend of warren's pool (as a restart or a
/// network cut would), several times: requests fail as `503` at worst and
/// the pool heals by itself.
#[tokio::test]
async fn postgres_connections_lost_mid_transaction_heal_by_themselves() {
    let test = "postgres_connections_lost_mid_transaction_heal_by_themselves";
    let Some(database) = Database::postgres(test).await else {
        return;
    };
    let Database::Postgres { name, .. } = &database else {
        unreachable!()
    };
    let server = Server::ready(&ServerOptions::workers(1).database(&database)).await;
    let admin = Caller::admin(&server).await.bearer();
    let user_id = admin.create_user("alice", "alice-password").await;
    let killer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&warren_tests::accounts::postgres_admin_url())
        .await
        .expect("connect as the killer");
    for round in 0..3 {
        let alice = Caller::login(&server, "alice", "alice-password")
            .await
            .bearer();
        // Writers in flight while their connections are cut.
        let writers: Vec<_> = (0..8)
            .map(|n| {
                let alice = alice.clone();
                tokio::spawn(async move { alice.new_token(&format!("r{round}-{n}")).await })
            })
            .collect();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&killer)
        .await
        .expect("terminate warren's connections");
        for writer in writers {
            let (status, body) = writer.await.expect("writer");
            assert!(
                status == 201 || is_outage(status, &body),
                "a token while connections die: {status} {body}"
            );
        }
        let healed = eventually(Duration::from_secs(15), || async {
            alice.new_token("probe").await.0 == 201
        })
        .await;
        assert!(healed, "the pool never healed; log:\n{}", server.log());
        all_writes_work(&server, &admin, &user_id).await;
    }
    let log = server.log();
    assert!(
        !log.contains("internal error"),
        "a 500 was answered:\n{log}"
    );
}
