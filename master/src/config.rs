//! The configuration file (`--config FILE`, TOML) and its place among the
//! other sources: a command-line flag beats a `WARREN_*` variable, which
//! beats the file, which beats the built-in default.
//!
//! The file is not a second parser of settings: every key names one flag
//! ([`SETTINGS`]), its value is handed to that flag's own parser, and a
//! value that passes becomes the flag's default for this run — so clap
//! itself applies the precedence, and a key cannot mean anything a flag
//! does not. Unknown keys, values of the wrong kind and values the flag's
//! parser refuses are errors naming the key and its line.

use crate::cli::Cli;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// One key of the file: the flag it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The flag's clap id (its field name).
    pub id: &'static str,
    pub section: &'static str,
    pub key: &'static str,
    /// A SIGHUP applies a change of it without a restart.
    pub reloads: bool,
}

const fn s(id: &'static str, section: &'static str, key: &'static str) -> Setting {
    Setting {
        id,
        section,
        key,
        reloads: false,
    }
}

const fn r(id: &'static str, section: &'static str, key: &'static str) -> Setting {
    Setting {
        id,
        section,
        key,
        reloads: true,
    }
}

/// Every setting a file may hold, in the order `config print` shows them.
/// A test checks that every flag of `warren serve` is here.
pub const SETTINGS: &[Setting] = &[
    s("listen", "http", "listen"),
    s("public_url", "http", "public_url"),
    s("trusted_proxies", "http", "trusted_proxies"),
    s("header_read_timeout", "http", "header_read_timeout"),
    s("send_timeout", "http", "send_timeout"),
    s("body_timeout", "http", "body_timeout"),
    s("max_connections", "http", "max_connections"),
    s(
        "max_connections_per_address",
        "http",
        "max_connections_per_address",
    ),
    s("shutdown_timeout", "http", "shutdown_timeout"),
    s("metrics_listen", "http", "metrics_listen"),
    s("metrics_token_file", "http", "metrics_token_file"),
    s("data_dir", "storage", "data_dir"),
    s("default_quota", "storage", "default_quota"),
    s("default_file_quota", "storage", "default_file_quota"),
    s("disk_reserve", "storage", "disk_reserve"),
    s("inode_reserve", "storage", "inode_reserve"),
    s("upload_idle_timeout", "storage", "upload_idle_timeout"),
    s(
        "max_transfers_per_user",
        "storage",
        "max_transfers_per_user",
    ),
    s("database_url", "database", "url"),
    s("database_url_file", "database", "url_file"),
    s("workers", "workers", "count"),
    s("heartbeat_timeout", "workers", "heartbeat_timeout"),
    s("unavailable_wait", "workers", "unavailable_wait"),
    s("mode", "auth", "mode"),
    s("password_file", "auth", "password_file"),
    s("admin_password_file", "auth", "admin_password_file"),
    s("allow_signup", "auth", "allow_signup"),
    s("session_ttl", "auth", "session_ttl"),
    s("session_idle", "auth", "session_idle"),
    s("max_sessions", "auth", "max_sessions"),
    s("hash_concurrency", "auth", "hash_concurrency"),
    s("login_rate_per_address", "auth", "login_rate_per_address"),
    s("login_rate_per_account", "auth", "login_rate_per_account"),
    s("lockout_failures", "auth", "lockout_failures"),
    s("lockout_window", "auth", "lockout_window"),
    s("lockout_duration", "auth", "lockout_duration"),
    s("token_rate", "auth", "token_rate"),
    s("password_login", "auth", "password_login"),
    s("oidc_issuer", "oidc", "issuer"),
    s("oidc_client_id", "oidc", "client_id"),
    s("oidc_client_secret_file", "oidc", "client_secret_file"),
    s("oidc_scopes", "oidc", "scopes"),
    s("oidc_username_claim", "oidc", "username_claim"),
    s("oidc_admin_claim", "oidc", "admin_claim"),
    s("oidc_create_users", "oidc", "create_users"),
    s("jwt_bearer", "jwt", "bearer"),
    s("jwt_secret_file", "jwt", "secret_file"),
    s("jwt_jwks_url", "jwt", "jwks_url"),
    s("jwt_jwks_file", "jwt", "jwks_file"),
    s("jwt_issuer", "jwt", "issuer"),
    s("jwt_audience", "jwt", "audience"),
    s("jwt_username_claim", "jwt", "username_claim"),
    s("jwt_admin_claim", "jwt", "admin_claim"),
    s("jwt_create_users", "jwt", "create_users"),
    s("identity_header", "proxy", "identity_header"),
    s("identity_header_format", "proxy", "identity_header_format"),
    s("identity_header_create_users", "proxy", "create_users"),
    s("alb_arn", "proxy", "alb_arn"),
    s("alb_region", "proxy", "alb_region"),
    s("alb_key_url", "proxy", "alb_key_url"),
    s("audit_retention", "audit", "retention"),
    s("audit_rate", "audit", "rate"),
    s("audit_max_rows", "audit", "max_rows"),
    r("task_limit", "tasks", "limit"),
    s("task_output_limit", "tasks", "output_limit"),
    s("task_history", "tasks", "history"),
    s("task_cancel_grace", "tasks", "cancel_grace"),
    s("terminal_idle_timeout", "terminals", "idle_timeout"),
    s("max_terminals_per_user", "terminals", "max_per_user"),
    s("terminal_scrollback", "terminals", "scrollback"),
    r("limit_memory", "limits", "memory"),
    r("limit_processes", "limits", "processes"),
    r("limit_address_space", "limits", "address_space"),
    r("limit_file_size", "limits", "file_size"),
    r("limit_open_files", "limits", "open_files"),
    r("limit_cpu_seconds", "limits", "cpu_seconds"),
    r("limit_pids", "limits", "pids"),
    r("limit_cpu_weight", "limits", "cpu_weight"),
    s("sandbox", "sandbox", "mode"),
    s("sandbox_network", "sandbox", "network"),
    s("sandbox_read", "sandbox", "read"),
    s("sandbox_env", "sandbox", "env"),
    s("cgroup_root", "sandbox", "cgroup_root"),
    s("uid_range", "sandbox", "uid_range"),
    r("apps", "apps", "file"),
    r("log_level", "log", "level"),
    s("log_format", "log", "format"),
    s("host_name", "cluster", "host_name"),
    s("host_url", "cluster", "host_url"),
    s("cluster_secret_file", "cluster", "secret_file"),
];

