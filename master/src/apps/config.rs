//! The operator's app definitions (`--apps FILE`, TOML): parsed and
//! checked once at start, so a mistake is an error naming the app and key
//! rather than a failed launch later.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_protocol::{AppAuth, AppListen};

/// Placeholders a command, an env value or `ready_path` may hold.
const PLACEHOLDERS: &[&str] = &["socket", "port", "base_url", "workspace", "user", "secret"];

/// Default `start_timeout`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AppsConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: [apps.{app}] {message}")]
    App {
        path: PathBuf,
        app: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The most apps one user may run at once, all kinds together.
    #[serde(default)]
    max_running_per_user: u32,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    command: Vec<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default = "default_ready_path")]
    ready_path: String,
    #[serde(default)]
    start_timeout: Option<String>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    max_running: u32,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_auth")]
    auth: String,
    #[serde(default)]
    read_execute: Vec<PathBuf>,
    #[serde(default)]
    read_only: Vec<PathBuf>,
}

fn default_listen() -> String {
    "unix".into()
}

fn default_ready_path() -> String {
    "/".into()
}

fn default_auth() -> String {
    "none".into()
}

/// One app, checked.
#[derive(Debug, Clone)]
pub struct AppDef {
    pub name: String,
    pub title: String,
    pub command: Vec<String>,
    pub listen: AppListen,
    /// The app sees `/…` rather than `/user/{name}/{app}/…`.
    pub strip_prefix: bool,
    pub ready_path: String,
    pub start_timeout: Duration,
    /// Zero: never.
    pub idle_timeout: Duration,
    /// On this server (0: no limit).
    pub max_running: u32,
    pub env: Vec<(String, String)>,
    pub auth: AppAuth,
    pub read_execute: Vec<PathBuf>,
    pub read_only: Vec<PathBuf>,
}

/// Every app the operator defined.
#[derive(Debug, Clone, Default)]
pub struct AppsConfig {
    /// Shared: a proxied request holds its app's definition while a
    /// reload may replace the set.
    pub apps: BTreeMap<String, std::sync::Arc<AppDef>>,
    pub max_running_per_user: u32,
}

impl AppsConfig {
    /// Reads and checks `path`; `data_dir` is what no app may be granted.
    pub fn load(path: &Path, data_dir: &Path) -> Result<AppsConfig, AppsConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AppsConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AppsConfig::parse(&text, path, data_dir)
    }

    pub fn parse(text: &str, path: &Path, data_dir: &Path) -> Result<AppsConfig, AppsConfigError> {
        let file: File = toml::from_str(text).map_err(|err| AppsConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Self::checked(file, path, data_dir)
    }

    /// The `[apps]` section of a configuration file (`path`): its
    /// `[apps.NAME]` tables and `max_running_per_user`, as if they were an
    /// apps file's.
    pub fn from_table(
        mut section: toml::Table,
        path: &Path,
        data_dir: &Path,
    ) -> Result<AppsConfig, AppsConfigError> {
        let mut file = toml::Table::new();
        if let Some(max) = section.remove("max_running_per_user") {
            file.insert("max_running_per_user".into(), max);
        }
        file.insert("apps".into(), toml::Value::Table(section));
        let file: File = toml::Value::Table(file)
            .try_into()
            .map_err(|err: toml::de::Error| AppsConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("[apps] {}", err.message()),
            })?;
        Self::checked(file, path, data_dir)
    }

    fn checked(file: File, path: &Path, data_dir: &Path) -> Result<AppsConfig, AppsConfigError> {
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let mut apps = BTreeMap::new();
        for (name, raw) in file.apps {
            let def = check(&name, raw, &data_dir).map_err(|message| AppsConfigError::App {
                path: path.to_path_buf(),
                app: name.clone(),
                message,
            })?;
            apps.insert(name, std::sync::Arc::new(def));
        }
        Ok(AppsConfig {
            apps,
            max_running_per_user: file.max_running_per_user,
        })
    }
}

/// An app's name is a URL path segment: 1 to 64 of `[a-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The `{…}` placeholders of `text` that are not known.
fn unknown_placeholders(text: &str, allowed: &[&str]) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !allowed.contains(&name) {
            unknown.push(format!("{{{name}}}"));
        }
        rest = &after[end + 1..];
    }
    unknown
}

fn duration(key: &str, value: Option<String>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) if text.trim() == "0" => Ok(Duration::ZERO),
        Some(text) => humantime::parse_duration(text.trim())
            .map_err(|err| format!("{key} = {text:?}: {err} (e.g. \"30s\", \"30m\")")),
    }
}

