//! `warren user …`: the operator's user management, straight on the
//! database, safe while servers run (they follow the revocation feed and
//! drop the affected sessions within a second).

use crate::auth::password::{self, hash_now};
use crate::cli::{StoreArgs, UserCommand};
use crate::serve::read_secret_file;
use crate::store::{redact_url, AuditEntry, NewUser, Role, Store, User, UserPatch};
use anyhow::{bail, Context};
use prometheus_client::metrics::counter::Counter;
use std::io::IsTerminal;
use std::path::Path;

pub async fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            admin,
            password_file,
            host,
            store,
        } => {
            let store = open(&store).await?;
            if crate::http::check_username(&name).is_err() {
                bail!("{name:?}: usernames are 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit");
            }
            let password = new_password(password_file.as_deref(), &name)?;
            let hash = tokio::task::spawn_blocking(move || hash_now(&password)).await??;
            let role = if admin { Role::Admin } else { Role::User };
            let home_host = store
                .choose_home_host(host.as_deref())
                .await
                .with_context(|| format!("cannot choose {name:?}'s home host"))?;
            let user = store
                .create_user(NewUser {
                    username: &name,
                    password_hash: &hash,
                    role,
                    home_host: home_host.as_deref(),
                })
                .await
                .with_context(|| format!("cannot create {name:?}"))?;
            audit(
                &store,
                "user_created",
                &user,
                Some(format!("role {}", role.as_str())),
            )
            .await;
            println!(
                "created {} ({}, id {}, uid {})",
                user.username,
                role.as_str(),
                user.id,
                user.uid
                    .map_or_else(|| "none".to_string(), |uid| uid.to_string())
            );
        }
        UserCommand::List { store } => {
            let store = open(&store).await?;
            println!(
                "{:<24} {:<6} {:<9} {:<36} {:<10} LAST LOGIN",
                "USERNAME", "ROLE", "STATE", "ID", "UID"
            );
            for user in store.list_users().await? {
                println!(
                    "{:<24} {:<6} {:<9} {:<36} {:<10} {}",
                    user.username,
                    user.role.as_str(),
                    if user.disabled { "disabled" } else { "active" },
                    user.id,
                    user.uid
                        .map_or_else(|| "-".to_string(), |uid| uid.to_string()),
                    user.last_login_at
                        .map_or_else(|| "never".to_string(), crate::http::rfc3339),
                );
            }
        }
        UserCommand::Passwd {
            name,
            password_file,
            store,
        } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            let password = new_password(password_file.as_deref(), &name)?;
            let hash = tokio::task::spawn_blocking(move || hash_now(&password)).await??;
            let patch = UserPatch {
                password_hash: Some(hash),
                ..Default::default()
            };
            change(&store, &user, &patch, "password_reset", None).await?;
            println!(
                "password of {} set; their sessions and tokens ended",
                user.username
            );
        }
        UserCommand::SetRole { name, role, store } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            if user.role == role {
                println!("{} is already {}", user.username, role.as_str());
                return Ok(());
            }
            let patch = UserPatch {
                role: Some(role),
                ..Default::default()
            };
            let detail = Some(format!("{} -> {}", user.role.as_str(), role.as_str()));
            change(&store, &user, &patch, "role_changed", detail).await?;
            println!("{} is now {}", user.username, role.as_str());
        }
        UserCommand::Disable { name, store } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            let patch = UserPatch {
                disabled: Some(true),
                ..Default::default()
            };
            change(&store, &user, &patch, "user_disabled", None).await?;
            println!(
                "{} disabled; their sessions and tokens ended",
                user.username
            );
        }
        UserCommand::Enable { name, store } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            let patch = UserPatch {
                disabled: Some(false),
                ..Default::default()
            };
            change(&store, &user, &patch, "user_enabled", None).await?;
            println!("{} enabled", user.username);
        }
        UserCommand::Unlock { name, store } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            if !store.announce_unlock(user.id).await? {
                bail!("{} was deleted meanwhile", user.username);
            }
            audit(&store, "unlock", &user, None).await;
            println!(
                "{}: login lockouts ended (running servers apply it within a second)",
                user.username
            );
        }
        UserCommand::Move {
            name,
            to,
            cluster_secret_file,
            store,
        } => {
            let file = cluster_secret_file.context(
                "moving a user needs the cluster's secret: --cluster-secret-file \
                 (WARREN_CLUSTER_SECRET_FILE, [cluster] secret_file)",
            )?;
            let secret = crate::cluster::read_secret(&file)?;
            let store = open(&store).await?;
            move_user(&store, &name, &to, &secret).await?;
        }
        UserCommand::Token {
            name,
            label,
            scope,
            expires_in,
            store,
        } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            if user.disabled {
                bail!("{name:?} is disabled: its tokens would be refused");
            }
            let secret = crate::auth::token::new_api_token()?;
            let expires_at = crate::store::now_ms()
                + i64::try_from(expires_in.as_millis()).unwrap_or(i64::MAX / 2);
            let row = store
                .create_operator_token(
                    user.id,
                    &crate::auth::token::hash_token(&secret),
                    &label,
                    &scope,
                    Some(expires_at),
                )
                .await?;
            audit(
                &store,
                "token_created",
                &user,
                Some(format!(
                    "{label:?}, scope {scope}, by the operator (id {})",
                    row.id
                )),
            )
            .await;
            println!("{secret}");
        }
        UserCommand::Delete { name, store } => {
            let store = open(&store).await?;
            let user = find(&store, &name).await?;
            store.delete_user(user.id).await?;
            audit(&store, "user_deleted", &user, None).await;
            println!("{} deleted", user.username);
        }
    }
    Ok(())
}

async fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    let url = args.url()?;
    if args.database_url.is_none() && !args.data_dir.join("warren.db").exists() {
        bail!(
            "no database at {}: pass the server's --data-dir (or --database-url)",
            args.data_dir.join("warren.db").display()
        );
    }
    Ok(Store::open(&url, Counter::default())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&url)))?
        .with_uid_range(args.uid_range))
}

async fn find(store: &Store, name: &str) -> anyhow::Result<User> {
    match store.user_by_name(name).await? {
        Some((user, _)) => Ok(user),
        None => bail!("no user named {name:?}"),
    }
}

async fn change(
    store: &Store,
    user: &User,
    patch: &UserPatch,
    event: &'static str,
    detail: Option<String>,
) -> anyhow::Result<()> {
    store
        .update_user(user.id, patch)
        .await?
        .with_context(|| format!("{} was deleted meanwhile", user.username))?;
    audit(store, event, user, detail).await;
    Ok(())
}

async fn audit(store: &Store, event: &'static str, user: &User, detail: Option<String>) {
    let operator = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let entry = AuditEntry {
        event,
        actor_name: Some(format!("cli:{operator}")),
        subject: Some(user.username.clone()),
        detail,
        ..Default::default()
    };
    tracing::info!(security_event = true, event, subject = %user.username, "security event");
    if let Err(err) = store.insert_audit(&entry).await {
        eprintln!("warning: cannot write the audit log: {err}");
    }
}

/// The new password: from the file, asked twice on a terminal, or one line
/// of standard input.
fn new_password(file: Option<&Path>, name: &str) -> anyhow::Result<String> {
    let password = match file {
        Some(path) => read_secret_file(path)?,
        None if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password(format!("password for {name}: "))?;
            let again = rpassword::prompt_password("again: ")?;
            if first != again {
                bail!("the passwords differ");
            }
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    password::check_policy(&password)?;
    Ok(password)
}

/// How long a move may take (a large directory over a slow link).
const MOVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Asks host `to` to move `name` there (its signed internal route, which
/// pulls the files from the user's home host), and says how it went.
async fn move_user(store: &Store, name: &str, to: &str, secret: &[u8]) -> anyhow::Result<()> {
    use crate::store::HostState;
    let user = find(store, name).await?;
    let Some(from) = user.home_host.clone() else {
        bail!("{name} has no home host: is this database a cluster's?");
    };
    if from == to {
        bail!("{name} is on host {to} already");
    }
    if let Some(moving) = &user.moving_to {
        bail!("{name} is being moved to host {moving} already");
    }
    let host = store
        .host(to)
        .await?
        .with_context(|| format!("no host is named {to} (see GET /api/v1/admin/hosts)"))?;
    if host.state() != HostState::Up {
        bail!("host {to} is not up: a user can only move to a running host");
    }
    println!(
        "moving {name} from host {from} to host {to} ({})...",
        host.url
    );
    let started = std::time::Instant::now();
    let target = format!("/internal/v1/moves/{}", user.id);
    let signed = crate::cluster::Signer::new(secret).sign(
        "cli",
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        crate::store::now_ms(),
        "POST",
        &target,
    );
    let request = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(format!("{}{target}", host.url))
        .header(crate::cluster::FORWARDED_HEADER, signed)
        .body(axum::body::Body::empty())
        .context("cannot build the request")?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let exchange = async {
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach host {to} at {}", host.url))?;
        let status = response.status();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
            .await
            .context("cannot read the answer")?;
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(MOVE_PATIENCE, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("host {to} did not finish within {MOVE_PATIENCE:?}"))??;
    if status != hyper::StatusCode::OK {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = json["error"]["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_string,
        );
        bail!("{name} was not moved ({status}): {message}");
    }
    let outcome: crate::cluster::moving::MoveOutcome = serde_json::from_slice(&body)
        .with_context(|| format!("host {to} answered something unexpected"))?;
    let detail = format!(
        "from {} to {}: {} bytes, {} files",
        outcome.from, outcome.to, outcome.bytes, outcome.files
    );
    audit(store, "user_moved", &user, Some(detail)).await;
    println!(
        "moved {name} from host {} to host {} in {:.1}s: {} files, {} bytes",
        outcome.from,
        outcome.to,
        started.elapsed().as_secs_f64(),
        outcome.files,
        outcome.bytes
    );
    if let Some(warning) = outcome.warning {
        eprintln!("warning: {warning}");
    }
    Ok(())
}
