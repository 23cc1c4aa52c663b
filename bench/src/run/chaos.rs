//! `--chaos`: breaking the server on purpose during a run.
//!
//! - `kill-worker:every=2s[,slot=N][,via=signal|api]`: every period, the
//!   slot's worker is killed: `signal` (the default) sends it SIGKILL by
//!   pid (the harness on the server's host), as a crash would; `api` asks
//!   the server for a graceful restart (`POST /api/v1/admin/pool/{slot}/
//!   restart`), which works from anywhere.
//! - `restart-master:at=30s`: SIGTERM to the master at that moment; its
//!   supervisor (systemd's `Restart=`, or `--restart-command`) starts it
//!   again, and the harness waits for `/readyz`.

use super::client::{Call, Pool};
use super::results::ChaosEvent;
use super::soak;
use anyhow::{bail, Context, Result};
use hyper::header::AUTHORIZATION;
use hyper::Method;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    KillWorker {
        every: Duration,
        slot: u32,
        graceful: bool,
    },
    RestartMaster {
        at: Duration,
    },
}

/// Parses one `--chaos` value.
pub fn parse(spec: &str) -> Result<Action> {
    let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
    let mut values = std::collections::BTreeMap::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("--chaos {spec}: {option:?} is not key=value"))?;
        values.insert(key.trim(), value.trim());
    }
    let duration = |key: &str| -> Result<Option<Duration>> {
        values
            .get(key)
            .map(|text| {
                humantime::parse_duration(text)
                    .with_context(|| format!("--chaos {spec}: {key}={text} is not a duration"))
            })
            .transpose()
    };
    let action = match name {
        "kill-worker" => {
            let every = duration("every")?.unwrap_or(Duration::from_secs(2));
            if every < Duration::from_millis(100) {
                bail!("--chaos {spec}: every must be at least 100ms");
            }
            let slot = match values.get("slot") {
                None => 0,
                Some(text) => text
                    .parse()
                    .with_context(|| format!("--chaos {spec}: slot={text} is not a number"))?,
            };
            let graceful = match values.get("via").copied() {
                None | Some("signal") => false,
                Some("api") => true,
                Some(other) => bail!("--chaos {spec}: via={other}: signal or api"),
            };
            Action::KillWorker {
                every,
                slot,
                graceful,
            }
        }
        "restart-master" => Action::RestartMaster {
            at: duration("at")?.with_context(|| format!("--chaos {spec}: needs at=D"))?,
        },
        other => bail!("--chaos {other:?}: kill-worker or restart-master"),
    };
    let known: &[&str] = match action {
        Action::KillWorker { .. } => &["every", "slot", "via"],
        Action::RestartMaster { .. } => &["at"],
    };
    if let Some(key) = values.keys().find(|key| !known.contains(key)) {
        bail!("--chaos {spec}: unknown option {key:?}");
    }
    Ok(action)
}

/// What chaos needs of the run.
pub struct Chaos {
    pub admin: Arc<Pool>,
    pub admin_token: Option<String>,
    /// The master's pid when on this host; a restart updates it.
    pub master: Arc<Mutex<Option<u32>>>,
    pub restart_command: Option<String>,
    pub start: Instant,
    pub events: Arc<Mutex<Vec<ChaosEvent>>>,
}

impl Chaos {
    /// Seconds since the start of measuring.
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Logs an action begun at `at_s`.
    fn log_at(
        &self,
        at_s: f64,
        action: &str,
        slot: Option<u32>,
        pid: Option<u32>,
        outcome: String,
    ) {
        if let Ok(mut events) = self.events.lock() {
            events.push(ChaosEvent {
                at_s,
                action: action.to_string(),
                slot,
                pid,
                outcome,
            });
        }
    }

    fn log(&self, action: &str, slot: Option<u32>, pid: Option<u32>, outcome: String) {
        self.log_at(self.now(), action, slot, pid, outcome);
    }

    fn master(&self) -> Option<u32> {
        self.master.lock().ok().and_then(|m| *m)
    }

