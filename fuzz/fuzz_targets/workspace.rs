//! Path resolution in a real workspace on disk: a script of file operations
//! (one a line: an op letter, then its paths separated by tabs) run through
//! the worker's own `UserDirs`, in a workspace that holds symbolic links
//! pointing out of it (as a user's program could make). Whatever the script,
//! nothing outside the user's workspace is read, created, changed or removed.
//!
//! Ops: `l` list, `r` read, `o` open for reading, `m` mkdir, `p` mkdir with
//! parents, `d` delete recursively, `D` delete, `v` rename, `c` copy, `t`
//! clone a template.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use warren_protocol::{Reply, UserId};
use warren_worker::workspace::{Quota, Workspaces};

const SECRET: &[u8] = b"warren-fuzz: outside the workspace";
const USER: UserId = UserId([7; 16]);
const OTHER: UserId = UserId([9; 16]);
const QUOTA: Quota = Quota {
    bytes: 1 << 20,
    entries: 1000,
};

struct Fixture {
    // Kept for its Drop.
    _dir: tempfile::TempDir,
    base: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().to_path_buf();
        std::fs::create_dir_all(base.join("outside")).expect("outside");
        std::fs::write(base.join("outside/secret"), SECRET).expect("secret");
        std::fs::create_dir_all(base.join("data/shared/templates/tpl")).expect("templates");
        std::fs::write(base.join("data/shared/templates/tpl/readme"), b"template").expect("tpl");
        std::fs::create_dir_all(base.join("data/users")).expect("users");
        Fixture { _dir: dir, base }
    })
}

/// Every file below `dir` with its content (links as their targets).
fn snapshot(dir: &Path, into: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            into.push((path.clone(), Vec::new()));
            snapshot(&path, into);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap_or_default();
            into.push((path, target.into_os_string().into_encoded_bytes()));
        } else {
            into.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
        }
    }
}

fn outside_state(fixture: &Fixture) -> Vec<(PathBuf, Vec<u8>)> {
    let mut state = Vec::new();
    snapshot(&fixture.base.join("outside"), &mut state);
    snapshot(&fixture.base.join("data/shared"), &mut state);
    snapshot(
        &fixture.base.join("data/users").join(OTHER.to_string()),
        &mut state,
    );
    state
}

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = fixture();
    let users = fixture.base.join("data/users");
    let _ = std::fs::remove_dir_all(users.join(USER.to_string()));
    let workspaces = Workspaces::keeping_open(users.clone(), 4);
    let dirs = workspaces.open(USER).expect("open the user's directories");
    // Another user's workspace, which must stay as it is.
    workspaces.open(OTHER).expect("open the other user");
    let other_file = users.join(OTHER.to_string()).join("workspace/theirs");
    if !other_file.exists() {
        std::fs::write(&other_file, SECRET).expect("other user's file");
    }
    let workspace = users.join(USER.to_string()).join("workspace");
    let outside = fixture.base.join("outside");
    std::os::unix::fs::symlink("../../../../outside", workspace.join("up")).expect("link");
    std::os::unix::fs::symlink(&outside, workspace.join("abs")).expect("link");
    std::os::unix::fs::symlink(outside.join("secret"), workspace.join("secret")).expect("link");
    std::os::unix::fs::symlink(
        format!("../../{}/workspace", OTHER),
        workspace.join("neighbour"),
    )
    .expect("link");
    std::fs::create_dir(workspace.join("dir")).expect("dir");
    std::fs::write(workspace.join("dir/file"), b"inside").expect("file");
    let before = outside_state(fixture);

    for line in script.lines().take(16) {
        let mut chars = line.chars();
        let Some(op) = chars.next() else { continue };
        let mut args = chars.as_str().split('\t');
        let a = args.next().unwrap_or("");
        let b = args.next().unwrap_or("");
        let reply = match op {
            'l' => dirs.list(a, None, 64),
            // With hand-over: a larger file comes as an open descriptor.
            'r' => dirs
                .read_or_open(a, 1 << 16, true)
                .map(|(reply, _handed)| reply),
            'o' => match dirs.open_read(a) {
                Ok((Some(mut file), entry)) => {
                    let mut content = Vec::new();
                    let _ = file.read_to_end(&mut content);
                    assert_ne!(content, SECRET, "read {a:?} from outside the workspace");
                    Ok(Reply::Entry(entry))
                }
                Ok((None, entry)) => Ok(Reply::Entry(entry)),
                Err(err) => Err(err),
            },
            'm' => dirs.mkdir(&workspaces, QUOTA, a, false),
            'p' => dirs.mkdir(&workspaces, QUOTA, a, true),
            'd' => dirs.delete(&workspaces, a, true),
            'D' => dirs.delete(&workspaces, a, false),
            'v' => dirs.rename(&workspaces, a, b),
            'c' => dirs.copy(&workspaces, QUOTA, a, b),
            't' => dirs.clone_template(&workspaces, QUOTA, a, b),
            _ => continue,
        };
        if let Ok(Reply::File {
            content: Some(content),
            ..
        }) = &reply
        {
            assert_ne!(content, SECRET, "read {a:?} from outside the workspace");
        }
        if reply.is_ok() && op != 't' {
            // Whatever succeeded named a path the API accepts.
            assert!(
                warren_protocol::path::check(a).is_ok(),
                "{op} {a:?} succeeded"
            );
        }
    }

    assert_eq!(
        outside_state(fixture),
        before,
        "changed outside the workspace"
    );
    let mut level: Vec<String> = std::fs::read_dir(users.join(USER.to_string()))
        .expect("user dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    level.sort();
    assert_eq!(
        level,
        ["state", "tmp", "workspace"],
        "made beside the workspace"
    );
    let mut top: Vec<String> = std::fs::read_dir(&fixture.base)
        .expect("base")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["data", "outside"], "made outside the data dir");
});
