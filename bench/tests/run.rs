//! `warren-bench run` against a real warren (this package's own `serve`,
//! which is exactly `warren serve`): the read-back notices a file deleted
//! behind the harness's back, `--slo` gates, the JSON is the documented
//! schema, and killing one slot's worker touches only that slot's users.

use std::path::Path;
use std::process::Command;
use warren_tests::accounts::Caller;
use warren_tests::{Server, ServerOptions};

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_warren-bench")
}

async fn server(workers: u32) -> Server {
    let options = ServerOptions {
        binary: Some(bench().into()),
        ..ServerOptions::workers(workers)
    };
    Server::ready(&options).await
}

/// An admin's session token in a file, as `--admin-token-file` takes it.
async fn admin_token(server: &Server, dir: &Path) -> std::path::PathBuf {
    let admin = Caller::admin(server).await;
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{}\n", admin.token)).unwrap();
    file
}

/// Runs `warren-bench run` with `args` against `server`: exit code, stdout,
/// stderr.
fn run(server: &Server, token: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(bench())
        .arg("run")
        .arg("--target")
        .arg(server.url(""))
        .arg("--admin-token-file")
        .arg(token)
        .args(args)
        .output()
        .expect("run warren-bench");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn results(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the --out file");
    serde_json::from_str(&text).expect("JSON results")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_back_notices_a_write_lost_behind_the_harness_s_back() {
    let server = server(2).await;
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token(&server, dir.path()).await;
    let out = dir.path().join("results.json");
    // Between the load and the read-back, one of the files the run wrote
    // (and got a 2xx for) is removed from the disk.
    let delete_one = format!(
        "f=$(find {} -path '*/warren-bench/*' -type f | sort | head -n 1); test -n \"$f\" && rm \"$f\"",
        server.data_dir.display()
    );
    let (code, stdout, stderr) = run(
        &server,
        &token,
        &[
            "--scenario",
            "files",
            "--users",
            "3",
            "--duration",
            "2s",
            "--concurrency",
            "4",
            "--out",
            out.to_str().unwrap(),
            "--before-verify",
            &delete_one,
        ],
    );
    assert_eq!(
        code, 1,
        "a lost write must fail the run\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 LOST"), "{stdout}");
    let results = results(&out);
    let verification = &results["verification"];
    assert!(
        verification["acknowledged"].as_u64().unwrap() >= 3,
        "{verification}"
    );
    let lost = verification["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{verification}");
    assert_eq!(lost[0]["reason"], "missing");
    assert!(lost[0]["path"]
        .as_str()
        .unwrap()
        .starts_with("warren-bench/"));

    // The same run without the deletion loses nothing, and cleans up.
    let (code, stdout, stderr) = run(
        &server,
        &token,
        &[
            "--scenario",
            "files",
            "--users",
            "3",
            "--duration",
            "2s",
            "--concurrency",
            "4",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("none lost"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_gates_and_the_json_is_the_documented_schema() {
    let server = server(1).await;
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token(&server, dir.path()).await;
    let out = dir.path().join("results.json");
    let html = dir.path().join("report.html");
    let (code, stdout, stderr) = run(
        &server,
        &token,
        &[
            "--scenario",
            "ping",
            "--users",
            "2",
            "--duration",
            "1s",
            "--rate",
            "200",
            "--slo",
            "p99<30s,errors<1%",
            "--out",
            out.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let results = results(&out);
    assert_eq!(results["schema"], "warren-bench-run/1");
    let ping = &results["operations"]["ping"];
    assert!(ping["count"].as_u64().unwrap() > 50, "{ping}");
    assert_eq!(ping["errors"], 0, "{ping}");
    assert!(results["slo"][0]["met"].as_bool().unwrap());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "the report has no plot");

    // A threshold no server meets fails the run, and says which.
    let (code, stdout, stderr) = run(
        &server,
        &token,
        &[
            "--scenario",
            "ping",
            "--users",
            "2",
            "--duration",
            "1s",
            "--rate",
            "100",
            "--slo",
            "p50<1us",
            "--compare",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("VIOLATED"), "{stdout}");
    assert!(stdout.contains("compared with"), "{stdout}");

    // A bad objective is refused before any load, with the reason.
    let (code, _, stderr) = run(&server, &token, &["--slo", "p99<50"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_slot_s_worker_touches_only_that_slot_s_users() {
    let server = server(2).await;
    let dir = tempfile::tempdir().unwrap();
    let token = admin_token(&server, dir.path()).await;
    let out = dir.path().join("results.json");
    let (code, stdout, stderr) = run(
        &server,
        &token,
        &[
            "--scenario",
            "mixed",
            "--users",
            "12",
            "--duration",
            "5s",
            "--rate",
            "200",
            "--chaos",
            "kill-worker:every=1s,slot=0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let results = results(&out);
    let kills = results["chaos"].as_array().unwrap();
    assert!(
        kills.iter().filter(|e| e["outcome"] == "done").count() >= 3,
        "{kills:?}"
    );
    let slots = &results["slots"];
    assert!(slots["1"]["users"].as_u64().unwrap() > 0, "{slots}");
    assert!(slots["1"]["count"].as_u64().unwrap() > 100, "{slots}");
    assert_eq!(
        slots["1"]["errors"], 0,
        "users of the other slot were touched: {slots}"
    );
    assert!(results["verification"]["lost"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(results["orphans"], serde_json::json!([]));
}