/// Settings whose values are secrets: `config print` never shows them.
const SECRETS: &[&str] = &["database_url", "sandbox_env"];

/// The one section whose tables are not settings: `[apps.NAME]` are app
/// definitions, checked by [`crate::apps::AppsConfig`].
const APPS_SECTION: &str = "apps";

/// One problem of a file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// `[section] key`, or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

/// Every problem of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            if !problem.key.is_empty() {
                write!(f, ": {}", problem.key)?;
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A setting's value as the file gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileValue {
    pub setting: Setting,
    /// What the flag would have been given (several for a list).
    pub values: Vec<String>,
    pub line: usize,
}

/// A configuration file, read and checked.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub values: Vec<FileValue>,
    /// The `[apps]` section without its `file` key (app definitions and
    /// `max_running_per_user`), when it has anything else.
    pub apps: Option<toml::Table>,
}

impl ConfigFile {
    /// Reads `path` and checks every key and value against the flags'
    /// own parsers.
    pub fn load(path: &Path) -> Result<ConfigFile, Problems> {
        let fail = |message: String| Problems {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: String::new(),
                message,
            }],
        };
        let text =
            std::fs::read_to_string(path).map_err(|err| fail(format!("cannot read: {err}")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, Problems> {
        let line_of = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let mut problems = Vec::new();
        let (document, errors) = DeTable::parse_recoverable(text);
        for err in errors {
            problems.push(Problem {
                line: err.span().map(line_of),
                key: String::new(),
                message: err.message().to_string(),
            });
        }
        let command = Cli::command();
        let serve = command
            .find_subcommand("serve")
            .cloned()
            .unwrap_or_else(|| clap::Command::new("serve"));
        let mut values = Vec::new();
        let mut apps = None;
        for (section, value) in document.get_ref() {
            let section_name = section.get_ref().as_ref();
            let section_line = line_of(section.span());
            let DeValue::Table(table) = value.get_ref() else {
                problems.push(Problem {
                    line: Some(section_line),
                    key: section_name.to_string(),
                    message: format!(
                        "settings go in sections ([http], [storage], …), not at the top: {}",
                        suggestion(section_name)
                    ),
                });
                continue;
            };
            if !SETTINGS.iter().any(|s| s.section == section_name) {
                problems.push(Problem {
                    line: Some(section_line),
                    key: format!("[{section_name}]"),
                    message: format!("unknown section{}", did_you_mean(section_name, sections())),
                });
                continue;
            }
            let mut apps_rest = toml::Table::new();
            for (key, value) in table {
                let key_name = key.get_ref().as_ref();
                let line = line_of(key.span());
                let name = format!("[{section_name}] {key_name}");
                if section_name == APPS_SECTION && key_name != "file" {
                    apps_rest.insert(key_name.to_string(), to_toml(value.get_ref()));
                    continue;
                }
                let Some(setting) = SETTINGS
                    .iter()
                    .find(|s| s.section == section_name && s.key == key_name)
                else {
                    let keys = SETTINGS
                        .iter()
                        .filter(|s| s.section == section_name)
                        .map(|s| s.key);
                    problems.push(Problem {
                        line: Some(line),
                        key: name,
                        message: format!("unknown key{}", did_you_mean(key_name, keys)),
                    });
                    continue;
                };
                match check_value(&serve, setting, value.get_ref()) {
                    Ok(strings) => values.push(FileValue {
                        setting: *setting,
                        values: strings,
                        line,
                    }),
                    Err(message) => problems.push(Problem {
                        line: Some(line),
                        key: name,
                        message,
                    }),
                }
            }
            if !apps_rest.is_empty() {
                apps = Some(apps_rest);
            }
        }
        if let Some(url) = values.iter().find(|v| v.setting.id == "database_url") {
            let inline = url.values.first().map(String::as_str).unwrap_or_default();
            if crate::store::redact_url(inline) != inline {
                problems.push(Problem {
                    line: Some(url.line),
                    key: "[database] url".into(),
                    message: "holds a password: put the URL in a file only warren reads and \
                              name it with [database] url_file"
                        .into(),
                });
            }
        }
        if values.iter().any(|v| v.setting.id == "apps") && apps.is_some() {
            problems.push(Problem {
                line: values
                    .iter()
                    .find(|v| v.setting.id == "apps")
                    .map(|v| v.line),
                key: "[apps] file".into(),
                message: "apps are defined both here ([apps.NAME]) and in a file: use one".into(),
            });
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.line);
            return Err(Problems {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            values,
            apps,
        })
    }

    fn value_of(&self, id: &str) -> Option<&FileValue> {
        self.values.iter().find(|v| v.setting.id == id)
    }
}

/// The section names, each once.
fn sections() -> impl Iterator<Item = &'static str> {
    let mut names: Vec<&'static str> = SETTINGS.iter().map(|s| s.section).collect();
    names.dedup();
    names.into_iter()
}