    /// Runs `action` until `stop`.
    pub async fn run(self: Arc<Self>, action: Action, stop: CancellationToken) {
        match action {
            Action::KillWorker {
                every,
                slot,
                graceful,
            } => {
                let mut next = Instant::now() + every;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep_until(next.into()) => {}
                    }
                    next += every;
                    if graceful {
                        self.restart_slot(slot).await;
                    } else {
                        self.kill_slot(slot);
                    }
                }
            }
            Action::RestartMaster { at } => {
                tokio::select! {
                    () = stop.cancelled() => (),
                    () = tokio::time::sleep_until((self.start + at).into()) => {
                        self.restart_master().await;
                    }
                }
            }
        }
    }

    fn kill_slot(&self, slot: u32) {
        let Some(master) = self.master() else {
            self.log(
                "kill-worker",
                Some(slot),
                None,
                "no master pid on this host (--master-pid, or via=api)".to_string(),
            );
            return;
        };
        let Some(pid) = soak::workers(master)
            .into_iter()
            .find(|(s, _)| *s == Some(slot))
            .map(|(_, pid)| pid)
        else {
            self.log(
                "kill-worker",
                Some(slot),
                None,
                "the slot has no worker now".to_string(),
            );
            return;
        };
        let outcome = rustix::process::Pid::from_raw(pid as i32)
            .context("pid 0")
            .and_then(|target| {
                rustix::process::kill_process(target, rustix::process::Signal::KILL).context("kill")
            });
        let outcome = match outcome {
            Ok(()) => "done".to_string(),
            Err(err) => format!("SIGKILL failed: {err:#}"),
        };
        self.log("kill-worker", Some(slot), Some(pid), outcome);
    }

    async fn restart_slot(&self, slot: u32) {
        let begun = self.now();
        let Some(token) = &self.admin_token else {
            self.log(
                "kill-worker",
                Some(slot),
                None,
                "via=api needs --admin-token-file".to_string(),
            );
            return;
        };
        let path = format!("/api/v1/admin/pool/{slot}/restart?grace_seconds=1");
        let call = Call::new(Method::POST, &path).header(AUTHORIZATION, format!("Bearer {token}"));
        let outcome = match self.admin.send(call, None, Duration::from_secs(60)).await {
            Ok(answer) if answer.status.is_success() => "done".to_string(),
            Ok(answer) => format!(
                "{} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
            Err(kind) => kind,
        };
        self.log_at(begun, "kill-worker", Some(slot), None, outcome);
    }

    async fn restart_master(&self) {
        let begun = self.now();
        let Some(master) = self.master() else {
            self.log(
                "restart-master",
                None,
                None,
                "no master pid on this host (--master-pid)".to_string(),
            );
            return;
        };
        let term = rustix::process::Pid::from_raw(master as i32)
            .context("pid 0")
            .and_then(|pid| {
                rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("kill")
            });
        if let Err(err) = term {
            self.log(
                "restart-master",
                None,
                Some(master),
                format!("SIGTERM failed: {err:#}"),
            );
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/{master}")).exists() && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(command) = &self.restart_command {
            let spawned = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .spawn();
            if let Err(err) = spawned {
                self.log(
                    "restart-master",
                    None,
                    Some(master),
                    format!("--restart-command: {err}"),
                );
                return;
            }
        }
        // Ready again: /readyz 200 from a new master.
        if !super::wait_ready(&self.admin, Duration::from_secs(120)).await {
            self.log_at(
                begun,
                "restart-master",
                None,
                Some(master),
                "not ready within 120 s".to_string(),
            );
            return;
        }
        // The new master, once its workers are named by the admin API.
        let mut new_master = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while new_master.is_none() && Instant::now() < deadline {
            new_master = super::discover_master(&self.admin, self.admin_token.as_deref()).await;
            if new_master.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let outcome = match new_master {
            Some(_) => "done".to_string(),
            None => "restarted; the new master was not found (sampling, kills and the orphan check stop: give --admin-token-file)".to_string(),
        };
        if let Ok(mut slot) = self.master.lock() {
            *slot = new_master;
        }
        self.log_at(begun, "restart-master", None, Some(master), outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_specs_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse("kill-worker:every=2s").unwrap(),
            Action::KillWorker {
                every: Duration::from_secs(2),
                slot: 0,
                graceful: false
            }
        );
        assert_eq!(
            parse("kill-worker:every=500ms,slot=1,via=api").unwrap(),
            Action::KillWorker {
                every: Duration::from_millis(500),
                slot: 1,
                graceful: true
            }
        );
        assert_eq!(
            parse("restart-master:at=30s").unwrap(),
            Action::RestartMaster {
                at: Duration::from_secs(30)
            }
        );
        for bad in [
            "kill-worker:every=1ms",
            "kill-worker:every=x",
            "kill-worker:slot=a",
            "kill-worker:via=ssh",
            "kill-worker:color=red",
            "restart-master",
            "reboot",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
