//! Moving a user's files between hosts (`warren user move`, `POST
//! /api/v1/admin/users/{id}/move`): two real `warren serve` hosts, `a` and
//! `b`, each with its own data directory and workers, on one real
//! PostgreSQL database (skipped loudly without one, unless
//! `WARREN_REQUIRE_POSTGRES=1`).
//!
//! - alice (homed on `a`, with a 10 MiB file, a nested directory and a
//!   symlink) is moved to `b` with the CLI: her files are on `b` byte for
//!   byte (sha256, modes), gone from `a`'s data directory; her session
//!   works through either host;
//! - she is moved back with the admin API (audited `user_moved`);
//! - refusals: already there (409), an unknown host (422), a host that
//!   is down (CLI and API), an unsigned internal call (404): nothing
//!   changes.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_tests::accounts::{Caller, Database};
use warren_tests::files::get_bytes;
use warren_tests::{eventually, warren_binary, Server};

const ALICE_PASSWORD: &str = "alice-password-1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

async fn start_host(dir: &Path, name: &str, database: &Database, secret: &Path) -> Server {
    let options = warren_tests::cluster_host(dir, name, free_port(), 2, database, secret);
    let data = tempfile::tempdir().expect("a data directory");
    Server::ready_in(data, &options).await
}

/// `warren user move NAME --to HOST`.
fn cli_move(database: &Database, secret: &Path, name: &str, to: &str) -> std::process::Output {
    std::process::Command::new(warren_binary())
        .args(["user", "move", name, "--to", to, "--database-url"])
        .arg(database.url().expect("a PostgreSQL URL"))
        .arg("--cluster-secret-file")
        .arg(secret)
        .env_remove("WARREN_DATABASE_URL")
        .env_remove("WARREN_CONFIG")
        .output()
        .expect("run warren user move")
}

/// Every entry under `root` but `tmp/` (not moved; made again by the
/// worker): `d MODE UID:GID`, `f MODE UID:GID SHA256` or `l TARGET`
/// (names shown lossily when not UTF-8).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut all = every_entry(root);
    all.retain(|path, _| path != "tmp" && !path.starts_with("tmp/"));
    all
}

fn every_entry(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.permissions().mode() & 0o7777;
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let what = if meta.file_type().is_symlink() {
                format!("l {}", std::fs::read_link(&path).expect("link").display())
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("d {mode:o} {owner}")
            } else {
                let bytes = std::fs::read(&path).expect("read");
                let hash: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("f {mode:o} {owner} {hash}")
            };
            out.insert(rel, what);
        }
    }
    out
}

fn home_of(server: &Server, id: &str) -> PathBuf {
    server.data_dir.join("users").join(id)
}

