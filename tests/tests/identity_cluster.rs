//! Identity headers between the hosts of a cluster: a host forwards a
//! user's request to their home host with the identity header only if it
//! believed the header itself (from a `--trusted-proxy` peer whose socket
//! is no user's). Otherwise a client with any account homed on the other
//! host, adding the header, would be believed there (the home host trusts
//! what another host forwards) and become whoever the header names.
//!
//! Needs PostgreSQL (several hosts share one database); without it the
//! test says so loudly and passes, unless `WARREN_REQUIRE_POSTGRES=1`.

use serde_json::json;
use std::path::Path;
use warren_tests::accounts::{Caller, Database};
use warren_tests::nginx::free_port;
use warren_tests::{cluster_host, Server};

async fn host(dir: &Path, name: &str, database: &Database, secret: &Path) -> Server {
    let port = free_port().expect("a free port");
    let options = cluster_host(dir, name, port, 1, database, secret)
        // The proxy is elsewhere: this test's requests are not the proxy's.
        .arg("--trusted-proxy")
        .arg("192.0.2.0/24")
        .arg("--identity-header")
        .arg("X-Forwarded-User");
    Server::ready_in(tempfile::tempdir().expect("data directory"), &options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_forwards_an_identity_header_only_if_it_believed_it() {
    let Some(database) = Database::postgres("identity_cluster").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, "a-cluster-secret-of-more-than-32-characters\n").expect("secret");
    let a = host(dir.path(), "a", &database, &secret).await;
    let b = host(dir.path(), "b", &database, &secret).await;
    let admin = Caller::admin(&a).await;
    // Each host sees the other once its heartbeat is in the database.
    let both_up = warren_tests::eventually(std::time::Duration::from_secs(20), || async {
        let (_, hosts) = admin.get("/api/v1/admin/hosts").await;
        let text = hosts.to_string();
        text.contains("\"a\"") && text.contains("\"b\"")
    })
    .await;
    assert!(both_up, "both hosts registered");
    let (status, user) = admin
        .post(
            "/api/v1/admin/users",
            json!({"username": "mallet", "password": "mallet-password", "home_host": "b"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let mallet = Caller::login(&b, "mallet", "mallet-password").await;

    // mallet's own token at host a, with a header naming the admin: a does
    // not believe the header (not from its proxy), forwards mallet's
    // request to b, and b must see mallet, not the admin.
    let response = a
        .http
        .get(a.url("/api/v1/me"))
        .bearer_auth(&mallet.token)
        .header("X-Forwarded-User", "admin")
        .send()
        .await
        .expect("me");
    let status = response.status().as_u16();
    let me: serde_json::Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "mallet", "the header crossed hosts: {me}");
    assert_eq!(me["role"], "user");
    // The servers go before the database (dropped in reverse order).
    drop((a, b));
}