fn check(name: &str, raw: RawApp, data_dir: &Path) -> Result<AppDef, String> {
    if !valid_name(name) {
        return Err("the name must be 1 to 64 of a-z, 0-9, '-' and '_'".into());
    }
    if raw.command.is_empty() || raw.command[0].is_empty() {
        return Err("command must name a program".into());
    }
    let texts = raw
        .command
        .iter()
        .map(|arg| ("command", arg))
        .chain(raw.env.values().map(|value| ("env", value)))
        .chain(std::iter::once(("ready_path", &raw.ready_path)));
    for (key, text) in texts {
        let unknown = unknown_placeholders(text, PLACEHOLDERS);
        if !unknown.is_empty() {
            return Err(format!(
                "{key}: unknown placeholder {} (known: {})",
                unknown.join(", "),
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if text.contains('\0') {
            return Err(format!("{key} holds a NUL byte"));
        }
    }
    for key in raw.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("env: {key:?} is not a valid variable name"));
        }
    }
    let uses = |placeholder: &str| {
        raw.command
            .iter()
            .chain(raw.env.values())
            .any(|text| text.contains(placeholder))
    };
    let listen = match raw.listen.as_str() {
        "unix" => AppListen::Unix,
        "tcp" => AppListen::Tcp,
        other => return Err(format!("listen = {other:?}: use \"unix\" or \"tcp\"")),
    };
    match listen {
        AppListen::Unix if !uses("{socket}") => {
            return Err("listen = \"unix\" but neither command nor env uses {socket}".into())
        }
        AppListen::Tcp if !uses("{port}") => {
            return Err("listen = \"tcp\" but neither command nor env uses {port}".into())
        }
        _ => {}
    }
    let auth = parse_auth(&raw.auth)?;
    if listen == AppListen::Tcp && (auth == AppAuth::None || !uses("{secret}")) {
        return Err(
            "an app on TCP is reachable by every local user: give it an auth with {secret} \
             and pass {secret} to it in command or env"
                .into(),
        );
    }
    if listen == AppListen::Tcp && raw.command.iter().any(|arg| arg.contains("{secret}")) {
        return Err(
            "an app on TCP must get {secret} through env, not command: every local user \
             can read a process's arguments"
                .into(),
        );
    }
    if !raw.ready_path.starts_with('/') && !raw.ready_path.starts_with("{base_url}") {
        return Err(format!(
            "ready_path = {:?} must start with / or {{base_url}}",
            raw.ready_path
        ));
    }
    // A request target once filled in (the readiness probe sends it as is).
    let sample = raw
        .ready_path
        .replace("{base_url}", &format!("/user/someone/{name}/"))
        .replace("{user}", "someone")
        .replace("{socket}", "/s")
        .replace("{port}", "1")
        .replace("{workspace}", "/w")
        .replace("{secret}", "0");
    let target_ok = sample.bytes().all(|b| b.is_ascii_graphic())
        && axum::http::uri::PathAndQuery::try_from(sample.as_str()).is_ok();
    if !target_ok {
        return Err(format!(
            "ready_path = {:?} is not a request target (no spaces or control characters)",
            raw.ready_path
        ));
    }
    let start_timeout = duration("start_timeout", raw.start_timeout, DEFAULT_START_TIMEOUT)?;
    if start_timeout < Duration::from_millis(100) {
        return Err("start_timeout must be at least 100ms".into());
    }
    let idle_timeout = duration("idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
    if !idle_timeout.is_zero() && idle_timeout < Duration::from_secs(1) {
        return Err("idle_timeout must be at least 1s, or 0 for never".into());
    }
    for path in raw.read_execute.iter().chain(&raw.read_only) {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        if path
            .components()
            .any(|part| part == std::path::Component::ParentDir)
        {
            return Err(format!(
                "{} holds '..': name the directory itself",
                path.display()
            ));
        }
        // Symbolic links resolved (where the path exists), on both sides.
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let data_real = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let overlaps = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        if overlaps(path, data_dir) || overlaps(&real, &data_real) {
            return Err(format!(
                "{} overlaps the data directory {}: apps may never be granted it",
                path.display(),
                data_dir.display()
            ));
        }
    }
    Ok(AppDef {
        name: name.to_string(),
        title: raw.title.unwrap_or_else(|| name.to_string()),
        command: raw.command,
        listen,
        strip_prefix: raw.strip_prefix,
        ready_path: raw.ready_path,
        start_timeout,
        idle_timeout,
        max_running: raw.max_running,
        env: raw.env.into_iter().collect(),
        auth,
        read_execute: raw.read_execute,
        read_only: raw.read_only,
    })
}

/// `none`, `basic:[USER:]PASSWORD`, `bearer:TOKEN`, `header:NAME:VALUE`.
fn parse_auth(text: &str) -> Result<AppAuth, String> {
    let bad = |why: &str| format!("auth = {text:?}: {why}");
    let check_value = |value: &str| {
        let unknown = unknown_placeholders(value, &["secret", "user"]);
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(bad(&format!("unknown placeholder {}", unknown.join(", "))))
        }
    };
    let auth = if text == "none" {
        AppAuth::None
    } else if let Some(rest) = text.strip_prefix("basic:") {
        let (user, password) = match rest.split_once(':') {
            Some((user, password)) if !user.contains('{') || user == "{user}" => (user, password),
            _ => ("warren", rest),
        };
        check_value(user)?;
        check_value(password)?;
        AppAuth::Basic {
            user: user.into(),
            password: password.into(),
        }
    } else if let Some(token) = text.strip_prefix("bearer:") {
        check_value(token)?;
        AppAuth::Bearer {
            token: token.into(),
        }
    } else if let Some(rest) = text.strip_prefix("header:") {
        let (name, value) = rest
            .split_once(':')
            .ok_or_else(|| bad("use header:NAME:VALUE"))?;
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(bad("the header name must be letters, digits, '-' or '_'"));
        }
        check_value(value)?;
        if [
            "cookie",
            "host",
            "connection",
            "upgrade",
            "content-length",
            "transfer-encoding",
        ]
        .contains(&name.to_ascii_lowercase().as_str())
        {
            return Err(bad("that header is the proxy's own"));
        }
        AppAuth::Header {
            name: name.into(),
            value: value.into(),
        }
    } else {
        return Err(bad(
            "use none, basic:[USER:]PASSWORD, bearer:TOKEN or header:NAME:VALUE",
        ));
    };
    if auth != AppAuth::None && !text.contains("{secret}") {
        return Err(bad("an auth must send {secret}, the launch's secret"));
    }
    // What the proxy will send must be a header it can send.
    if let Some((name, value)) = auth.header("someone", "0123456789abcdef") {
        let valid = axum::http::HeaderName::try_from(name).is_ok()
            && axum::http::HeaderValue::try_from(value)
                .is_ok_and(|value| !value.as_bytes().iter().any(|b| b.is_ascii_control()));
        if !valid {
            return Err(bad("not a valid header name and value"));
        }
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppsConfig, AppsConfigError> {
        AppsConfig::parse(text, Path::new("apps.toml"), Path::new("/var/lib/warren"))
    }

    #[test]
    fn a_full_definition_parses() {
        let config = parse(
            r#"
            max_running_per_user = 2
            [apps.jupyter]
            command = ["jupyter", "server", "--sock", "{socket}", "--base-url={base_url}"]
            ready_path = "{base_url}api/status"
            auth = "header:Authorization:token {secret}"
            env = { JUPYTER_TOKEN = "{secret}" }
            idle_timeout = "0"
            start_timeout = "45s"
            read_execute = ["/opt/jupyter"]
            [apps.opencode]
            command = ["opencode", "serve", "--port", "{port}"]
            listen = "tcp"
            strip_prefix = true
            auth = "basic:opencode:{secret}"
            env = { OPENCODE_SERVER_PASSWORD = "{secret}" }
            max_running = 10
            "#,
        )
        .unwrap();
        assert_eq!(config.max_running_per_user, 2);
        let jupyter = &config.apps["jupyter"];
        assert_eq!(jupyter.idle_timeout, Duration::ZERO);
        assert_eq!(jupyter.start_timeout, Duration::from_secs(45));
        assert_eq!(
            jupyter.auth.header("alice", "s3"),
            Some(("authorization".into(), "token s3".into()))
        );
        let opencode = &config.apps["opencode"];
        assert_eq!(opencode.listen, AppListen::Tcp);
        assert_eq!(opencode.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            opencode.auth,
            AppAuth::Basic {
                user: "opencode".into(),
                password: "{secret}".into()
            }
        );
    }

    #[test]
    fn mistakes_name_the_app_and_the_key() {
        let cases = [
            (
                r#"[apps.x]
command = ["a", "{sock}"]"#,
                "unknown placeholder {sock}",
            ),
            (
                r#"[apps.x]
command = ["a"]"#,
                "neither command nor env uses {socket}",
            ),
            (
                r#"[apps.x]
command = ["a", "{port}"]
listen = "tcp""#,
                "reachable by every local user",
            ),
            (
                r#"[apps.x]
command = ["a", "{socket}"]
auth = "bearer:fixed""#,
                "must send {secret}",
            ),
            (
                r#"[apps.x]
command = ["a", "{socket}"]
read_only = ["/var/lib"]"#,
                "overlaps the data directory",
            ),
            (
                r#"[apps.x]
command = ["a", "{socket}"]
idle_timeout = "soon""#,
                "idle_timeout",
            ),
            (
                r#"[apps.x]
command = ["a", "{socket}"]
comand = []"#,
                "unknown field `comand`",
            ),
            (
                r#"[apps."Bad Name"]
command = ["a", "{socket}"]"#,
                "the name must be",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
