//! The server's processes as seen from this host (`--sample`, chaos by
//! pid, the orphan check): the master, its workers, their memory,
//! descriptors and threads, and chosen series of the server's `/metrics`.
//! All from `/proc`, so these need the harness on the server's host.

use super::client::{Call, Pool};
use super::results::{Growth, ProcessSample, Sample};
use hyper::header::AUTHORIZATION;
use hyper::Method;
use std::collections::BTreeMap;
use std::time::Duration;

/// Gauges of `/metrics` worth watching for growth over a soak.
const METRICS: [&str; 8] = [
    "warren_sessions_active",
    "warren_http_connections_open",
    "warren_ipc_inflight_requests",
    "warren_tasks_running",
    "warren_workers",
    "warren_worker_restarts_total",
    "warren_http_requests_total",
    "warren_db_queries_total",
];

/// `/proc/PID/cmdline`'s arguments.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of `pid` (field 4 of `/proc/PID/stat`, after the command's
/// closing parenthesis, which the command itself may contain).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid of `pid`.
pub fn uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The worker processes of master `master`: `(slot, pid)`.
pub fn workers(master: u32) -> Vec<(Option<u32>, u32)> {
    let mut found: Vec<(Option<u32>, u32)> = all_pids()
        .into_iter()
        .filter(|pid| parent(*pid) == Some(master))
        .filter_map(|pid| {
            let args = cmdline(pid);
            if args.get(1).map(String::as_str) != Some("worker") {
                return None;
            }
            let slot = args
                .iter()
                .position(|arg| arg == "--slot")
                .and_then(|at| args.get(at + 1)?.parse().ok());
            Some((slot, pid))
        })
        .collect();
    found.sort();
    found
}

/// A process's resident memory, open descriptors and threads.
pub fn process(role: &str, slot: Option<u32>, pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count() as u64)
        .unwrap_or(0);
    Some(ProcessSample {
        role: role.to_string(),
        slot,
        pid,
        rss_bytes: field("VmRSS:")? * 1024,
        fds,
        threads: field("Threads:")?,
    })
}

/// The master's pid: a worker's parent, for a worker pid the admin API
/// named that runs on this host (a `worker` whose parent is a `serve`).
pub fn master_of(worker: u32) -> Option<u32> {
    let args = cmdline(worker);
    if args.get(1).map(String::as_str) != Some("worker") {
        return None;
    }
    parent(worker).filter(|master| is_master(*master))
}

/// Whether `pid` is a warren master (`… serve …`).
pub fn is_master(pid: u32) -> bool {
    cmdline(pid).get(1).map(String::as_str) == Some("serve")
}

