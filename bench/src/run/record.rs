//! What a run measures, as it goes: each operation's HDR histogram and
//! error kinds, the same by the users' worker slot, and one entry per
//! second (from a histogram that is reset every second), which the live
//! progress line and the latency-over-time plot read.

use super::results::{OpStats, Percentiles, Second, SlotStats};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latencies from 1 µs to 10 minutes.
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 600_000_000_000;

fn histogram(significant: u8) -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, significant)
        .context("cannot create a histogram")
}

struct Op {
    latency: Histogram<u64>,
    count: u64,
    errors: u64,
    kinds: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Slot {
    count: u64,
    errors: u64,
    kinds: BTreeMap<String, u64>,
}

struct State {
    ops: BTreeMap<&'static str, Op>,
    total: Op,
    /// By the user's slot (`None`: not learnt); named only at the end, so
    /// that recording a request allocates nothing.
    slots: BTreeMap<Option<u32>, Slot>,
    /// The current second (2 significant digits: per-second figures).
    second: Histogram<u64>,
    second_count: u64,
    second_errors: u64,
    timeline: Vec<Second>,
}

pub struct Recorder {
    start: Instant,
    state: Mutex<State>,
}

impl Op {
    fn new() -> Result<Self> {
        Ok(Op {
            latency: histogram(3)?,
            count: 0,
            errors: 0,
            kinds: BTreeMap::new(),
        })
    }

    fn add(&mut self, ns: u64, error: Option<&str>) {
        self.latency.saturating_record(ns.max(LOWEST_NS));
        self.count += 1;
        if let Some(kind) = error {
            self.errors += 1;
            *self.kinds.entry(kind.to_string()).or_default() += 1;
        }
    }

    fn stats(&self) -> OpStats {
        OpStats {
            count: self.count,
            errors: self.errors,
            errors_by_kind: self.kinds.clone(),
            latency_ms: Percentiles::of(&self.latency),
        }
    }
}

/// What [`Recorder::finish`] hands over.
pub struct Recorded {
    pub total: OpStats,
    pub operations: BTreeMap<String, OpStats>,
    pub slots: BTreeMap<String, SlotStats>,
    pub timeline: Vec<Second>,
}

impl Recorder {
    /// Measuring starts now.
    pub fn new() -> Result<Self> {
        Ok(Recorder {
            start: Instant::now(),
            state: Mutex::new(State {
                ops: BTreeMap::new(),
                total: Op::new()?,
                slots: BTreeMap::new(),
                second: histogram(2)?,
                second_count: 0,
                second_errors: 0,
                timeline: Vec::new(),
            }),
        })
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Seconds since measuring started.
    pub fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// One request of `op` by a user of `slot`, `latency` long, failed with
    /// `error` (a kind) or not.
    pub fn record(
        &self,
        op: &'static str,
        slot: Option<u32>,
        latency: Duration,
        error: Option<&str>,
    ) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        match state.ops.get_mut(op) {
            Some(entry) => entry.add(ns, error),
            None => {
                if let Ok(mut entry) = Op::new() {
                    entry.add(ns, error);
                    state.ops.insert(op, entry);
                }
            }
        }
        let slot = state.slots.entry(slot).or_default();
        slot.count += 1;
        if let Some(kind) = error {
            slot.errors += 1;
            *slot.kinds.entry(kind.to_string()).or_default() += 1;
        }
        // Logins are their own figure (an argon2 hash each, by design
        // slow): "all", and each second of the timeline, are what
        // logged-in users wait for.
        if op != "login" {
            state.total.add(ns, error);
            state.second.saturating_record(ns.max(LOWEST_NS));
            state.second_count += 1;
            if error.is_some() {
                state.second_errors += 1;
            }
        }
    }

