//! The results of `warren-bench files`: a table for people, JSON for tools,
//! and the targets of issue #15 (which raised issue #4's) judged against
//! the figures.

use super::memory::{Peak, Rss};
use crate::http::report::Series;
use crate::report::{per_second_of, ratio, render, target_cell, thousands, Machine, Target};
use serde::Serialize;

/// (a): warren's 1 KiB GET throughput over the bare handler's, at least.
pub const TARGET_SMALL_FILE_RATIO: f64 = 0.6;
/// (b): upload throughput over the local copy's, at least.
pub const TARGET_UPLOAD_RATIO: f64 = 0.6;
/// (b): download throughput over the local copy's, at least.
pub const TARGET_DOWNLOAD_RATIO: f64 = 0.8;
/// (c): master + worker resident memory may grow by less than this while
/// a file is transferred (the issue states it for a 1 GiB file).
pub const TARGET_RSS_INCREASE_KIB: u64 = 64 * 1024;
/// The file size the issue states (c) for, in MiB.
pub const ISSUE_SIZE_MIB: u64 = 1024;

#[derive(Debug, Serialize)]
pub struct Settings {
    /// Measuring time of each series of (a).
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Alternating slices per series in (a).
    pub slices: u32,
    /// Keep-alive connections of (a).
    pub concurrency: usize,
    /// Users (each with its own 1 KiB file) over (a)'s connections.
    pub users: usize,
    pub workers: u32,
    /// The file of (b) and (c).
    pub size_mib: u64,
    pub repetitions: u32,
    /// Frames of the upload's body.
    pub upload_chunk_bytes: usize,
    /// Buffer of the local copy's read + write loop.
    pub copy_buffer_bytes: usize,
    /// Whether each timed write of (b) was preceded by an untimed write and
    /// removal of as many bytes (`--prime`).
    pub prime: bool,
    /// (c): time between two readings of `/proc/<pid>/status`.
    pub sample_interval_ms: u64,
    /// Filesystem of warren's data dir and of the local copy (one temporary
    /// directory holds both).
    pub filesystem: String,
    /// Threads of the load generator's tokio runtime.
    pub bench_threads: usize,
}

/// One repetition of (b), with (c)'s readings during it.
#[derive(Debug, Clone, Serialize)]
pub struct Repetition {
    pub upload_seconds: f64,
    pub download_seconds: f64,
    /// read + write loop, then fsync.
    pub copy_seconds: f64,
    /// `std::fs::copy` (in the kernel), then fsync.
    pub std_copy_seconds: f64,
    /// Just before the upload.
    pub idle: Rss,
    pub upload_peak: Peak,
    pub download_peak: Peak,
}

/// Throughputs in MB/s (10^6 bytes a second).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    pub upload: f64,
    pub download: f64,
    pub copy: f64,
    pub std_copy: f64,
}

impl Rates {
    pub fn of(bytes: u64, repetition: &Repetition) -> Self {
        let rate = |seconds: f64| {
            if seconds > 0.0 {
                bytes as f64 / seconds / 1e6
            } else {
                0.0
            }
        };
        Rates {
            upload: rate(repetition.upload_seconds),
            download: rate(repetition.download_seconds),
            copy: rate(repetition.copy_seconds),
            std_copy: rate(repetition.std_copy_seconds),
        }
    }

