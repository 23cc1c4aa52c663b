//! The `warren` binary's command line. (Also makes `cargo test --workspace`
//! build the binary that the end-to-end tests in `tests/` start.)

use std::process::Command;

fn warren(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .expect("run warren");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn help_lists_serve_and_hides_worker() {
    let (ok, text) = warren(&["--help"]);
    assert!(ok, "{text}");
    assert!(text.contains("serve"), "{text}");
    // No command named `worker` (other commands' lines may say "worker").
    assert!(
        !text
            .lines()
            .any(|line| line.trim_start().starts_with("worker ")),
        "{text}"
    );
    for command in ["config", "pool", "user"] {
        assert!(
            text.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command} missing: {text}"
        );
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let cases = [
        (&["serve", "--workers", "0"][..], "--workers"),
        (&["serve", "--listen", "nowhere"][..], "--listen"),
        (
            &["serve", "--heartbeat-timeout", "5 parsecs"][..],
            "--heartbeat-timeout",
        ),
    ];
    for (args, mentions) in cases {
        let (ok, text) = warren(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(text.contains(mentions), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}