    /// A request that was never sent, as `kind` (`backlog`: the harness had
    /// too many in flight; `unfinished`: still running when the run
    /// ended): an error of `op` and of the whole, with no latency (it has
    /// none to add to the percentiles).
    pub fn unsent(&self, op: &'static str, kind: &str, count: u64) {
        if count == 0 {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        for entry in [state.ops.get_mut(op), Some(&mut state.total)]
            .into_iter()
            .flatten()
        {
            entry.count += count;
            entry.errors += count;
            *entry.kinds.entry(kind.to_string()).or_default() += count;
        }
        if !state.ops.contains_key(op) {
            if let Ok(mut entry) = Op::new() {
                entry.count = count;
                entry.errors = count;
                entry.kinds.insert(kind.to_string(), count);
                state.ops.insert(op, entry);
            }
        }
        state.second_count += count;
        state.second_errors += count;
    }

    /// Closes the current second (called once a second by the ticker) and
    /// returns it; `t` is the second it ends in, from the clock (a late tick
    /// does not shift the timeline).
    pub fn roll(&self) -> Option<Second> {
        let now = self.now_s();
        let mut state = self.state.lock().ok()?;
        let t = (now.round() as u32).saturating_sub(1);
        let second = Second {
            t,
            count: state.second_count,
            errors: state.second_errors,
            p50_ms: ms(&state.second, 0.5),
            p99_ms: ms(&state.second, 0.99),
            max_ms: if state.second.is_empty() {
                0.0
            } else {
                state.second.max() as f64 / 1e6
            },
        };
        state.second.reset();
        state.second_count = 0;
        state.second_errors = 0;
        state.timeline.push(second.clone());
        Some(second)
    }

    /// Requests and errors so far.
    pub fn totals(&self) -> (u64, u64) {
        self.state
            .lock()
            .map(|state| (state.total.count, state.total.errors))
            .unwrap_or_default()
    }

    /// Everything measured, with the users of each slot.
    pub fn finish(&self, users_by_slot: &BTreeMap<Option<u32>, u32>) -> Recorded {
        let Ok(state) = self.state.lock() else {
            return Recorded {
                total: OpStats::default(),
                operations: BTreeMap::new(),
                slots: BTreeMap::new(),
                timeline: Vec::new(),
            };
        };
        let mut slots: BTreeMap<String, SlotStats> = users_by_slot
            .iter()
            .map(|(slot, users)| {
                (
                    slot_name(*slot),
                    SlotStats {
                        users: *users,
                        ..SlotStats::default()
                    },
                )
            })
            .collect();
        for (number, slot) in &state.slots {
            let entry = slots.entry(slot_name(*number)).or_default();
            entry.count = slot.count;
            entry.errors = slot.errors;
            entry.errors_by_kind = slot.kinds.clone();
        }
        Recorded {
            total: state.total.stats(),
            operations: state
                .ops
                .iter()
                .map(|(name, op)| (name.to_string(), op.stats()))
                .collect(),
            slots,
            timeline: state.timeline.clone(),
        }
    }
}

/// A slot's name in the results: its number, or `unknown`.
fn slot_name(slot: Option<u32>) -> String {
    slot.map_or_else(|| "unknown".to_string(), |s| s.to_string())
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        0.0
    } else {
        histogram.value_at_quantile(quantile) as f64 / 1e6
    }
}

/// The live line: elapsed, requests/s, errors, p50/p99 of the last seconds.
pub fn progress_line(elapsed: f64, recent: &[Second], total: (u64, u64)) -> String {
    let count: u64 = recent.iter().map(|s| s.count).sum();
    let rate = count as f64 / recent.len().max(1) as f64;
    let weighted = |pick: fn(&Second) -> f64| {
        if count == 0 {
            0.0
        } else {
            recent.iter().map(|s| pick(s) * s.count as f64).sum::<f64>() / count as f64
        }
    };
    let p99 = recent.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
    format!(
        "{elapsed:>6.0} s  {rate:>8.0} req/s  {} requests  {} errors  p50 {:.2} ms  p99 {p99:.2} ms (last {} s)",
        total.0,
        total.1,
        weighted(|s| s.p50_ms),
        recent.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_by_operation_slot_and_second() {
        let recorder = Recorder::new().unwrap();
        recorder.record("read", Some(0), Duration::from_millis(2), None);
        recorder.record("read", Some(1), Duration::from_millis(4), Some("503"));
        recorder.record("write", None, Duration::from_millis(8), Some("timeout"));
        recorder.record("login", Some(0), Duration::from_millis(80), None);
        recorder.unsent("backlog", "backlog", 2);
        let second = recorder.roll().unwrap();
        assert_eq!(
            (second.count, second.errors),
            (5, 4),
            "logins are not in the timeline"
        );
        let recorded = recorder.finish(&BTreeMap::from([(Some(0), 5)]));
        assert_eq!(recorded.total.count, 5);
        assert_eq!(recorded.total.errors_by_kind["backlog"], 2);
        assert_eq!(recorded.operations["backlog"].count, 2);
        assert!(
            (recorded.total.latency_ms.p50 - 4.0).abs() < 0.1,
            "unsent requests pulled the percentiles: {:?}",
            recorded.total.latency_ms
        );
        assert_eq!(recorded.operations["login"].count, 1);
        assert_eq!(recorded.operations["read"].errors_by_kind["503"], 1);
        assert_eq!(recorded.slots["0"].users, 5);
        assert_eq!(recorded.slots["0"].errors, 0);
        assert_eq!(recorded.slots["0"].count, 2);
        assert_eq!(recorded.slots["1"].errors, 1);
        assert_eq!(recorded.slots["unknown"].errors_by_kind["timeout"], 1);
        assert!((recorded.operations["write"].latency_ms.p50 - 8.0).abs() < 0.1);
        assert_eq!(recorded.timeline.len(), 1);
    }
}