/// One sample: the master and its workers from `/proc`, and the watched
/// series of `/metrics` (read with `metrics_token` as a bearer if given;
/// left out when it cannot be read).
pub async fn sample(at: f64, master: u32, pool: &Pool, metrics_token: Option<&str>) -> Sample {
    let mut processes: Vec<ProcessSample> = process("master", None, master).into_iter().collect();
    processes.extend(
        workers(master)
            .into_iter()
            .filter_map(|(slot, pid)| process("worker", slot, pid)),
    );
    let mut call = Call::new(Method::GET, "/metrics");
    if let Some(token) = metrics_token {
        call = call.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let metrics = match pool.send(call, None, Duration::from_secs(10)).await {
        Ok(answer) if answer.status.is_success() => {
            let text = String::from_utf8_lossy(&answer.body);
            let mut metrics = BTreeMap::new();
            for name in METRICS {
                let found = crate::http::api::samples(&text, name);
                // NaN and infinities have no place in JSON (nor a trend).
                let found: BTreeMap<String, f64> =
                    found.into_iter().filter(|(_, v)| v.is_finite()).collect();
                if name == "warren_workers" {
                    // By state: how many slots are up, restarting...
                    for (labels, value) in found {
                        metrics.insert(format!("{name}{labels}"), value);
                    }
                } else if !found.is_empty() {
                    metrics.insert(name.to_string(), found.values().sum());
                }
            }
            metrics
        }
        _ => BTreeMap::new(),
    };
    Sample {
        t_s: at,
        processes,
        metrics,
    }
}

/// A sampled figure: its name, how to read it, the least change that counts.
type Field = (&'static str, fn(&ProcessSample) -> u64, f64);

/// Growth of the master's and the workers' (summed) memory, descriptors
/// and threads over the samples from `from_s` on (after warming up): the
/// mean of the last tenth of them against the first tenth, flagged beyond
/// `limit_pct`.
pub fn growth(samples: &[Sample], from_s: f64, limit_pct: f64) -> Vec<Growth> {
    let start = samples
        .iter()
        .position(|sample| sample.t_s >= from_s)
        .unwrap_or(samples.len());
    let samples = &samples[start..];
    if samples.len() < 2 {
        return Vec::new();
    }
    let tenth = (samples.len() / 10).max(1);
    let mut out = Vec::new();
    for role in ["master", "worker"] {
        // With the smallest change that counts: a thread or a few
        // descriptors more are runtime pools breathing, not a leak.
        let fields: [Field; 3] = [
            ("rss_bytes", |p| p.rss_bytes, 0.0),
            ("fds", |p| p.fds, 8.0),
            ("threads", |p| p.threads, 4.0),
        ];
        for (field, pick, floor) in fields {
            let value = |sample: &Sample| -> f64 {
                sample
                    .processes
                    .iter()
                    .filter(|p| p.role == role)
                    .map(|p| pick(p) as f64)
                    .sum()
            };
            let mean = |part: &[Sample]| part.iter().map(value).sum::<f64>() / part.len() as f64;
            let first = mean(&samples[..tenth]);
            let last = mean(&samples[samples.len() - tenth..]);
            let change_pct = if first > 0.0 {
                (last - first) / first * 100.0
            } else {
                0.0
            };
            out.push(Growth {
                series: format!("{}s {field}", role),
                first,
                last,
                change_pct,
                flagged: change_pct > limit_pct && last - first > floor,
            });
        }
    }
    out
}

/// Processes running as one of `uids` (the run's users') that do not
/// descend from `master`: left behind by a worker that died.
pub fn orphans(master: u32, uids: &std::collections::BTreeSet<u32>) -> Vec<u32> {
    let pids = all_pids();
    let parents: BTreeMap<u32, u32> = pids
        .iter()
        .filter_map(|pid| Some((*pid, parent(*pid)?)))
        .collect();
    pids.into_iter()
        .filter(|pid| uid(*pid).is_some_and(|uid| uids.contains(&uid)))
        .filter(|pid| {
            let mut at = *pid;
            for _ in 0..64 {
                match parents.get(&at) {
                    Some(&up) if up == master => return false,
                    Some(&up) if up > 1 => at = up,
                    _ => return true,
                }
            }
            true
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(master_rss: u64, worker_fds: u64) -> Sample {
        let process = |role: &str, rss, fds| ProcessSample {
            role: role.to_string(),
            slot: None,
            pid: 1,
            rss_bytes: rss,
            fds,
            threads: 4,
        };
        Sample {
            t_s: 0.0,
            processes: vec![
                process("master", master_rss, 10),
                process("worker", 100, worker_fds),
                process("worker", 100, worker_fds),
            ],
            metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn growth_compares_the_first_and_last_tenth_and_flags_beyond_the_limit() {
        let mut samples: Vec<Sample> = (0..20).map(|_| sample(1000, 10)).collect();
        samples[18] = sample(1100, 10);
        samples[19] = sample(1100, 10);
        let growth = growth(&samples, 0.0, 5.0);
        assert!(
            super::growth(&samples, 1.0, 5.0).is_empty(),
            "samples before warming up count"
        );
        let master_rss = growth
            .iter()
            .find(|g| g.series == "masters rss_bytes")
            .unwrap();
        assert!((master_rss.change_pct - 10.0).abs() < 1e-9);
        assert!(master_rss.flagged);
        let worker_fds = growth.iter().find(|g| g.series == "workers fds").unwrap();
        assert_eq!(worker_fds.first, 20.0);
        assert!(!worker_fds.flagged);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = std::process::id();
        let sample = process("master", None, me).unwrap();
        assert!(sample.rss_bytes > 0 && sample.fds > 0 && sample.threads > 0);
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
    }
}
