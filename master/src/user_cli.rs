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
