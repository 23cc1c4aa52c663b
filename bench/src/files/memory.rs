//! (c): resident memory of warren's processes, read from `/proc`: the master
//! (the `warren-bench serve` child) and its children, the workers.
//!
//! `VmRSS` counts the pages a process has mapped and resident (heap, stacks,
//! the binary, mapped files); the page cache that `read`/`write` go through
//! is not in it. A [`Sampler`] reads it every few milliseconds on a thread
//! of its own while a transfer runs, and keeps the peaks.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The parent pid in the text of `/proc/<pid>/stat`: `pid (comm) state
/// ppid ...`, where `comm` may hold spaces and parentheses (so the fields
/// are counted from the last `)`).
pub fn parent_of(stat: &str) -> Option<u32> {
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status` (`VmRSS:  1234 kB`).
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut fields = line.split_whitespace();
    let value = fields.next()?.parse().ok()?;
    (fields.next()? == "kB").then_some(value)
}

/// `VmRSS` of process `pid`, in KiB; `None` if it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(vm_rss_kib)
}

/// The processes whose parent is `parent`, by pid.
pub fn children_of(parent: u32) -> Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile has no stat to read: not a child.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if parent_of(&stat) == Some(parent) {
            children.push(pid);
        }
    }
    children.sort_unstable();
    Ok(children)
}

/// Resident memory at one instant, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rss {
    pub master_kib: u64,
    /// All workers together.
    pub workers_kib: u64,
}

impl Rss {
    pub fn total_kib(&self) -> u64 {
        self.master_kib + self.workers_kib
    }
}

/// The highest readings over a period, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Peak {
    pub master_kib: u64,
    /// The highest sum of all workers' readings taken together.
    pub workers_kib: u64,
    /// The highest master + workers reading taken together (not the sum of
    /// the two peaks above, which may come at different times).
    pub total_kib: u64,
    pub samples: u64,
}

impl Peak {
    pub fn add(&mut self, rss: Rss) {
        self.master_kib = self.master_kib.max(rss.master_kib);
        self.workers_kib = self.workers_kib.max(rss.workers_kib);
        self.total_kib = self.total_kib.max(rss.total_kib());
        self.samples += 1;
    }

    /// The peaks of both periods.
    pub fn merge(&mut self, other: &Peak) {
        self.master_kib = self.master_kib.max(other.master_kib);
        self.workers_kib = self.workers_kib.max(other.workers_kib);
        self.total_kib = self.total_kib.max(other.total_kib);
        self.samples += other.samples;
    }
}

/// The master and its workers, found again whenever a worker is gone (a
/// restart gives the slot a new process).
#[derive(Debug)]
pub struct Processes {
    master: u32,
    workers: Vec<u32>,
    /// Times the set of workers was found changed.
    pub changes: u32,
}

impl Processes {
    pub fn find(master: u32) -> Result<Self> {
        if rss_kib(master).is_none() {
            bail!("no process {master} (the warren master) to measure");
        }
        let workers = children_of(master)?;
        if workers.is_empty() {
            bail!("the warren master ({master}) has no worker processes");
        }
        Ok(Processes {
            master,
            workers,
            changes: 0,
        })
    }

    pub fn workers(&self) -> &[u32] {
        &self.workers
    }

    /// One reading of every process.
    pub fn sample(&mut self) -> Result<Rss> {
        for attempt in 0..2 {
            let master_kib = rss_kib(self.master)
                .with_context(|| format!("the warren master ({}) is gone", self.master))?;
            let workers: Option<Vec<u64>> = self.workers.iter().map(|&pid| rss_kib(pid)).collect();
            match workers {
                Some(workers) => {
                    return Ok(Rss {
                        master_kib,
                        workers_kib: workers.iter().sum(),
                    })
                }
                None if attempt == 0 => {
                    self.workers = children_of(self.master)?;
                    self.changes += 1;
                }
                None => {}
            }
        }
        bail!("the warren master's worker processes keep changing")
    }
}

/// Samples [`Processes`] on a thread of its own until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Processes, Result<Peak>)>,
}

impl Sampler {
    pub fn start(mut processes: Processes, interval: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut peak = Peak::default();
                let outcome = loop {
                    // Read once more after the stop, so the end counts too.
                    let last = stopping.load(Ordering::Acquire);
                    match processes.sample() {
                        Ok(rss) => peak.add(rss),
                        Err(err) => break Err(err),
                    }
                    if last {
                        break Ok(peak);
                    }
                    std::thread::sleep(interval);
                };
                (processes, outcome)
            })
            .context("cannot start the sampling thread")?;
        Ok(Sampler { stop, thread })
    }

    /// Stops sampling; gives back the processes and the peaks.
    pub fn finish(self) -> Result<(Processes, Peak)> {
        self.stop.store(true, Ordering::Release);
        match self.thread.join() {
            Ok((processes, peak)) => Ok((processes, peak?)),
            Err(_) => bail!("the sampling thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_after_the_command_name() {
        let stat = "4242 (warren-bench) S 4200 4242 4200 0 -1 4194560 1000 0 0 0";
        assert_eq!(parent_of(stat), Some(4200));
        // A command name with spaces and parentheses.
        assert_eq!(parent_of("7 (a) b (c) R 1 7 7 0"), Some(1));
        for bad in ["", "12 (x)", "12 (x) S", "12 (x) S notapid"] {
            assert_eq!(parent_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\twarren-bench\nVmHWM:\t  20480 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        for bad in [
            "Name:\tx\n",
            "VmRSS:\n",
            "VmRSS:\t12 MB\n",
            "VmRSS:\tx kB\n",
        ] {
            assert_eq!(vm_rss_kib(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peaks_are_kept_per_process_and_together() {
        let mut peak = Peak::default();
        peak.add(Rss {
            master_kib: 100,
            workers_kib: 50,
        });
        peak.add(Rss {
            master_kib: 80,
            workers_kib: 90,
        });
        assert_eq!(
            peak,
            Peak {
                master_kib: 100,
                workers_kib: 90,
                total_kib: 170,
                samples: 2
            }
        );
        let mut other = Peak::default();
        other.add(Rss {
            master_kib: 10,
            workers_kib: 200,
        });
        peak.merge(&other);
        assert_eq!(
            (peak.workers_kib, peak.total_kib, peak.samples),
            (200, 210, 3)
        );
    }

    #[test]
    fn this_process_is_found_among_its_parents_children() {
        let me = std::process::id();
        let parent = std::fs::read_to_string(format!("/proc/{me}/stat"))
            .ok()
            .as_deref()
            .and_then(parent_of)
            .expect("own stat");
        assert!(children_of(parent).expect("children").contains(&me));
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn the_sampler_keeps_the_peak_of_a_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let processes = Processes::find(std::process::id()).expect("find");
        assert!(processes.workers().contains(&child.id()));
        let sampler = Sampler::start(processes, Duration::from_millis(5)).expect("start");
        std::thread::sleep(Duration::from_millis(30));
        let (_, peak) = sampler.finish().expect("finish");
        let _ = child.kill();
        let _ = child.wait();
        assert!(peak.samples >= 2, "{peak:?}");
        assert!(peak.master_kib > 0 && peak.workers_kib > 0, "{peak:?}");
        assert!(peak.total_kib >= peak.master_kib.max(peak.workers_kib));
    }
}
