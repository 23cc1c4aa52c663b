//! The configuration file from the operator's side (issue 14): `warren
//! config check` and `config print` as commands, a bad file refusing to
//! start, the precedence flag > env > file > default, JSON logs, and SIGHUP
//! applying what it can while naming what needs a restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use warren_tests::{warren_binary, Server, ServerOptions};

fn warren(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(warren_binary());
    command.args(args);
    for key in [
        "WARREN_LOG",
        "WARREN_WORKERS",
        "WARREN_LISTEN",
        "WARREN_CONFIG",
    ] {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run warren")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_shipped_example_passes_config_check() {
    let example = repository_file("deploy/warren.toml");
    let out = warren(&["config", "check", example.to_str().expect("utf-8")], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok"), "{}", text(&out.stdout));
}

#[test]
fn a_bad_file_is_every_problem_with_its_line_and_never_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[http]\nlisten = \"nowhere\"\nlisen = \"127.0.0.1:1\"\n[workers]\ncount = 0\n\
         [database]\nurl = \"postgres://warren:hunter2@db/warren\"\n",
    )
    .expect("write");
    let path = bad.to_str().expect("utf-8");
    let out = warren(&["config", "check", path], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for expected in [
        "bad.toml:2: [http] listen: bad value \"nowhere\"",
        "bad.toml:3: [http] lisen: unknown key (did you mean listen?)",
        "bad.toml:5: [workers] count: bad value \"0\"",
        "bad.toml:7: [database] url: holds a password",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
    assert!(!stderr.contains("hunter2"), "a secret shown:\n{stderr}");

    let data = dir.path().join("data");
    let out = warren(
        &[
            "serve",
            "--config",
            path,
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("[http] lisen"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!data.exists(), "a refused start made its data directory");

    let missing = warren(&["config", "check", "/nonexistent/warren.toml"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot read"));
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        "[http]\nlisten = \"127.0.0.1:7001\"\n[workers]\ncount = 3\n[auth]\nsession_ttl = \"2h\"\n\
         [database]\nurl_file = \"/etc/warren/db\"\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = warren(
        &[
            "config",
            "print",
            "--config",
            path,
            "--listen",
            "127.0.0.1:7003",
        ],
        &[
            ("WARREN_LISTEN", "127.0.0.1:7002"),
            ("WARREN_WORKERS", "5"),
            ("WARREN_DATABASE_URL", "postgres://warren:hunter2@db/warren"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let line = |key: &str| {
        printed
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
            .to_string()
    };
    assert!(line("listen").contains("\"127.0.0.1:7003\"") && line("listen").ends_with("# flag"));
    assert!(line("count").contains("5") && line("count").ends_with("# env WARREN_WORKERS"));
    assert!(line("session_ttl").contains("\"2h\"") && line("session_ttl").ends_with(":6"));
    assert!(line("session_idle").ends_with("# default"));
    assert!(line("url").contains("warren:***@db"), "{printed}");
    assert!(!printed.contains("hunter2"), "a secret printed:\n{printed}");
}

/// Lines of the log that are not one JSON object each.
fn non_json_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_err())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        "[log]\nlevel = \"info\"\n[auth]\nsession_ttl = \"24h\"\n[http]\nheader_read_timeout = \"1s\"\n",
    )
    .expect("write");
    let options = ServerOptions::workers(1)
        .arg("--config")
        .arg(file.to_str().expect("utf-8"))
        .arg("--log-format")
        .arg("json");
    let options = ServerOptions {
        env_remove: vec!["WARREN_LOG".into()],
        ..options
    };
    let server = Server::ready(&options).await;
    let address = server.base_url.trim_start_matches("http://").to_string();

    // A connection that sends nothing is closed after the header timeout,
    // which is logged at debug: not shown at info.
    let idle_connection = || async {
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(stream);
    };
    idle_connection().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.log().contains("no complete request headers"));

    std::fs::write(
        &file,
        "[log]\nlevel = \"debug\"\n[auth]\nsession_ttl = \"2h\"\n[http]\nheader_read_timeout = \"1s\"\n",
    )
    .expect("write");
    server.signal(rustix::process::Signal::HUP);
    let log = server.log_containing("these changed settings").await;
    let reloaded = log
        .lines()
        .find(|line| line.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload in:\n{log}"));
    assert!(reloaded.contains("[log] level"), "{reloaded}");
    let restart = log
        .lines()
        .find(|line| line.contains("these changed settings"))
        .expect("restart line");
    assert!(restart.contains("[auth] session_ttl"), "{restart}");
    assert!(!restart.contains("[log] level"), "{restart}");

    idle_connection().await;
    let log = server.log_containing("no complete request headers").await;
    assert!(
        log.contains("no complete request headers"),
        "debug not applied:\n{log}"
    );

    // A file broken meanwhile changes nothing and says why.
    std::fs::write(&file, "[log]\nlevel = \"warn\"\nbogus = 1\n").expect("write");
    server.signal(rustix::process::Signal::HUP);
    let log = server.log_containing("nothing changed").await;
    assert!(log.contains("[log] bogus"), "{log}");
    assert_eq!(server.get_json("/healthz").await.0, 200);

    // Workers take no action on a SIGHUP of their own (`pkill -HUP warren`).
    let workers = server.worker_pids();
    for pid in &workers {
        warren_tests::send_signal(*pid, rustix::process::Signal::HUP);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.worker_pids(), workers);
    assert!(!server.log().contains("worker failed"), "{}", server.log());

    assert_eq!(non_json_lines(&server.log()), Vec::<String>::new());
}

#[test]
fn a_sighup_while_warren_starts_does_not_end_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    // A database that refuses: the start takes seconds (the connection
    // timeout), then fails on its own terms.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = refusing.local_addr().expect("address").port();
    drop(refusing);
    let mut child = Command::new(warren_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--sandbox",
            "off",
        ])
        .arg("--database-url")
        .arg(format!("postgres://warren@127.0.0.1:{port}/warren"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("WARREN_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    // The first line is logged once `serve` runs: then SIGHUPs while it
    // waits for the database.
    let mut log = String::new();
    stderr.read_line(&mut log).expect("read");
    for _ in 0..5 {
        warren_tests::send_signal(child.id(), rustix::process::Signal::HUP);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read");
    log.push_str(&rest);
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(1),
        "ended by a signal? {status:?}\n{log}"
    );
    assert!(log.contains("cannot open the database"), "{log}");
}
