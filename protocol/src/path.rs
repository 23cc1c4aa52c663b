//! Workspace paths as the API names them: relative, `/`-separated, UTF-8.
//! Both the master (to answer 400 early and clearly) and the worker (before
//! resolving beneath the workspace, which confines whatever gets through)
//! apply [`check`].

/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name of one entry, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Most components of a path, and so the deepest nesting the API creates
/// (mkdir, move, copy, upload); walks handle deeper trees made otherwise.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("paths are at most {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("names are at most {MAX_NAME_BYTES} bytes: {0:?}…")]
    NameTooLong(String),
    #[error("paths may not contain NUL, backslashes or control characters")]
    BadCharacter,
    #[error(
        "paths may not contain bidirectional-text controls or invisible (zero-width) characters"
    )]
    Invisible,
    #[error("paths have at most {MAX_DEPTH} components")]
    TooDeep,
    #[error("paths may not contain `.` or `..` components")]
    DotComponent,
    #[error("paths are relative to your workspace: no leading `/`")]
    Absolute,
    #[error("one name is wanted here, not a path")]
    NotAName,
}

/// One entry's name on its own (such as an upload part's file name): what
/// [`check`] accepts as exactly one component, written without any `/`
/// (`a/` is not the name `a`).
pub fn check_name(name: &str) -> Result<&str, PathError> {
    let parts = check(name)?;
    match parts.as_slice() {
        [one] if !name.contains('/') => Ok(one),
        _ => Err(PathError::NotAName),
    }
}

/// The components of `path` (empty for the workspace root: `""` or `/`
/// alone is not accepted, use `""`). Empty components from doubled or
/// trailing slashes are dropped.
pub fn check(path: &str) -> Result<Vec<&str>, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path
        .chars()
        .any(|c| c == '\0' || c == '\\' || c.is_control())
    {
        return Err(PathError::BadCharacter);
    }
    if path.chars().any(invisible) {
        return Err(PathError::Invisible);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" => continue,
            "." | ".." => return Err(PathError::DotComponent),
            name if name.len() > MAX_NAME_BYTES => {
                return Err(PathError::NameTooLong(name.chars().take(32).collect()))
            }
            name => parts.push(name),
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(PathError::TooDeep);
    }
    Ok(parts)
}

/// Characters that change how a name is shown without being seen: bidi
/// embeddings, overrides, isolates and marks, and zero-width characters.
/// A name holding one can pass for another in any UI (spoofing).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_component_without_slashes() {
        assert_eq!(check_name("a.txt"), Ok("a.txt"));
        for bad in ["a/", "/a", "a/b", "", "..", ".", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn good_paths_split_into_names() {
        assert_eq!(check(""), Ok(vec![]));
        assert_eq!(check("a"), Ok(vec!["a"]));
        assert_eq!(check("a/b/c.txt"), Ok(vec!["a", "b", "c.txt"]));
        assert_eq!(check("a//b/"), Ok(vec!["a", "b"]));
        assert_eq!(check("..a/b..").map(|p| p.len()), Ok(2));
        assert_eq!(check("é/日本").map(|p| p.len()), Ok(2));
    }

    #[test]
    fn attacks_are_refused() {
        for bad in [
            "..",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "/etc/passwd",
            "a\0b",
            "a\\..\\b",
            "a\nb",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check(&"a".repeat(256)).map(|_| ()),
            Err(PathError::NameTooLong("a".repeat(32)))
        );
        assert_eq!(check(&"a/".repeat(2049)), Err(PathError::TooLong));
        assert_eq!(
            check(&"a/".repeat(MAX_DEPTH)).map(|p| p.len()),
            Ok(MAX_DEPTH)
        );
        assert_eq!(check(&"a/".repeat(MAX_DEPTH + 1)), Err(PathError::TooDeep));
    }

    #[test]
    fn invisible_and_bidi_characters_are_refused() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{2060}', '\u{FEFF}',
        ] {
            assert_eq!(
                check(&format!("dir/evil{c}txt.exe")),
                Err(PathError::Invisible),
                "{:x}",
                c as u32
            );
        }
        // Visible non-ASCII stays fine.
        assert!(check("café/naïve-日本語.txt").is_ok());
    }
}
