//! Workspace paths as the API names them: relative, `/`-separated, UTF-8.
//! Both the master (to answer 400 early and clearly) and the worker (before
//! resolving beneath the workspace, which confines whatever gets through)
//! apply [`check`].

/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name of one entry, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("paths are at most {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("names are at most {MAX_NAME_BYTES} bytes: {0:?}…")]
    NameTooLong(String),
    #[error("paths may not contain NUL, backslashes or control characters")]
    BadCharacter,
    #[error("paths may not contain `.` or `..` components")]
    DotComponent,
    #[error("paths are relative to your workspace: no leading `/`")]
    Absolute,
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
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