/// Where a key that sits at the top of the file belongs.
fn suggestion(key: &str) -> String {
    match SETTINGS.iter().find(|s| s.key == key || s.id == key) {
        Some(s) => format!("put it under [{}] as {}", s.section, s.key),
        None => "no setting has this name".into(),
    }
}

/// ", did you mean X?" when a known name is close to `name`.
fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|candidate| (strsim::jaro(name, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| format!(" (did you mean {candidate}?)"))
        .unwrap_or_default()
}

/// The strings a flag would be given for `value`, each checked by the
/// flag's own parser.
fn check_value(
    serve: &clap::Command,
    setting: &Setting,
    value: &DeValue<'_>,
) -> Result<Vec<String>, String> {
    let Some(arg) = serve.get_arguments().find(|a| a.get_id() == setting.id) else {
        return Err("not a setting of this version of warren".into());
    };
    let list = matches!(arg.get_action(), clap::ArgAction::Append);
    let strings = match value {
        DeValue::Array(items) if list => items
            .iter()
            .map(|item| scalar(item.get_ref()))
            .collect::<Result<Vec<_>, _>>()?,
        DeValue::Array(_) => return Err("expects one value, not a list".into()),
        // `env = { KEY = "value" }` for the KEY=VALUE list.
        DeValue::Table(table) if setting.id == "sandbox_env" => table
            .iter()
            .map(|(key, value)| Ok(format!("{}={}", key.get_ref(), scalar(value.get_ref())?)))
            .collect::<Result<Vec<_>, String>>()?,
        DeValue::Table(_) => return Err("expects a value, not a table".into()),
        other => vec![scalar(other)?],
    };
    // The flag's own parser, on a one-argument command: the value checked
    // exactly as if it had been given on the command line.
    let probe = clap::Command::new("warren").no_binary_name(true).arg(
        clap::Arg::new("value")
            .value_parser(arg.get_value_parser().clone())
            .allow_hyphen_values(true)
            .required(true),
    );
    for text in &strings {
        if let Err(err) = probe.clone().try_get_matches_from([OsStr::new(text)]) {
            let possible: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            let reason = match std::error::Error::source(&err) {
                Some(source) => source.to_string(),
                None if !possible.is_empty() => format!("use one of {}", possible.join(", ")),
                None => first_line(&err.to_string()),
            };
            let shown = if SECRETS.contains(&setting.id) {
                "…".into()
            } else {
                format!("{text:?}")
            };
            return Err(format!("bad value {shown}: {reason}"));
        }
    }
    Ok(strings)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

/// A TOML scalar as the text a flag would be given.
fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(text) => Ok(text.to_string()),
        DeValue::Integer(integer) => {
            let digits = integer.as_str().replace('_', "");
            i64::from_str_radix(
                digits
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b"),
                integer.radix(),
            )
            .map(|n| n.to_string())
            .map_err(|err| format!("bad integer {}: {err}", integer.as_str()))
        }
        DeValue::Float(float) => Ok(float.as_str().replace('_', "")),
        DeValue::Boolean(flag) => Ok(flag.to_string()),
        DeValue::Datetime(_) => Err("a date is no setting's value".into()),
        DeValue::Array(_) | DeValue::Table(_) => Err("expects a value, not a list or table".into()),
    }
}

