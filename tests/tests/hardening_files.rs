//! Workspace files against a hostile user (issue 9): the quota charges
//! every entry and counts them, so no quota lets a user fill a file system
//! with directories; trees of any depth made on disk are counted and
//! deleted; special files are named and never read; names that spoof
//! others are refused; a multipart upload with a bad part writes nothing.

use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use warren_tests::accounts::Caller;
use warren_tests::files::{put, workspace_of};
use warren_tests::{eventually, Server, ServerOptions, SmallFs};

async fn server_from(options: ServerOptions, users: &[&str]) -> (Server, Vec<Caller>) {
    let server = Server::ready(&options).await;
    let callers = users_on(&server, users).await;
    (server, callers)
}

async fn users_on(server: &Server, users: &[&str]) -> Vec<Caller> {
    let admin = Caller::admin(server).await;
    let callers = warren_tests::accounts::users_on(server, &admin, users).await;
    callers
}

async fn op(caller: &Caller, path: &str, op: &str, to: Option<&str>) -> (u16, serde_json::Value) {
    let body = to.map_or_else(|| json!({}), |to| json!({ "to": to }));
    caller
        .post(&format!("/api/v1/files/{path}?op={op}"), body)
        .await
}

/// Every entry below `dir` (not following links).
fn count_entries(dir: &Path) -> u64 {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        count += 1;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            count += count_entries(&entry.path());
        }
    }
    count
}

fn free_inodes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).expect("statvfs").f_ffree
}

