//! The web UI in a real browser: `tests/ui/browser.mjs` (playwright-core
//! driving Debian's chromium, axe-core on every page) against the real
//! master and workers, with the sandbox (terminals, tasks) and the fixture
//! app (`tests/apps/fixture_app.py`). The flows, the accessibility and
//! speed checks and the screenshots (`target/ui-screenshots/`) are in the
//! script; this test starts warren, runs the script and wants it to exit 0.
//!
//! Needs node, `tests/ui/install.sh` (playwright-core and axe-core in
//! `target/ui-node`) and `/usr/bin/chromium`; without them it says so
//! loudly and passes, unless `WARREN_REQUIRE_UI=1` (CI), which makes their
//! absence a failure. `WARREN_UI_TIMEOUT` (seconds, default 300) bounds
//! the browser run; the script's own switches (`WARREN_UI_KEEP_GOING=1`,
//! `WARREN_UI_ONLY=files,task`) pass through from the environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use warren_tests::{Server, ServerOptions, ADMIN_PASSWORD};

/// The browser the script drives (Debian's package; Playwright's own
/// download is not reachable from here).
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the whole browser run may take before it is killed (unless
/// `WARREN_UI_TIMEOUT` gives other seconds).
fn browser_run_timeout() -> Duration {
    let seconds = std::env::var("WARREN_UI_TIMEOUT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(seconds)
}
/// The fixture app's name and title in the apps file.
const APP_NAME: &str = "fixture";
const APP_TITLE: &str = "Fixture app";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// Whether missing browser tooling fails the test instead of skipping it.
fn ui_required() -> bool {
    std::env::var("WARREN_REQUIRE_UI").is_ok_and(|v| v == "1")
}

/// What this machine lacks to run the browser tests, if anything.
fn missing_tooling(node_modules: &Path) -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    if !node.is_ok_and(|output| output.status.success()) {
        return Some("`node` is not on PATH".to_string());
    }
    for needed in ["playwright-core/package.json", "axe-core/axe.min.js"] {
        if !node_modules.join(needed).exists() {
            return Some(format!(
                "{} is missing (run tests/ui/install.sh)",
                node_modules.join(needed).display()
            ));
        }
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is missing (run tests/ui/install.sh, which apt-get installs chromium)"
        ));
    }
    None
}

/// The apps file: the fixture app, behind the proxy on a unix socket.
fn apps_file() -> String {
    let dir = format!("{}/apps", env!("CARGO_MANIFEST_DIR"));
    format!(
        r#"
[apps.{APP_NAME}]
title = "{APP_TITLE}"
command = ["/usr/bin/python3", "{dir}/fixture_app.py", "--socket", "{{socket}}", "--prefix", "{{base_url}}"]
listen = "unix"
ready_path = "{{base_url}}health"
auth = "bearer:{{secret}}"
env = {{ FIXTURE_SECRET = "{{secret}}" }}
read_execute = ["{dir}"]
"#
    )
}

/// Copies `reader`'s lines into `into` and onto stderr (shown with
/// `--nocapture`, or when the test fails).
fn collect_lines(
    reader: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[browser] {line}");
            let mut text = into
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_works_in_a_real_browser() {
    let repo = repo_root();
    let node_modules = repo.join("target/ui-node/node_modules");
    if let Some(missing) = missing_tooling(&node_modules) {
        assert!(
            !ui_required(),
            "the browser tests are required here (WARREN_REQUIRE_UI=1) but {missing}"
        );
        eprintln!(
            "\n*****************************************************************\n\
             *** SKIPPED: the web UI's browser tests -- NOT RUN: {missing}.\n\
             *** Run tests/ui/install.sh (node + npm needed); CI sets WARREN_REQUIRE_UI=1.\n\
             *****************************************************************\n"
        );
        return;
    }

    // The fixture app needs Debian's python3, as apps.rs does.
    let with_app = Path::new("/usr/bin/python3").exists();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = ServerOptions::workers(2);
    if with_app {
        let file = dir.path().join("apps.toml");
        std::fs::write(&file, apps_file()).expect("write apps.toml");
        options = options
            .arg("--apps")
            .arg(file.to_str().expect("utf-8 path"));
    } else {
        assert!(
            !warren_tests::sandbox_required(),
            "the app flow needs /usr/bin/python3"
        );
        eprintln!("*** SKIPPED (in the browser run): the app flow: no /usr/bin/python3");
    }
    let server = Server::ready(&options).await;
    // Terminals, tasks and apps need users' processes: without the sandbox
    // the script skips those flows (loudly); where it is required,
    // `sandboxed` fails instead.
    let sandboxed = warren_tests::accounts::sandboxed(&server).await;
    // A shared template to clone from the Files page.
    let template = server.data_dir.join("shared/templates/starter");
    std::fs::create_dir_all(&template).expect("create a template");
    std::fs::write(template.join("README.md"), "# A starter\n").expect("write the template");

    let screenshots = repo.join("target/ui-screenshots");
    std::fs::create_dir_all(&screenshots).expect("create target/ui-screenshots");
    let script = repo.join("tests/ui/browser.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .current_dir(&repo)
        .env("WARREN_URL", &server.base_url)
        .env("WARREN_ADMIN_USER", "admin")
        .env("WARREN_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("NODE_PATH", &node_modules)
        .env("WARREN_SCREENSHOTS", &screenshots)
        .env("WARREN_UI_SANDBOX", if sandboxed { "1" } else { "0" })
        .env(
            "WARREN_UI_APP",
            if with_app && sandboxed { APP_NAME } else { "" },
        )
        .env("WARREN_UI_APP_TITLE", APP_TITLE)
        .env("WARREN_UI_TEMPLATE", "starter")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: a timeout kills chromium's processes too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn node tests/ui/browser.mjs");
    let pid = child.id().expect("the browser run's pid");
    let output = Arc::new(Mutex::new(String::new()));
    let stdout = collect_lines(child.stdout.take().expect("piped stdout"), output.clone());
    let stderr = collect_lines(child.stderr.take().expect("piped stderr"), output.clone());

    let timeout = browser_run_timeout();
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let status = match status {
        Ok(status) => status.expect("wait for node"),
        Err(_) => {
            if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.wait().await;
            let _ = tokio::join!(stdout, stderr);
            panic!(
                "the browser run took over {timeout:?} and was killed; it printed:\n{}\nwarren's log (last 60 lines):\n{}",
                output.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                last_lines(&server.log(), 60)
            );
        }
    };
    let _ = tokio::join!(stdout, stderr);
    // Whatever chromium left behind (the script closes it; a crash may not).
    if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let output = output
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        status.success(),
        "tests/ui/browser.mjs failed ({status}); its steps are the [browser] lines above, \
         screenshots (and FAILED-<flow>.png) in {}.\n{}\nwarren's log (last 60 lines):\n{}",
        screenshots.display(),
        summary_of(&output),
        last_lines(&server.log(), 60)
    );
}

/// The script's summary (from its `== summary` line on), or all it printed
/// when it did not get that far.
fn summary_of(output: &str) -> &str {
    output.find("== summary").map_or(output, |at| &output[at..])
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