/// A parsed TOML value as a `toml::Value` (for the app definitions).
fn to_toml(value: &DeValue<'_>) -> toml::Value {
    match value {
        DeValue::String(text) => toml::Value::String(text.to_string()),
        DeValue::Integer(integer) => scalar(value)
            .ok()
            .and_then(|text| text.parse().ok())
            .map_or_else(
                || toml::Value::String(integer.as_str().to_string()),
                toml::Value::Integer,
            ),
        DeValue::Float(float) => float.as_str().replace('_', "").parse().map_or_else(
            |_| toml::Value::String(float.as_str().to_string()),
            toml::Value::Float,
        ),
        DeValue::Boolean(flag) => toml::Value::Boolean(*flag),
        DeValue::Datetime(date) => toml::Value::Datetime(*date),
        DeValue::Array(items) => {
            toml::Value::Array(items.iter().map(|item| to_toml(item.get_ref())).collect())
        }
        DeValue::Table(table) => toml::Value::Table(
            table
                .iter()
                .map(|(key, value)| (key.get_ref().to_string(), to_toml(value.get_ref())))
                .collect(),
        ),
    }
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf, usize),
    Default,
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path, line) => write!(f, "file {}:{line}", path.display()),
            Source::Default => write!(f, "default"),
            Source::Unset => write!(f, "not set"),
        }
    }
}

/// The command line parsed with the file's values in place, and what is
/// needed to say where each value came from.
pub struct Parsed {
    pub cli: Cli,
    pub matches: ArgMatches,
    pub file: Option<ConfigFile>,
}

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own (also `--help` and `--version`): print and exit with it.
    Clap(clap::Error),
    /// The configuration file's problems.
    File(Problems),
}