/// Finding 3: with a 1-byte quota nothing at all can be made (directories
/// and empty files are charged too), and doubling a tree with copy and
/// move stops at the entry quota, long before a small file system runs out
/// of inodes: other users keep working and warren restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quota_lets_a_user_exhaust_a_small_file_system() {
    let test = "no_quota_lets_a_user_exhaust_a_small_file_system";
    let Some(mount) = SmallFs::mount(test, "size=64m,nr_inodes=3000,mode=0700") else {
        return;
    };
    let data_dir = mount.data_dir();
    let options = ServerOptions::workers(1)
        .arg("--default-file-quota")
        .arg("400")
        .arg("--default-quota")
        .arg("32MiB");
    let mut server = Server::start(&data_dir, &options);
    server.wait_ready().await;
    let admin = Caller::admin(&server).await;
    let callers = users_on(&server, &["tiny", "doubler", "other"]).await;
    let (tiny, doubler, other) = (&callers[0], &callers[1], &callers[2]);
    let (status, body) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{}", tiny.user_id()),
            Some(json!({"storage_quota_bytes": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // One byte: not even an empty directory or an empty file.
    for (status, body) in [
        op(tiny, "d", "mkdir", None).await,
        tiny.post("/api/v1/files/a/b/c?op=mkdir&parents=true", json!({}))
            .await,
        put(tiny, "empty", Vec::new()).await,
    ] {
        assert_eq!(status, 507, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    }
    let (_, usage) = tiny.get("/api/v1/me/usage").await;
    assert_eq!(usage["entries"], 0, "{usage}");
    assert_eq!(count_entries(&workspace_of(&server, tiny)), 0);

    // Doubling a tree: each round copies it and moves the copy into it.
    let inodes_before = free_inodes(mount.path());
    assert_eq!(op(doubler, "t", "mkdir", None).await.0, 201);
    assert_eq!(put(doubler, "t/f", "x").await.0, 201);
    let mut refused = None;
    for round in 0..20 {
        let (status, body) = op(doubler, "t", "copy", Some("t-copy")).await;
        if status != 201 {
            refused = Some((round, status, body));
            break;
        }
        let (status, body) = op(doubler, "t-copy", "move", Some(&format!("t/c{round}"))).await;
        assert_eq!(status, 201, "{body}");
    }
    let (round, status, body) = refused.expect("the doubling was never refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (507, &json!("quota_exceeded")),
        "{body}"
    );
    assert!(round < 10, "refused only at round {round}");
    let (_, usage) = doubler.get("/api/v1/me/usage").await;
    let on_disk = count_entries(&workspace_of(&server, doubler));
    assert_eq!(usage["entries"], on_disk, "{usage}");
    assert!(on_disk <= 400, "{on_disk} entries");
    assert!(
        usage["bytes_used"].as_u64().unwrap_or(0) >= on_disk * 4096,
        "{usage}"
    );
    let tmp = server
        .data_dir
        .join("users")
        .join(doubler.user_id())
        .join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).expect("tmp").count(),
        0,
        "refused copy undone"
    );
    let used_inodes = inodes_before.saturating_sub(free_inodes(mount.path()));
    assert!(used_inodes <= 420, "{used_inodes} inodes used");
    assert!(free_inodes(mount.path()) > 1000);

    // Everybody else is unaffected, and warren restarts on this disk.
    assert_eq!(put(other, "notes.txt", "still fine").await.0, 201);
    assert_eq!(server.stop().code(), Some(0));
    let mut again = Server::start(&data_dir, &options);
    again.wait_ready().await;
    let other = Caller::login(&again, "other", "other-password")
        .await
        .bearer();
    assert_eq!(put(&other, "more.txt", "and again").await.0, 201);
    let doubler = Caller::login(&again, "doubler", "doubler-password")
        .await
        .bearer();
    let (_, recounted) = doubler.get("/api/v1/me/usage").await;
    assert_eq!(recounted["entries"], on_disk, "{recounted}");
    assert_eq!(again.stop().code(), Some(0));
}

/// Builds `levels` nested directories `d/d/...` below `dir` with mkdirat
/// and openat (as a user's program could; no path gets long) and a file at
/// the bottom.
fn deep_tree(dir: &Path, levels: usize) {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open(dir, flags, Mode::empty()).expect("open");
    for _ in 0..levels {
        rustix::fs::mkdirat(&fd, "d", Mode::RWXU).expect("mkdirat");
        fd = rustix::fs::openat(&fd, "d", flags, Mode::empty()).expect("openat");
    }
    let file = rustix::fs::openat(
        &fd,
        "bottom",
        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .expect("create");
    rustix::io::write(&file, b"x").expect("write");
}

/// Finding 5: the API makes no tree deeper than 256 levels, and a tree of
/// 1000 levels made on disk is counted (after a worker restart, when the
/// usage is counted afresh), written beside and deleted; neither the admin's
/// usage listing nor another user notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_of_any_depth_are_handled_and_the_api_makes_none_too_deep() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["deep", "bystander"]).await;
    let (deep, bystander) = (&callers[0], &callers[1]);
    let admin = Caller::admin(&server).await;
    let too_deep = vec!["a"; 300].join("/");
    let (status, body) = deep
        .post(
            &format!("/api/v1/files/{too_deep}?op=mkdir&parents=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("256"),
        "{body}"
    );
    let deepest = vec!["a"; 256].join("/");
    let (status, body) = deep
        .post(
            &format!("/api/v1/files/{deepest}?op=mkdir&parents=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(put(bystander, "mine.txt", "mine").await.0, 201);

    deep_tree(&workspace_of(&server, deep), 1000);
    for pid in server.worker_pids() {
        warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    }
    let back = eventually(Duration::from_secs(20), || async {
        deep.get("/api/v1/me/usage").await.0 == 200
    })
    .await;
    assert!(
        back,
        "the usage of a deep tree never answered; log:\n{}",
        server.log()
    );
    let (_, usage) = deep.get("/api/v1/me/usage").await;
    assert_eq!(usage["entries"], 256 + 1001, "{usage}");
    assert_eq!(put(deep, "beside.txt", "x").await.0, 201);
    let (status, all) = admin.get("/api/v1/admin/usage").await;
    assert_eq!(status, 200, "{all}");
    for row in all.as_array().expect("rows") {
        assert!(row.get("error").is_none(), "{row}");
    }

    // Moving or copying would put entries beyond 256 levels: refused.
    assert_eq!(op(deep, "x", "mkdir", None).await.0, 201);
    for (path, op_name, to) in [
        ("a", "move", "x/a"),
        ("d", "copy", "d2"),
        ("a", "copy", "x/a"),
    ] {
        let (status, body) = op(deep, path, op_name, Some(to)).await;
        assert_eq!(status, 409, "{op_name} {path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("levels deep"),
            "{body}"
        );
    }
    for path in ["d", "a"] {
        let (status, body) = deep
            .delete(&format!("/api/v1/files/{path}?recursive=true"))
            .await;
        assert_eq!(status, 204, "{path}: {body}");
    }
    let (_, usage) = deep.get("/api/v1/me/usage").await;
    assert_eq!(
        (usage["entries"].clone(), usage["files"].clone()),
        (json!(2), json!(1)),
        "{usage}"
    );
    assert_eq!(count_entries(&workspace_of(&server, deep)), 2);
    assert_eq!(bystander.get("/api/v1/files/mine.txt").await.0, 200);
}

/// Findings 7, 9 and 12: FIFOs, sockets and links made by a user's
/// programs are listed as what they are; reading one that is not a
/// regular file is 409 at once (never a hang, never 503); copying one says
/// what it is; a PUT over one creates a file, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_named_never_read_and_replaced_as_new_files() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["pipes"]).await;
    let pipes = &callers[0];
    // A listing makes the workspace without counting it: what follows is
    // there when the usage is first counted, as a program would leave it.
    assert_eq!(pipes.get("/api/v1/files").await.0, 200);
    let workspace = workspace_of(&server, pipes);
    std::fs::write(workspace.join("plain.txt"), "plain").expect("write");
    let dir = rustix::fs::open(
        &workspace,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open");
    rustix::fs::mknodat(
        &dir,
        "pipe",
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .expect("mkfifo");
    let _socket = std::os::unix::net::UnixListener::bind(workspace.join("sock")).expect("bind");
    std::os::unix::fs::symlink("pipe", workspace.join("to-pipe")).expect("symlink");

    let (status, listing) = pipes.get("/api/v1/files").await;
    assert_eq!(status, 200);
    let kinds: Vec<(String, String)> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").into(),
                e["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("pipe", "fifo"),
        ("plain.txt", "file"),
        ("sock", "socket"),
        ("to-pipe", "symlink"),
    ]
    .iter()
    .map(|(n, k)| (n.to_string(), k.to_string()))
    .collect();
    assert_eq!(kinds, expected);

    for path in ["pipe", "sock", "to-pipe"] {
        for method in [Method::GET, Method::HEAD] {
            let response = tokio::time::timeout(
                Duration::from_secs(10),
                pipes
                    .request(method.clone(), &format!("/api/v1/files/{path}"))
                    .send(),
            )
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung"))
            .expect("request");
            assert_eq!(response.status().as_u16(), 409, "{method} {path}");
            assert!(response.headers().get("retry-after").is_none());
            if method == Method::GET {
                let body: serde_json::Value = response.json().await.expect("json");
                assert_eq!(body["error"]["code"], "not_a_regular_file", "{body}");
            }
        }
    }
    for (path, says) in [
        ("pipe", "named pipe"),
        ("sock", "socket"),
        ("to-pipe", "symbolic link"),
    ] {
        let (status, body) = op(pipes, path, "copy", Some("copied")).await;
        assert_eq!(status, 409, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says) && message.contains(path), "{body}");
    }

    let (_, before) = pipes.get("/api/v1/me/usage").await;
    assert_eq!(
        (before["files"].clone(), before["entries"].clone()),
        (json!(1), json!(4)),
        "{before}"
    );
    for path in ["pipe", "to-pipe"] {
        let (status, body) = put(pipes, path, "a file now").await;
        assert_eq!(status, 201, "{path}: {body}");
        assert_eq!(body["kind"], "file");
    }
    let (_, after) = pipes.get("/api/v1/me/usage").await;
    assert_eq!(
        (after["files"].clone(), after["entries"].clone()),
        (json!(3), json!(4)),
        "{after}"
    );
    let (status, bytes) = (
        pipes.get("/api/v1/files/pipe").await.0,
        std::fs::read(workspace.join("pipe")).expect("read"),
    );
    assert_eq!((status, bytes.as_slice()), (200, &b"a file now"[..]));

    // A FIFO as a template's description does not hang the listing.
    let template = server.data_dir.join("shared/templates/piped");
    std::fs::create_dir_all(&template).expect("template");
    let template_dir = rustix::fs::open(
        &template,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open");
    rustix::fs::mknodat(
        &template_dir,
        ".description",
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .expect("mkfifo");
    let (status, listed) =
        tokio::time::timeout(Duration::from_secs(10), pipes.get("/api/v1/templates"))
            .await
            .expect("the template listing hung on a FIFO");
    assert_eq!(
        (status, listed),
        (200, json!([{"name": "piped", "description": null}]))
    );
}

fn form(parts: &[(&str, &[u8])]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in parts {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()),
        );
    }
    form
}

/// Finding 16 (names): bidi controls and zero-width characters would let
/// one name pass for another in any UI; an upload part named `a/` is not
/// the file `a`. All refused with 400, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_spoof_others_are_refused() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["spoof"]).await;
    let spoof = &callers[0];
    assert_eq!(op(spoof, "docs", "mkdir", None).await.0, 201);
    assert_eq!(put(spoof, "real.txt", "x").await.0, 201);
    for name in [
        "invoice\u{202E}fdp.exe",
        "a\u{200B}b",
        "x\u{2066}y",
        "bom\u{FEFF}",
        "m\u{200F}",
    ] {
        let (status, body) = put(spoof, name, "x").await;
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(op(spoof, name, "mkdir", None).await.0, 400, "{name:?}");
        assert_eq!(
            op(spoof, "real.txt", "copy", Some(name)).await.0,
            400,
            "{name:?}"
        );
        let response = spoof
            .request(Method::POST, "/api/v1/upload/docs")
            .multipart(form(&[(name, b"x")]))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status().as_u16(), 400, "{name:?}");
    }
    for name in ["a/", "a/b"] {
        let response = spoof
            .request(Method::POST, "/api/v1/upload/docs")
            .multipart(form(&[(name, b"x")]))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status().as_u16(), 400, "{name:?}");
    }
    let docs = workspace_of(&server, spoof).join("docs");
    assert_eq!(std::fs::read_dir(docs).expect("docs").count(), 0);
    assert_eq!(count_entries(&workspace_of(&server, spoof)), 2);
}

/// Finding 10: a multipart upload is received whole before any file is
/// put in place; a bad part name after good ones writes nothing (neither a
/// new file nor a replacement), leaves no temp file and holds no quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_bad_part_writes_nothing() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["forms"]).await;
    let forms = &callers[0];
    assert_eq!(op(forms, "docs", "mkdir", None).await.0, 201);
    assert_eq!(put(forms, "docs/keep.txt", "old").await.0, 201);
    let big = vec![7u8; 200 * 1024];
    for bad in ["../bad", "sub/x", "a/", "x\u{202E}y"] {
        let response = forms
            .request(Method::POST, "/api/v1/upload/docs")
            .multipart(form(&[
                ("first.txt", b"first"),
                ("keep.txt", b"new"),
                ("big.bin", &big),
                (bad, b"bad"),
            ]))
            .send()
            .await
            .expect("upload");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 400, "{bad}: {body}");
        let mut names: Vec<String> = std::fs::read_dir(workspace_of(&server, forms).join("docs"))
            .expect("docs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keep.txt"], "{bad}");
        assert_eq!(
            std::fs::read(workspace_of(&server, forms).join("docs/keep.txt")).expect("read"),
            b"old"
        );
    }
    let tmp = server
        .data_dir
        .join("users")
        .join(forms.user_id())
        .join("tmp");
    let emptied = eventually(Duration::from_secs(10), || async {
        std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_none())
    })
    .await;
    assert!(emptied, "staged parts left in tmp/");
    // The good form goes through whole.
    let response = forms
        .request(Method::POST, "/api/v1/upload/docs")
        .multipart(form(&[("first.txt", b"first"), ("keep.txt", b"new")]))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status().as_u16(), 201);
    let written: serde_json::Value = response.json().await.expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(2), "{written}");
    assert_eq!(
        std::fs::read(workspace_of(&server, forms).join("docs/keep.txt")).expect("read"),
        b"new"
    );
    let (_, usage) = forms.get("/api/v1/me/usage").await;
    assert_eq!(
        (usage["files"].clone(), usage["entries"].clone()),
        (json!(2), json!(3)),
        "{usage}"
    );
}