/// alice's caller at `server` (the same session).
fn at(caller: &Caller, server: &Server) -> Caller {
    Caller {
        base_url: server.base_url.clone(),
        http: server.http.clone(),
        ..caller.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moves_between_hosts_and_back_and_bad_moves_change_nothing() {
    let Some(database) = Database::postgres("moves").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-moves\n").expect("secret");
    let a = start_host(dir.path(), "a", &database, &secret).await;
    let mut b = start_host(dir.path(), "b", &database, &secret).await;
    let admin = Caller::admin(&a).await;
    let (status, body) = admin
        .post(
            "/api/v1/admin/users",
            json!({"username": "alice", "password": ALICE_PASSWORD, "home_host": "a"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    let alice = Caller::login(&a, "alice", ALICE_PASSWORD).await;
    let (status, body) = admin
        .post(
            "/api/v1/admin/users",
            json!({"username": "bob", "password": "bob-password-1", "home_host": "b"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let bob = body["id"].as_str().expect("id").to_string();

    // Her files: one written through the API, 10 MiB; a nested
    // directory, a read-only file and a symlink made on the disk.
    let big: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, body) = warren_tests::files::put(&alice, "big.bin", big.clone()).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let workspace = home_of(&a, &id).join("workspace");
    std::fs::create_dir_all(workspace.join("nested/deeper")).expect("mkdir");
    std::fs::write(workspace.join("nested/deeper/note.txt"), b"a note\n").expect("write");
    std::fs::set_permissions(
        workspace.join("nested/deeper/note.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("nested/deeper/note.txt", workspace.join("link")).expect("symlink");
    let before = tree(&home_of(&a, &id));
    assert!(before.contains_key("workspace/big.bin"), "{before:?}");

    // An unsigned call of the internal route does not exist.
    let response = a
        .http
        .post(a.url(&format!("/internal/v1/moves/{id}")))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 404);
    assert_eq!(
        admin.get(&format!("/api/v1/admin/users/{id}")).await.1["home_host"],
        "a"
    );

    // A copy that fails (a name the move cannot carry: not UTF-8) changes
    // nothing: she stays on a, served, her files intact, no staging on b.
    let bad = workspace.join(std::ffi::OsStr::from_bytes(b"bad-\xff"));
    std::fs::write(&bad, b"x").expect("write a non-UTF-8 name");
    let with_bad = tree(&home_of(&a, &id));
    let output = cli_move(&database, &secret, "alice", "b");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert!(stderr.contains("UTF-8"), "{stderr}");
    assert_eq!(
        admin.get(&format!("/api/v1/admin/users/{id}")).await.1["home_host"],
        "a"
    );
    let served = eventually(Duration::from_secs(5), || async {
        get_bytes(&alice, "big.bin").await == (200, big.clone())
    })
    .await;
    assert!(served, "alice is served on a again after a failed move");
    assert_eq!(tree(&home_of(&a, &id)), with_bad);
    let staged: Vec<_> = std::fs::read_dir(b.data_dir.join("users"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        staged.is_empty(),
        "b keeps nothing of a failed move: {staged:?}"
    );
    std::fs::remove_file(&bad).expect("remove the bad name");

    // The CLI moves her to b.
    let output = cli_move(&database, &secret, "alice", "b");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}\n{}", a.log());
    assert!(
        stdout.contains("moved alice from host a to host b"),
        "{stdout}"
    );
    let on_b = home_of(&b, &id);
    assert_eq!(tree(&on_b), before, "her files on b");
    assert!(!home_of(&a, &id).exists(), "her files are gone from a");
    let leftovers: Vec<_> = std::fs::read_dir(a.data_dir.join("users"))
        .expect("users")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(&id))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Her session works through either host.
    let served = eventually(Duration::from_secs(5), || async {
        get_bytes(&alice, "big.bin").await == (200, big.clone())
    })
    .await;
    assert!(served, "alice's big file through a");
    assert_eq!(
        get_bytes(&at(&alice, &b), "nested/deeper/note.txt").await,
        (200, b"a note\n".to_vec())
    );
    let (status, me) = at(&alice, &b).get("/api/v1/me").await;
    assert_eq!((status, me["home_host"].clone()), (200, json!("b")), "{me}");
    // She can write on b.
    let (status, body) = warren_tests::files::put(&alice, "after-move.txt", "new").await;
    assert!(status == 200 || status == 201, "{status} {body}");
    assert!(on_b.join("workspace/after-move.txt").exists());

    // Refusals change nothing.
    let path = format!("/api/v1/admin/users/{id}/move");
    let (status, body) = admin.post(&path, json!({"to": "b"})).await;
    assert_eq!(status, 409, "already there: {body}");
    let (status, body) = admin.post(&path, json!({"to": "nowhere"})).await;
    assert_eq!(status, 422, "unknown host: {body}");

    // The admin API moves her back to a (asked on b, the source).
    let admin_b = at(&admin, &b);
    let (status, body) = admin_b.post(&path, json!({"to": "a"})).await;
    assert_eq!(status, 200, "{body}\n{}", b.log());
    assert_eq!(body["home_host"], "a", "{body}");
    assert!(!on_b.exists(), "her files are gone from b");
    let back = tree(&home_of(&a, &id));
    assert_eq!(
        back.get("workspace/big.bin"),
        before.get("workspace/big.bin")
    );
    assert_eq!(back.get("workspace/link"), before.get("workspace/link"));
    assert!(back.contains_key("workspace/after-move.txt"));
    let served = eventually(Duration::from_secs(5), || async {
        get_bytes(&at(&alice, &b), "after-move.txt").await == (200, b"new".to_vec())
    })
    .await;
    assert!(served, "alice's file through b after the move back");
    let (_, audit) = admin.get("/api/v1/admin/audit?event=user_moved").await;
    let moves = audit.as_array().map_or(0, Vec::len);
    assert!(moves >= 2, "{audit}");

    // b stops: a move there is refused, and nothing changes.
    assert!(b.stop().success());
    let output = cli_move(&database, &secret, "alice", "b");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not up"), "{stderr}");
    let (status, body) = admin.post(&path, json!({"to": "b"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, user): (u16, Value) = admin.get(&format!("/api/v1/admin/users/{id}")).await;
    assert_eq!(
        (status, user["home_host"].clone()),
        (200, json!("a")),
        "{user}"
    );
    assert_eq!(get_bytes(&alice, "big.bin").await, (200, big));
    assert_eq!(tree(&home_of(&a, &id)), back);
    // bob's home host is down: he cannot be moved off it.
    let (status, body) = admin
        .post(
            &format!("/api/v1/admin/users/{bob}/move"),
            json!({"to": "a"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "host_unavailable", "{body}");
    let (_, user) = admin.get(&format!("/api/v1/admin/users/{bob}")).await;
    assert_eq!(user["home_host"], "b", "{user}");
}