/// Parses `args` (with `argv[0]`): the flags and environment first, to
/// find `--config`; then again with the file's values as the defaults.
pub fn parse(args: &[OsString]) -> Result<Parsed, ParseError> {
    let command = Cli::command();
    let first = command
        .clone()
        .try_get_matches_from(args)
        .map_err(ParseError::Clap)?;
    // Subcommands without the setting (`config check`, `worker`) have none.
    let path = leaf(&first)
        .1
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let file = match path {
        Some(path) => Some(ConfigFile::load(&path).map_err(ParseError::File)?),
        None => None,
    };
    let (command, matches) = match &file {
        Some(file) => {
            let names = leaf(&first).0;
            let command = with_defaults(command, &names, file);
            let matches = command
                .clone()
                .try_get_matches_from(args)
                .map_err(ParseError::Clap)?;
            (command, matches)
        }
        None => (command, first),
    };
    drop(command);
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok(Parsed { cli, matches, file })
}

/// The names of the subcommands chosen, and the innermost one's matches.
fn leaf(matches: &ArgMatches) -> (Vec<String>, &ArgMatches) {
    let mut names = Vec::new();
    let mut current = matches;
    while let Some((name, sub)) = current.subcommand() {
        names.push(name.to_string());
        current = sub;
    }
    (names, current)
}

/// The settings a subcommand other than `serve` and `config print` takes
/// from the file: where the database is, and the cluster's secret (only
/// `warren user move` has that flag). (`warren user add` has a
/// `--password-file` of its own, which is not `[auth] password_file`.)
const STORE_SETTINGS: &[&str] = &[
    "data_dir",
    "database_url",
    "database_url_file",
    "uid_range",
    "cluster_secret_file",
];

/// `command` with the file's values as the defaults of the subcommand at
/// `path`: every setting for `serve` and `config print`, the database's
/// for the others.
fn with_defaults(command: clap::Command, path: &[String], file: &ConfigFile) -> clap::Command {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    let every = matches!(names.as_slice(), ["serve"] | ["config", "print"]);
    with_defaults_at(command, path, file, every)
}

fn with_defaults_at(
    command: clap::Command,
    path: &[String],
    file: &ConfigFile,
    every: bool,
) -> clap::Command {
    let Some((first, rest)) = path.split_first() else {
        let mut command = command;
        for value in &file.values {
            let wanted = every || STORE_SETTINGS.contains(&value.setting.id);
            if wanted
                && command
                    .get_arguments()
                    .any(|a| a.get_id() == value.setting.id)
            {
                let defaults: Vec<clap::builder::OsStr> = value
                    .values
                    .iter()
                    .map(|v| clap::builder::OsStr::from(v.clone()))
                    .collect();
                command = command.mut_arg(value.setting.id, |arg| arg.default_values(defaults));
            }
        }
        return command;
    };
    let rest = rest.to_vec();
    command.mut_subcommand(first.as_str(), |sub| {
        with_defaults_at(sub, &rest, file, every)
    })
}

impl Parsed {
    /// The innermost subcommand's matches.
    pub fn leaf(&self) -> &ArgMatches {
        leaf(&self.matches).1
    }

    /// Where `id`'s effective value came from.
    pub fn source(&self, id: &str) -> Source {
        source_of(self.leaf(), self.file.as_ref(), id)
    }
}

fn source_of(matches: &ArgMatches, file: Option<&ConfigFile>, id: &str) -> Source {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Source::Flag,
        Some(ValueSource::EnvVariable) => Source::Env(env_name(id)),
        Some(ValueSource::DefaultValue) => match file.and_then(|f| Some((f, f.value_of(id)?))) {
            Some((file, value)) => Source::File(file.path.clone(), value.line),
            None => Source::Default,
        },
        _ => Source::Unset,
    }
}

/// The environment variable of a `warren serve` flag.
fn env_name(id: &str) -> String {
    Cli::command()
        .find_subcommand("serve")
        .and_then(|serve| serve.get_arguments().find(|a| a.get_id() == id).cloned())
        .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Each setting's effective value (as its flag would be written, secrets
/// hidden), for `config print` and for telling what a reload changed.
pub fn effective(matches: &ArgMatches) -> Vec<(Setting, Option<Vec<String>>)> {
    // A setting the subcommand does not have is an error of
    // `try_get_raw`, and left out.
    SETTINGS
        .iter()
        .filter_map(|setting| {
            let raw = matches.try_get_raw(setting.id).ok()?;
            let values = raw.map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect());
            Some((*setting, values))
        })
        .collect()
}