/// Finding 5 (listing): a user whose files cannot be opened gets an error
/// in the admin's usage listing; everybody else is listed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_workspace_does_not_fail_the_admin_usage_listing() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["broken", "fine"]).await;
    let (broken, fine) = (&callers[0], &callers[1]);
    assert_eq!(put(fine, "a.txt", "a").await.0, 201);
    // `tmp` should be a directory: this worker cannot open the user.
    let home = server.data_dir.join("users").join(broken.user_id());
    std::fs::create_dir_all(home.join("workspace")).expect("workspace");
    std::fs::write(home.join("tmp"), "not a directory").expect("tmp");
    assert_ne!(broken.get("/api/v1/me/usage").await.0, 200);
    let admin = Caller::admin(&server).await;
    let (status, all) = admin.get("/api/v1/admin/usage").await;
    assert_eq!(status, 200, "{all}");
    let rows = all.as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|row| row["username"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {all}"))
            .clone()
    };
    let broken_row = row("broken");
    assert!(broken_row["error"]["code"].is_string(), "{broken_row}");
    assert!(broken_row.get("bytes_used").is_none(), "{broken_row}");
    let fine_row = row("fine");
    assert!(fine_row.get("error").is_none(), "{fine_row}");
    assert_eq!(fine_row["files"], 1, "{fine_row}");
    assert_eq!(row("admin")["entries"], 0);
    // The document says so.
    let (_, doc) = server.get_json("/api/v1/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["UserUsage"].to_string().contains("error"),
        "{}",
        schemas["UserUsage"]
    );
    assert!(
        schemas["UsageView"]["properties"]["entries"].is_object(),
        "{}",
        schemas["UsageView"]
    );
    let kinds = doc["paths"]["/api/v1/files/{path}"]["get"]["responses"]["409"].to_string();
    assert!(kinds.contains("not_a_regular_file"), "{kinds}");
}

