//! Prometheus metrics, exposed at `/metrics` in the OpenMetrics text format.

use crate::pool::supervisor::SlotState;
use crate::pool::SlotReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: u32,
}

/// The metrics the pool records on its hot path; cheap to clone.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    restarts: Family<SlotLabels, Counter>,
    ipc_duration: Histogram,
    ipc_inflight: Gauge,
}

impl PoolMetrics {
    pub(crate) fn touch_slot(&self, slot: u32) {
        let _ = self.restarts.get_or_create(&SlotLabels { slot });
    }

    pub(crate) fn count_restart(&self, slot: u32) {
        self.restarts.get_or_create(&SlotLabels { slot }).inc();
    }

    pub(crate) fn observe_call(&self, took: Duration) {
        self.ipc_duration.observe(took.as_secs_f64());
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn inflight_guard(&self) -> InflightGuard {
        self.ipc_inflight.inc();
        InflightGuard(self.ipc_inflight.clone())
    }
}

pub(crate) struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    workers: Family<StateLabels, Gauge>,
    pool: PoolMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let workers = Family::<StateLabels, Gauge>::default();
        registry.register("warren_workers", "Worker slots by state", workers.clone());
        let restarts = Family::<SlotLabels, Counter>::default();
        registry.register(
            "warren_worker_restarts",
            "Times each slot's worker failed and was restarted",
            restarts.clone(),
        );
        // 5 us to ~5 s.
        let ipc_duration = Histogram::new(exponential_buckets(5e-6, 2.0, 21));
        registry.register(
            "warren_ipc_request_duration_seconds",
            "Master-side time of a request to a worker, including any wait for a restart",
            ipc_duration.clone(),
        );
        let ipc_inflight = Gauge::default();
        registry.register(
            "warren_ipc_inflight_requests",
            "Requests sent to workers and not yet answered",
            ipc_inflight.clone(),
        );
        Metrics {
            registry,
            workers,
            pool: PoolMetrics {
                restarts,
                ipc_duration,
                ipc_inflight,
            },
        }
    }

    pub fn pool(&self) -> PoolMetrics {
        self.pool.clone()
    }

    /// The text exposition, with gauges derived from the slots' current state.
    pub fn render(&self, slots: &[SlotReport]) -> String {
        for state in SlotState::ALL {
            let count = slots.iter().filter(|slot| slot.state == state).count();
            self.workers
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(count as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