/// `warren config print`: the effective settings, where each came from.
pub fn print(parsed: &Parsed) -> String {
    let mut out = String::new();
    let mut section = "";
    for (setting, values) in effective(parsed.leaf()) {
        if setting.section != section {
            section = setting.section;
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{section}]\n"));
        }
        let source = parsed.source(setting.id);
        let line = match values {
            None => format!("# {} is not set", setting.key),
            Some(values) => {
                let shown: Vec<String> = values
                    .iter()
                    .map(|v| quote(&redact(setting.id, v)))
                    .collect();
                let value = if shown.len() == 1 && !is_list(setting.id) {
                    shown[0].clone()
                } else {
                    format!("[{}]", shown.join(", "))
                };
                format!("{} = {value}", setting.key)
            }
        };
        out.push_str(&format!("{line:<60} # {source}\n"));
    }
    if let Some(apps) = parsed.file.as_ref().and_then(|f| f.apps.as_ref()) {
        let names: Vec<&str> = apps
            .iter()
            .filter(|(_, v)| v.is_table())
            .map(|(k, _)| k.as_str())
            .collect();
        out.push_str(&format!(
            "\n# apps defined in the file: {}\n",
            names.join(", ")
        ));
    }
    out
}

fn is_list(id: &str) -> bool {
    Cli::command()
        .find_subcommand("serve")
        .and_then(|serve| serve.get_arguments().find(|a| a.get_id() == id).cloned())
        .is_some_and(|arg| matches!(arg.get_action(), clap::ArgAction::Append))
}

/// A secret's value as shown: never the secret.
fn redact(id: &str, value: &str) -> String {
    match id {
        "database_url" => crate::store::redact_url(value),
        "sandbox_env" => match value.split_once('=') {
            Some((key, _)) => format!("{key}=***"),
            None => "***".into(),
        },
        _ => value.to_string(),
    }
}

/// `text` as a TOML value: a number or boolean as itself, anything else
/// as a basic string.
fn quote(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `warren config check FILE`: the file's problems, or none.
pub fn check(path: &Path) -> Result<ConfigFile, Problems> {
    let file = ConfigFile::load(path)?;
    if let Some(apps) = &file.apps {
        let data_dir = file
            .value_of("data_dir")
            .and_then(|v| v.values.first())
            .map_or_else(|| PathBuf::from("./warren-data"), PathBuf::from);
        if let Err(err) = crate::apps::AppsConfig::from_table(apps.clone(), path, &data_dir) {
            return Err(Problems {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    line: None,
                    key: String::new(),
                    message: err.to_string(),
                }],
            });
        }
    }
    Ok(file)
}

/// The settings that differ between two parses of the same command line
/// (the file changed): those a reload applies and those that need a
/// restart.
pub fn changes(old: &ArgMatches, new: &ArgMatches) -> (Vec<Setting>, Vec<Setting>) {
    let old = effective(old);
    let new = effective(new);
    let changed: Vec<Setting> = new
        .iter()
        .filter(|(setting, values)| {
            old.iter().find(|(s, _)| s == setting).map(|(_, v)| v) != Some(values)
        })
        .map(|(setting, _)| *setting)
        .collect();
    changed.into_iter().partition(|s| s.reloads)
}