/// Finding 3 (per user): an administrator sets a user's own entry quota
/// like their byte quota; it applies at once, and `null` goes back to the
/// server's `--default-file-quota`. On SQLite and on PostgreSQL.
async fn an_admin_sets_a_users_file_quota(db: warren_tests::accounts::Database) {
    let options = ServerOptions::workers(1)
        .arg("--default-file-quota")
        .arg("50")
        .database(&db);
    let (server, callers) = server_from(options, &["counted"]).await;
    let counted = &callers[0];
    let admin = Caller::admin(&server).await;
    let user_url = format!("/api/v1/admin/users/{}", counted.user_id());
    let (status, body) = admin
        .send(Method::PATCH, &user_url, Some(json!({"file_quota": 2})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"]["file_quota"], 2, "{body}");
    assert_eq!(op(counted, "one", "mkdir", None).await.0, 201);
    assert_eq!(put(counted, "two", "2").await.0, 201);
    let (status, body) = op(counted, "three", "mkdir", None).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("entries"),
        "{body}"
    );
    // A template clone counts its entries too, before copying any.
    let starter = server.data_dir.join("shared/templates/starter");
    std::fs::create_dir_all(starter.join("src")).expect("template");
    std::fs::write(starter.join("src/main.py"), "print('hi')").expect("write");
    let (status, body) = counted
        .post("/api/v1/templates/starter/clone", json!({"to": "project"}))
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let tmp = server
        .data_dir
        .join("users")
        .join(counted.user_id())
        .join("tmp");
    assert_eq!(std::fs::read_dir(tmp).expect("tmp").count(), 0);
    let (_, usage) = counted.get("/api/v1/me/usage").await;
    assert_eq!(
        (usage["entries"].clone(), usage["quota_files"].clone()),
        (json!(2), json!(2))
    );
    let (status, body) = admin
        .send(Method::PATCH, &user_url, Some(json!({"file_quota": -1})))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin
        .send(Method::PATCH, &user_url, Some(json!({"file_quota": null})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["limits"]["file_quota"].is_null(), "{body}");
    assert_eq!(op(counted, "three", "mkdir", None).await.0, 201);
    let (_, usage) = counted.get("/api/v1/me/usage").await;
    assert_eq!(usage["quota_files"], 50, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_a_users_file_quota_sqlite() {
    an_admin_sets_a_users_file_quota(warren_tests::accounts::Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_a_users_file_quota_postgres() {
    if let Some(db) = warren_tests::accounts::Database::postgres("file quota").await {
        an_admin_sets_a_users_file_quota(db).await;
    }
}

/// Free bytes and inodes that unprivileged writers still have.
fn room(dir: &Path) -> (u64, u64) {
    let fs = rustix::fs::statvfs(dir).expect("statvfs");
    (fs.f_bavail * fs.f_frsize, fs.f_favail)
}

/// A request that sends `head` (request line and headers, with the
/// caller's token) and `body`, then stalls with the connection open.
async fn stalled(server: &Server, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // Refused half-way: the rest is not read, which is the point.
    let _ = stream.write_all(body).await;
    stream
}

/// After an attack on the reserve: the server's own writes still work.
async fn the_server_still_writes(server: &Server) {
    let admin = Caller::admin(server).await.bearer();
    let (status, body) = admin.send(Method::POST, "/api/v1/auth/logout", None).await;
    assert_eq!(status, 204, "logout: {body}");
    let again = Caller::admin(server).await.bearer();
    assert_eq!(
        again.get("/api/v1/me").await.0,
        200,
        "login after the attack"
    );
}

/// Hardening round 2, finding 1: replacing a file takes new blocks until
/// the commit (the old file keeps its own), so its writes are checked
/// against the disk reserve in full. Two stalled replacements of a 2 MiB
/// file on a full disk no longer eat the reserve: the database keeps room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_file_never_takes_the_disk_reserve() {
    let test = "replacing_a_file_never_takes_the_disk_reserve";
    let Some(mount) = SmallFs::mount(test, "size=24m,mode=0700") else {
        return;
    };
    let data_dir = mount.data_dir();
    let mut server = Server::start(&data_dir, &ServerOptions::workers(1));
    server.wait_ready().await;
    let callers = users_on(&server, &["filler"]).await;
    let filler = &callers[0];
    assert_eq!(put(filler, "big.bin", vec![1u8; 2 << 20]).await.0, 201);
    for n in 0.. {
        let (status, body) = put(filler, &format!("fill-{n}"), vec![2u8; 512 << 10]).await;
        if status == 507 {
            assert_eq!(body["error"]["code"], "disk_full", "{body}");
            break;
        }
        assert_eq!(status, 201, "{body}");
        assert!(n < 100, "the disk never filled");
    }
    // The reserve: a tenth of this file system.
    let reserve = rustix::fs::statvfs(mount.path()).expect("statvfs").f_blocks * 4096 / 10;
    let head = format!(
        "PUT /api/v1/files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\n\r\n",
        filler.token,
        2 << 20
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(stalled(&server, &head, &vec![3u8; 1_700_000]).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (free, _) = room(mount.path());
    // What one write in flight may take before its check (a chunk).
    assert!(
        free + (256 << 10) >= reserve,
        "replacements took the reserve: {free} bytes free of {reserve} reserved"
    );
    the_server_still_writes(&server).await;
    drop(held);
    assert_eq!(server.stop().code(), Some(0));
}

/// Hardening round 2, finding 2: directories take inodes too. mkdir and
/// mkdir -p stop at the inode reserve (507 disk_full) even for users whose
/// entry quota would allow more; the server's own writes keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_never_take_the_inode_reserve() {
    let test = "directories_never_take_the_inode_reserve";
    let Some(mount) = SmallFs::mount(test, "size=64m,nr_inodes=3000,mode=0700") else {
        return;
    };
    let data_dir = mount.data_dir();
    let options = ServerOptions::workers(1)
        .arg("--default-file-quota")
        .arg("5000");
    let mut server = Server::start(&data_dir, &options);
    server.wait_ready().await;
    let callers = users_on(&server, &["dirs", "deep"]).await;
    let (dirs, deep) = (&callers[0], &callers[1]);
    let mut refused = None;
    for n in 0..3000 {
        let (status, body) = op(dirs, &format!("d{n}"), "mkdir", None).await;
        if status != 201 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("mkdir was never refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (507, &json!("disk_full")),
        "{body}"
    );
    let (_, inodes) = room(mount.path());
    assert!(inodes >= 290, "mkdir took the inode reserve: {inodes} left");
    for (status, body) in [
        deep.post("/api/v1/files/a/b/c?op=mkdir&parents=true", json!({}))
            .await,
        put(deep, "x/y/z?parents=true", "x").await,
    ] {
        assert_eq!(
            (status, &body["error"]["code"]),
            (507, &json!("disk_full")),
            "{body}"
        );
    }
    the_server_still_writes(&server).await;
    assert_eq!(server.stop().code(), Some(0));
}

/// Hardening round 2, finding 3: staged parts of unfinished uploads that
/// all overwrite one existing file hold a temp file (an inode) each: they
/// count against the entry quota and the inode reserve, so several users
/// together cannot take every inode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_replacements_never_take_the_inode_reserve() {
    let test = "staged_replacements_never_take_the_inode_reserve";
    let Some(mount) = SmallFs::mount(test, "size=64m,nr_inodes=2000,mode=0700") else {
        return;
    };
    let data_dir = mount.data_dir();
    let options = ServerOptions::workers(1)
        .arg("--default-file-quota")
        .arg("1000");
    let mut server = Server::start(&data_dir, &options);
    server.wait_ready().await;
    let callers = users_on(&server, &["s1", "s2"]).await;
    let part = "--BND\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\n\r\n";
    let mut held = Vec::new();
    for caller in &callers {
        assert_eq!(put(caller, "a", "").await.0, 201);
        // As many parts as leave 30 inodes (the quota allows 999 each).
        let parts = room(mount.path()).1.saturating_sub(30).min(999);
        let body = part.repeat(usize::try_from(parts).expect("parts"));
        let head = format!(
            "POST /api/v1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary=BND\r\nContent-Length: {}\r\n\r\n",
            caller.token,
            body.len() + 100
        );
        held.push(stalled(&server, &head, body.as_bytes()).await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (_, inodes) = room(mount.path());
    assert!(
        inodes >= 190,
        "staged parts took the inode reserve: {inodes} left"
    );
    the_server_still_writes(&server).await;
    drop(held);
    // Their temp files go with the uploads.
    assert!(
        eventually(Duration::from_secs(10), || async {
            room(mount.path()).1 > 1500
        })
        .await,
        "staged temp files left behind"
    );
    assert_eq!(server.stop().code(), Some(0));
}

/// Hardening round 2, finding 4: a name that is not UTF-8 (made on disk
/// by a user's own program) is listed, lossily and flagged, instead of
/// hidden while it counts against the quota; deleting its directory
/// recursively removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_utf8_are_listed_and_deleted_with_their_directory() {
    use std::os::unix::ffi::OsStrExt;
    let (server, callers) = server_from(ServerOptions::workers(1), &["bytes"]).await;
    let user = &callers[0];
    assert_eq!(op(user, "odd", "mkdir", None).await.0, 201);
    assert_eq!(put(user, "odd/fine.txt", "x").await.0, 201);
    let odd = workspace_of(&server, user).join("odd");
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.bin");
    std::fs::write(odd.join(name), b"hidden").expect("write");
    let (status, body) = user.get("/api/v1/files/odd").await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{body}");
    let bad = &entries[0];
    assert_eq!(bad["name"], "bad-\u{FFFD}\u{FFFD}.bin", "{body}");
    assert_eq!(bad["name_valid"], false, "{body}");
    assert_eq!((&bad["kind"], &bad["size"]), (&json!("file"), &json!(6)));
    assert_eq!(entries[1]["name"], "fine.txt", "{body}");
    assert!(entries[1].get("name_valid").is_none(), "{body}");
    assert_eq!(user.delete("/api/v1/files/odd?recursive=true").await.0, 204);
    assert!(!odd.exists(), "the directory and its odd entry are gone");
}