    /// Each figure's own median over the repetitions.
    pub fn median(all: &[Rates]) -> Rates {
        let of = |pick: fn(&Rates) -> f64| median(all.iter().map(pick).collect());
        Rates {
            upload: of(|r| r.upload),
            download: of(|r| r.download),
            copy: of(|r| r.copy),
            std_copy: of(|r| r.std_copy),
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count; 0
/// for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

/// (c) over all repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub worker_processes: usize,
    /// Before the first upload.
    pub idle: Rss,
    /// Highest readings during any upload / any download.
    pub upload_peak: Peak,
    pub download_peak: Peak,
    /// Highest master + workers reading (taken together) during any
    /// transfer, minus `idle`'s: the figure the target is judged on.
    pub increase_kib: u64,
    pub master_increase_kib: u64,
    pub workers_increase_kib: u64,
    /// Times the set of worker processes changed (a restart): the figures
    /// then do not stand.
    pub worker_changes: u32,
}

impl Memory {
    pub fn new(
        worker_processes: usize,
        idle: Rss,
        repetitions: &[Repetition],
        worker_changes: u32,
    ) -> Self {
        let (mut upload_peak, mut download_peak) = (Peak::default(), Peak::default());
        for repetition in repetitions {
            upload_peak.merge(&repetition.upload_peak);
            download_peak.merge(&repetition.download_peak);
        }
        let highest = |pick: fn(&Peak) -> u64| pick(&upload_peak).max(pick(&download_peak));
        Memory {
            worker_processes,
            idle,
            increase_kib: highest(|p| p.total_kib).saturating_sub(idle.total_kib()),
            master_increase_kib: highest(|p| p.master_kib).saturating_sub(idle.master_kib),
            workers_increase_kib: highest(|p| p.workers_kib).saturating_sub(idle.workers_kib),
            upload_peak,
            download_peak,
            worker_changes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FilesReport {
    pub machine: Machine,
    pub settings: Settings,
    /// (a) warren and the bare handler.
    pub small_file_warren: Series,
    pub small_file_bare: Series,
    /// (b): the file's size.
    pub size_bytes: u64,
    pub repetitions: Vec<Repetition>,
    /// (b): each figure's median over the repetitions.
    pub median_mb_per_s: Rates,
    /// (c)
    pub memory: Memory,
    pub targets: Vec<Target>,
}

impl FilesReport {
    pub fn new(
        settings: Settings,
        small_file_warren: Series,
        small_file_bare: Series,
        repetitions: Vec<Repetition>,
        memory: Memory,
    ) -> Self {
        let size_bytes = settings.size_mib << 20;
        let rates: Vec<Rates> = repetitions
            .iter()
            .map(|repetition| Rates::of(size_bytes, repetition))
            .collect();
        let median = Rates::median(&rates);
        let mut targets = Vec::new();
        let factor = small_file_warren.per_second / small_file_bare.per_second;
        let clean = small_file_warren.clean() && small_file_bare.clean();
        targets.push(Target {
            name: "(a) 1 KiB file GET throughput, warren / bare".into(),
            target: format!(">= {TARGET_SMALL_FILE_RATIO:.2}x"),
            measured: if clean {
                times(factor, TARGET_SMALL_FILE_RATIO)
            } else {
                "errors".into()
            },
            met: clean && factor >= TARGET_SMALL_FILE_RATIO,
        });
        let size = settings.size_mib;
        for (name, rate, goal) in [
            ("upload", median.upload, TARGET_UPLOAD_RATIO),
            ("download", median.download, TARGET_DOWNLOAD_RATIO),
        ] {
            let factor = rate / median.copy;
            let measured = !repetitions.is_empty() && median.copy > 0.0;
            targets.push(Target {
                name: format!("(b) {size} MiB {name} throughput / local copy"),
                target: format!(">= {goal:.2}x"),
                measured: if measured {
                    times(factor, goal)
                } else {
                    "not measured".into()
                },
                met: measured && factor >= goal,
            });
        }
        let stands = memory.worker_changes == 0 && !repetitions.is_empty();
        targets.push(Target {
            name: format!("(c) master + workers RSS increase, {size} MiB transfers"),
            target: format!("< {}", mib(TARGET_RSS_INCREASE_KIB)),
            measured: if stands {
                mib(memory.increase_kib)
            } else {
                "a worker restarted".into()
            },
            met: stands && memory.increase_kib < TARGET_RSS_INCREASE_KIB,
        });
        FilesReport {
            machine: Machine::current(),
            settings,
            small_file_warren,
            small_file_bare,
            size_bytes,
            repetitions,
            median_mb_per_s: median,
            memory,
            targets,
        }
    }

    pub fn table(&self) -> String {
        let s = &self.settings;
        let dash = || "-".to_string();
        let mut rows: Vec<Vec<String>> = vec![vec![
            "figure".into(),
            "warren".into(),
            "reference".into(),
            "ratio".into(),
            "target".into(),
        ]];
        let (warren, bare) = (&self.small_file_warren, &self.small_file_bare);
        rows.push(vec![
            format!("(a) GET 1 KiB file, {} connections", s.concurrency),
            per_second_of(warren.per_second, "req/s"),
            per_second_of(bare.per_second, "req/s"),
            times(warren.per_second / bare.per_second, TARGET_SMALL_FILE_RATIO),
            target_cell(&self.targets, "(a)"),
        ]);
        rows.push(vec![
            "    latency p50 / p99".into(),
            p50_p99(warren),
            p50_p99(bare),
            ratio(warren.latency.p99_ns as f64, bare.latency.p99_ns as f64),
            dash(),
        ]);
        let m = &self.median_mb_per_s;
        let size = s.size_mib;
        rows.push(vec![
            format!("(b) upload {size} MiB (PUT, streamed)"),
            mb_per_s(m.upload),
            mb_per_s(m.copy),
            times(m.upload / m.copy, TARGET_UPLOAD_RATIO),
            target_cell(&self.targets, &format!("(b) {size} MiB upload")),
        ]);
        rows.push(vec![
            format!("    download {size} MiB (GET, checked)"),
            mb_per_s(m.download),
            mb_per_s(m.copy),
            times(m.download / m.copy, TARGET_DOWNLOAD_RATIO),
            target_cell(&self.targets, &format!("(b) {size} MiB download")),
        ]);
        rows.push(vec![
            "    std::fs::copy + fsync (information)".into(),
            dash(),
            mb_per_s(m.std_copy),
            dash(),
            dash(),
        ]);
        let memory = &self.memory;
        let three =
            |idle: u64, up: u64, down: u64| format!("{} / {} / {}", mib(idle), mib(up), mib(down));
        rows.push(vec![
            "(c) RSS master: idle / upload / download peak".into(),
            three(
                memory.idle.master_kib,
                memory.upload_peak.master_kib,
                memory.download_peak.master_kib,
            ),
            dash(),
            dash(),
            dash(),
        ]);
        rows.push(vec![
            format!(
                "    {} workers, summed: idle / upload / download",
                memory.worker_processes
            ),
            three(
                memory.idle.workers_kib,
                memory.upload_peak.workers_kib,
                memory.download_peak.workers_kib,
            ),
            dash(),
            dash(),
            dash(),
        ]);
        rows.push(vec![
            "    master + workers: idle / upload / download".into(),
            three(
                memory.idle.total_kib(),
                memory.upload_peak.total_kib,
                memory.download_peak.total_kib,
            ),
            dash(),
            dash(),
            dash(),
        ]);
        rows.push(vec![
            format!(
                "    increase (master {} + workers {})",
                plus_mib(memory.master_increase_kib),
                plus_mib(memory.workers_increase_kib)
            ),
            plus_mib(memory.increase_kib),
            dash(),
            dash(),
            target_cell(&self.targets, "(c)"),
        ]);

        let mut text = format!(
            "warren-bench files: {} CPUs, kernel {}; warren with {} workers, data on {}; (a) {} connections as {} user{}, {} s per series (+{} s warm-up), {} alternating slices; (b) a {} MiB file, {} repetitions\n\n",
            self.machine.cpus,
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            s.workers,
            s.filesystem,
            s.concurrency,
            s.users,
            if s.users == 1 { "" } else { "s" },
            s.seconds,
            s.warmup_seconds,
            s.slices,
            size,
            s.repetitions,
        );
        text.push_str(&render(&rows));
        text.push_str(&format!(
            "\n(a): GET /api/v1/files/bench/1k.bin with a bearer token, back to back on keep-alive connections; reference: a bare axum \
             handler answering the same 1,024 bytes from memory, given the same requests; every body is checked; ratio: warren / bare \
             (throughput), p99 / p99 (latency)\n\
             (b): MB/s = 10^6 bytes/s, each figure the median of its {} repetitions; upload: a PUT whose body is made on demand in {} MiB \
             chunks, timed from the send to warren's answer (after its fsync); download: a GET read chunk by chunk, every byte compared \
             with what was sent; reference: a local copy of a file as large on the same filesystem, read + write with a {} MiB buffer \
             then fsync; ratio: warren / copy; {}\n\
             (c): VmRSS of the master and of its worker processes every {} ms during each transfer ({} readings); idle: just before \
             the first upload, on a warren that has served only the setup; increase: the highest master + workers reading (taken \
             together) minus idle\n",
            s.repetitions,
            s.upload_chunk_bytes >> 20,
            s.copy_buffer_bytes >> 20,
            if s.prime {
                "before each upload and each copy, as many bytes were written to a scratch file and removed, untimed, so that \
                 each timed write finds the same page cache (--prime false to skip)"
            } else {
                "no priming of the page cache (--prime false): the copies' figures depend on what ran before them"
            },
            s.sample_interval_ms,
            thousands(memory.upload_peak.samples + memory.download_peak.samples),
        ));
        if size != ISSUE_SIZE_MIB {
            text.push_str(&format!(
                "     the issue states (c) for a {ISSUE_SIZE_MIB} MiB file: run with --size-mib {ISSUE_SIZE_MIB} for its figure\n"
            ));
        }
        if memory.worker_changes > 0 {
            text.push_str(&format!(
                "warning: the worker processes changed {} time(s) during (b): a worker restarted\n",
                memory.worker_changes
            ));
        }
        text.push_str(
            "\n(b) by repetition, MB/s: upload / download / read+write copy / std::fs::copy\n",
        );
        for (index, repetition) in self.repetitions.iter().enumerate() {
            let r = Rates::of(self.size_bytes, repetition);
            text.push_str(&format!(
                "  {}: {} / {} / {} / {}\n",
                index + 1,
                mb_per_s(r.upload),
                mb_per_s(r.download),
                mb_per_s(r.copy),
                mb_per_s(r.std_copy)
            ));
        }
        text.push_str("\nerrors:\n");
        for (name, figure) in [("(a) warren", warren), ("(a) bare", bare)] {
            text.push_str(&format!(
                "  {name:<11} {} requests: {}\n",
                thousands(figure.requests),
                figure.errors.describe()
            ));
        }
        text.push_str(&format!(
            "  (b)         {} transfers and {} copies, all complete and checked\n",
            2 * self.repetitions.len(),
            2 * self.repetitions.len()
        ));
        text
    }
}

/// `value` as `0.48x`, with a third decimal when two would round a figure
/// below `target` up to it (`0.497x`, not a missed `0.50x`).
pub fn times(value: f64, target: f64) -> String {
    let two = format!("{value:.2}");
    if value < target && two.parse::<f64>().is_ok_and(|shown| shown >= target) {
        format!("{value:.3}x")
    } else {
        format!("{two}x")
    }
}

fn p50_p99(series: &Series) -> String {
    format!(
        "{} / {}",
        crate::report::nanos(series.latency.p50_ns as f64),
        crate::report::nanos(series.latency.p99_ns as f64)
    )
}

fn mb_per_s(rate: f64) -> String {
    per_second_of(rate, "MB/s")
}

/// KiB as MiB, one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn plus_mib(kib: u64) -> String {
    format!("+{}", mib(kib))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::load::{histogram, Outcome};
    use std::time::Duration;

    fn series(requests: u64, errors: u64) -> Series {
        let mut outcome = Outcome::new().unwrap();
        outcome.completed = requests;
        outcome.elapsed = Duration::from_secs(1);
        outcome.latency = histogram().unwrap();
        for _ in 0..requests {
            outcome.latency.record(100_000).unwrap();
        }
        if errors > 0 {
            outcome.errors.status.insert(503, errors);
        }
        Series::of(&outcome)
    }

    fn settings(size_mib: u64) -> Settings {
        Settings {
            seconds: 10.0,
            warmup_seconds: 1.0,
            slices: 10,
            concurrency: 64,
            users: 1,
            workers: 2,
            size_mib,
            repetitions: 3,
            upload_chunk_bytes: 1 << 20,
            copy_buffer_bytes: 1 << 20,
            prime: true,
            sample_interval_ms: 10,
            filesystem: "ext4".into(),
            bench_threads: 2,
        }
    }

    fn peak(master_kib: u64, workers_kib: u64) -> Peak {
        let mut peak = Peak::default();
        peak.add(Rss {
            master_kib,
            workers_kib,
        });
        peak
    }

    /// A repetition: seconds per figure; the master's upload peak in KiB.
    fn repetition(up: f64, down: f64, copy: f64, master_peak: u64) -> Repetition {
        Repetition {
            upload_seconds: up,
            download_seconds: down,
            copy_seconds: copy,
            std_copy_seconds: copy / 2.0,
            idle: Rss {
                master_kib: 10_000,
                workers_kib: 20_000,
            },
            upload_peak: peak(master_peak, 21_000),
            download_peak: peak(master_peak - 500, 22_000),
        }
    }

    #[test]
    fn a_ratio_just_below_its_target_does_not_look_met() {
        assert_eq!(times(0.497, 0.5), "0.497x");
        assert_eq!(times(0.5, 0.5), "0.50x");
        assert_eq!(times(0.4949, 0.5), "0.49x");
        assert_eq!(times(1.2345, 0.5), "1.23x");
        assert_eq!(times(0.0, 0.5), "0.00x");
    }

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn rates_are_megabytes_a_second_each_with_its_own_median() {
        let size = 100 << 20;
        let reps = [
            repetition(1.0, 0.5, 2.0, 11_000),
            repetition(2.0, 0.25, 1.0, 11_000),
            repetition(4.0, 1.0, 4.0, 11_000),
        ];
        let rates: Vec<Rates> = reps.iter().map(|r| Rates::of(size, r)).collect();
        let mb = size as f64 / 1e6;
        assert_eq!(rates[0].upload, mb);
        assert_eq!(
            Rates::median(&rates),
            Rates {
                upload: mb / 2.0,
                download: mb * 2.0,
                copy: mb / 2.0,
                std_copy: mb,
            }
        );
    }

    #[test]
    fn memory_is_judged_on_the_highest_reading_over_idle() {
        let reps = [
            repetition(1.0, 1.0, 1.0, 12_000),
            repetition(1.0, 1.0, 1.0, 15_000),
        ];
        let memory = Memory::new(2, reps[0].idle, &reps, 0);
        assert_eq!(memory.upload_peak.master_kib, 15_000);
        assert_eq!(memory.download_peak.workers_kib, 22_000);
        // 14,500 + 22,000 at most together, over 30,000 idle.
        assert_eq!(memory.increase_kib, 6_500);
        assert_eq!(memory.master_increase_kib, 5_000);
        assert_eq!(memory.workers_increase_kib, 2_000);
        // Less than idle (memory given back) is no increase.
        let low = Memory::new(
            2,
            Rss {
                master_kib: 99_999,
                workers_kib: 99_999,
            },
            &reps,
            0,
        );
        assert_eq!(low.increase_kib, 0);
    }

    #[test]
    fn targets_are_judged_against_the_figures() {
        let reps = vec![
            repetition(1.0, 1.0, 1.5, 12_000),
            repetition(1.0, 1.0, 1.5, 12_000),
        ];
        let memory = Memory::new(2, reps[0].idle, &reps, 0);
        let report = FilesReport::new(settings(256), series(600, 0), series(1000, 0), reps, memory);
        let met: Vec<bool> = report.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [true, true, true, true]);
        assert_eq!(report.targets[1].measured, "1.50x");
        assert_eq!(report.targets[3].measured, "3.4 MiB");

        // Slow transfers, 64 MiB more, errors in (a), a worker restarted.
        let reps = vec![repetition(4.0, 3.1, 1.5, 10_000 + 64 * 1024)];
        let memory = Memory::new(2, reps[0].idle, &reps, 0);
        assert_eq!(memory.increase_kib, 64 * 1024 + 1_500);
        let report = FilesReport::new(
            settings(1024),
            series(1000, 1),
            series(1000, 0),
            reps.clone(),
            memory,
        );
        let met: Vec<bool> = report.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [false, false, false, false]);
        assert_eq!(report.targets[0].measured, "errors");
        let restarted = Memory::new(2, reps[0].idle, &reps[..0], 1);
        let report = FilesReport::new(settings(8), series(9, 0), series(10, 0), reps, restarted);
        assert!(!report.targets[3].met);
        assert_eq!(report.targets[3].measured, "a worker restarted");
    }

    #[test]
    fn the_table_has_every_figure() {
        let reps = vec![repetition(1.0, 0.5, 2.0, 12_000)];
        let memory = Memory::new(2, reps[0].idle, &reps, 0);
        let report = FilesReport::new(settings(256), series(600, 0), series(1000, 0), reps, memory);
        let table = report.table();
        for needle in [
            "(a) GET 1 KiB file, 64 connections",
            "600 req/s",
            "1,000 req/s",
            "0.60x",
            ">= 0.60x (met)",
            "(b) upload 256 MiB",
            "268 MB/s",
            "537 MB/s",
            "134 MB/s",
            "2.00x",
            "9.8 MiB / 11.7 MiB / 11.2 MiB",
            "+3.4 MiB",
            "< 64.0 MiB (met)",
            "run with --size-mib 1024",
            "1: 268 MB/s / 537 MB/s / 134 MB/s / 268 MB/s",
            "1,000 requests: none",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["targets"].as_array().unwrap().len(), 4);
        assert_eq!(json["memory"]["increase_kib"], 3_500);
        assert_eq!(json["size_bytes"], 256u64 << 20);
    }
}