/// `[section] key` of a setting.
pub fn name(setting: &Setting) -> String {
    format!("[{}] {}", setting.section, setting.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    fn serve_ids() -> Vec<String> {
        Cli::command()
            .find_subcommand("serve")
            .expect("serve")
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !matches!(id.as_str(), "config" | "help" | "version"))
            .collect()
    }

    #[test]
    fn every_flag_of_serve_has_exactly_one_key() {
        let ids = serve_ids();
        for id in &ids {
            assert!(
                SETTINGS.iter().filter(|s| s.id == id).count() == 1,
                "--{id} has no key (or two) in config::SETTINGS"
            );
        }
        for setting in SETTINGS {
            assert!(
                ids.iter().any(|id| id == setting.id),
                "{} is no flag",
                setting.id
            );
            assert_eq!(
                SETTINGS
                    .iter()
                    .filter(|s| s.section == setting.section && s.key == setting.key)
                    .count(),
                1,
                "{} twice",
                name(setting)
            );
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("warren.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    fn parse_args(args: &[&str]) -> Result<Parsed, ParseError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args)
    }

    #[test]
    fn the_file_beats_the_default_and_a_flag_beats_the_file() {
        let (_dir, path) = file(
            "[http]\nlisten = \"127.0.0.1:9999\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
             [workers]\ncount = 3\n[auth]\nallow_signup = true\n\
             [sandbox]\nenv = { A = \"b\" }\n[limits]\nmemory = \"1GiB\"\n",
        );
        let path_text = path.to_str().expect("utf-8");
        let parsed = parse_args(&["warren", "serve", "--config", path_text, "--workers", "7"])
            .expect("parse");
        let Command::Serve(args) = &parsed.cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(args.workers, Some(7));
        assert!(args.allow_signup);
        assert_eq!(args.limit_memory, 1 << 30);
        assert_eq!(args.sandbox_env, [("A".to_string(), "b".to_string())]);
        assert_eq!(args.trusted_proxies.len(), 1);
        assert_eq!(parsed.source("workers"), Source::Flag);
        assert_eq!(parsed.source("listen"), Source::File(path.clone(), 2));
        assert_eq!(parsed.source("session_ttl"), Source::Default);
        assert_eq!(parsed.source("public_url"), Source::Unset);
        let printed = print(&parsed);
        assert!(printed.contains("count = 7"), "{printed}");
        assert!(printed.contains("env = [\"A=***\"]"), "{printed}");
        // Without the file: the defaults.
        let plain = parse_args(&["warren", "serve"]).expect("parse");
        let Command::Serve(args) = &plain.cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert!(!args.allow_signup);
    }

    #[test]
    fn user_commands_take_the_database_from_the_file_and_nothing_else() {
        let (_dir, path) = file(
            "[storage]\ndata_dir = \"/srv/warren\"\n[http]\nlisten = \"127.0.0.1:1\"\n\
             [auth]\npassword_file = \"/etc/warren/single-user\"\n",
        );
        let path = path.to_str().expect("utf-8");
        let parsed = parse_args(&["warren", "user", "list", "--config", path]).expect("parse");
        let Command::User(crate::cli::UserCommand::List { store }) = &parsed.cli.command else {
            panic!("not user list");
        };
        assert_eq!(store.data_dir, PathBuf::from("/srv/warren"));
        // `user add --password-file` is the new user's, never the file's
        // single-user password.
        let parsed =
            parse_args(&["warren", "user", "add", "bob", "--config", path]).expect("parse");
        let Command::User(crate::cli::UserCommand::Add { password_file, .. }) = &parsed.cli.command
        else {
            panic!("not user add");
        };
        assert_eq!(password_file, &None);
    }

    #[test]
    fn user_move_takes_the_cluster_secret_from_the_file() {
        let (_dir, path) = file(
            "[database]\nurl = \"postgres://db/warren\"\n\
             [cluster]\nsecret_file = \"/etc/warren/cluster-secret\"\nhost_name = \"a\"\n",
        );
        let path = path.to_str().expect("utf-8");
        let parsed = parse_args(&[
            "warren", "user", "move", "alice", "--to", "b", "--config", path,
        ])
        .expect("parse");
        let Command::User(crate::cli::UserCommand::Move {
            cluster_secret_file,
            store,
            to,
            ..
        }) = &parsed.cli.command
        else {
            panic!("not user move");
        };
        assert_eq!(to, "b");
        assert_eq!(
            cluster_secret_file.as_deref(),
            Some(std::path::Path::new("/etc/warren/cluster-secret"))
        );
        assert_eq!(store.database_url.as_deref(), Some("postgres://db/warren"));
    }

    #[test]
    fn a_flag_turns_off_what_the_file_turned_on() {
        let (_dir, path) = file("[auth]\nallow_signup = true\n");
        let path = path.to_str().expect("utf-8");
        let signup = |args: &[&str]| {
            let parsed = parse_args(args).expect("parse");
            let Command::Serve(serve) = parsed.cli.command else {
                panic!("not serve");
            };
            serve.allow_signup
        };
        assert!(signup(&["warren", "serve", "--config", path]));
        assert!(!signup(&[
            "warren",
            "serve",
            "--config",
            path,
            "--allow-signup",
            "false"
        ]));
        assert!(signup(&["warren", "serve", "--allow-signup"]));
        assert!(!signup(&["warren", "serve"]));
    }

    fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
        match ConfigFile::parse(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .problems
                .into_iter()
                .map(|p| (p.line, p.key, p.message))
                .collect(),
        }
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let found = problems(
            "[http]\nlisten = \"nowhere\"\nlisen = 1\n[storag]\nx = 1\n[workers]\ncount = [1, 2]\n\
             [auth]\nmode = \"multy\"\n[database]\nurl = \"postgres://u:secret@h/db\"\n",
        );
        let lines: Vec<_> = found
            .iter()
            .map(|(line, key, _)| (*line, key.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (Some(2), "[http] listen"),
                (Some(3), "[http] lisen"),
                (Some(4), "[storag]"),
                (Some(7), "[workers] count"),
                (Some(9), "[auth] mode"),
                (Some(11), "[database] url"),
            ]
        );
        assert!(found[1].2.contains("did you mean listen"), "{found:?}");
        assert!(found[4].2.contains("multi, single"), "{found:?}");
        assert!(
            !format!("{found:?}").contains("secret"),
            "a secret shown: {found:?}"
        );
    }

    #[test]
    fn bad_files_are_problems_not_panics() {
        for text in [
            "[[[",
            "listen = 1",
            "[http]\nlisten = 1979-05-27",
            "[workers]\ncount = 99999999999999999999999",
            "[workers]\ncount = 0x7fffffffffffffff",
            "[workers]\ncount = -1",
            "[storage]\ndefault_quota = 1.5",
            "[http]\nlisten = { a = 1 }",
            "[sandbox]\nenv = { A = [1] }",
            "[log]\nlevel = \"[[\"",
            "\u{0}",
            "[http]\n\"\\u0000\" = 1",
        ] {
            assert!(!problems(text).is_empty(), "{text:?} passed");
        }
    }

    #[test]
    fn apps_are_defined_in_the_file_or_in_their_own_not_both() {
        let text = "[apps]\nmax_running_per_user = 2\n[apps.lab]\ncommand = [\"lab\", \"--socket\", \"{socket}\"]\n";
        let parsed = ConfigFile::parse(text, Path::new("t.toml")).expect("parse");
        let apps = parsed.apps.expect("apps");
        let config =
            crate::apps::AppsConfig::from_table(apps, Path::new("t.toml"), Path::new("/srv"))
                .expect("apps");
        assert_eq!(config.max_running_per_user, 2);
        assert!(config.apps.contains_key("lab"));
        let both = problems("[apps]\nfile = \"/etc/apps.toml\"\n[apps.lab]\ncommand = [\"x\"]\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].2.contains("use one"));
    }

    #[test]
    fn a_reload_tells_what_it_applies_and_what_needs_a_restart() {
        let (_dir, path) = file("[log]\nlevel = \"info\"\n[workers]\ncount = 2\n");
        let path_text = path.to_str().expect("utf-8").to_string();
        let before = parse_args(&["warren", "serve", "--config", &path_text]).expect("parse");
        std::fs::write(&path, "[log]\nlevel = \"debug\"\n[workers]\ncount = 4\n").expect("write");
        let after = parse_args(&["warren", "serve", "--config", &path_text]).expect("parse");
        let (applied, restart) = changes(before.leaf(), after.leaf());
        assert_eq!(
            applied.iter().map(name).collect::<Vec<_>>(),
            ["[log] level"]
        );
        assert_eq!(
            restart.iter().map(name).collect::<Vec<_>>(),
            ["[workers] count"]
        );
    }
}
