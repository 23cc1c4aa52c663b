//! Path checking: every path in the API (URL paths, `from`/`to` in JSON
//! bodies, upload part names) goes through `warren_protocol::path::check`
//! before the worker resolves it. What it accepts must be a clean relative
//! path: no `.`/`..` component, no NUL, backslash or control character, no
//! leading `/`, and names within the length limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_protocol::path::{check, MAX_NAME_BYTES, MAX_PATH_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parts) = check(text) else {
        return;
    };
    assert!(text.len() <= MAX_PATH_BYTES);
    assert!(!text.starts_with('/'));
    for part in &parts {
        assert!(!part.is_empty());
        assert!(*part != "." && *part != "..");
        assert!(part.len() <= MAX_NAME_BYTES);
        assert!(!part.contains('/'));
        assert!(!part
            .chars()
            .any(|c| c == '\0' || c == '\\' || c.is_control()));
    }
    // The parts are the path without its empty components: joining them
    // and checking again gives the same parts.
    let joined = parts.join("/");
    assert_eq!(check(&joined).as_deref(), Ok(&parts[..]));
});
