//! Prometheus metrics of a compute node: input and publish volume and time, image pulls, container
//! start latency, executions by engine and outcome.
//!
//! [`ComputeMetrics`] is a cheap handle (every family is reference counted inside); the node, its
//! executors and its input preparer share one. The process that serves `/metrics` calls
//! [`ComputeMetrics::register`] with its registry; names are prefixed `compute_` (the registry adds
//! its own prefix, e.g. `caravel_`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms … ~9 min.
fn transfer_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// 5 ms … ~40 s.
fn start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublisherLabel {
    pub publisher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineOutcomeLabels {
    pub engine: String,
    pub outcome: String,
}

/// How an image was made available for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// It was on the node already.
    Local,
    /// It was pulled from a registry.
    Pulled,
    /// It was absent and could not be pulled.
    Failed,
}

impl PullOutcome {
    fn as_str(self) -> &'static str {
        match self {
            PullOutcome::Local => "local",
            PullOutcome::Pulled => "pulled",
            PullOutcome::Failed => "failed",
        }
    }
}

/// The compute node's metric families. Clones share the same series.
#[derive(Clone, Debug)]
pub struct ComputeMetrics {
    input_bytes: Family<SourceLabel, Counter>,
    input_seconds: HistFamily<SourceLabel>,
    publish_bytes: Family<PublisherLabel, Counter>,
    publish_seconds: HistFamily<PublisherLabel>,
    image_pulls: Family<OutcomeLabel, Counter>,
    container_start_seconds: Histogram,
    executions: Family<EngineOutcomeLabels, Counter>,
    outbox_pending: Gauge,
    outbox_last_seq: Gauge,
    outbox_write_errors: Gauge,
}

impl Default for ComputeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ComputeMetrics {
    pub fn new() -> Self {
        ComputeMetrics {
            input_bytes: Family::default(),
            input_seconds: Family::new_with_constructor(transfer_histogram),
            publish_bytes: Family::default(),
            publish_seconds: Family::new_with_constructor(transfer_histogram),
            image_pulls: Family::default(),
            container_start_seconds: start_histogram(),
            executions: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_last_seq: Gauge::default(),
            outbox_write_errors: Gauge::default(),
        }
    }

    /// Adds every family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "compute_input_bytes",
            "Bytes of inputs prepared, by source type",
            self.input_bytes.clone(),
        );
        registry.register(
            "compute_input_duration_seconds",
            "Time to prepare one input, by source type",
            self.input_seconds.clone(),
        );
        registry.register(
            "compute_publish_bytes",
            "Bytes of results published, by publisher type",
            self.publish_bytes.clone(),
        );
        registry.register(
            "compute_publish_duration_seconds",
            "Time to publish one execution's results, by publisher type",
            self.publish_seconds.clone(),
        );
        registry.register(
            "compute_image_pulls",
            "Docker images needed by runs, by outcome (local, pulled, failed)",
            self.image_pulls.clone(),
        );
        registry.register(
            "compute_container_start_duration_seconds",
            "Time from creating a container to its start",
            self.container_start_seconds.clone(),
        );
        registry.register(
            "compute_executions",
            "Executions finished on this node, by engine and outcome (completed, failed, cancelled)",
            self.executions.clone(),
        );
        registry.register(
            "compute_outbox_pending",
            "Execution reports made on this node and not yet committed by the orchestrators (the durable outbox)",
            self.outbox_pending.clone(),
        );
        registry.register(
            "compute_outbox_last_seq",
            "Sequence number of this node's last report",
            self.outbox_last_seq.clone(),
        );
        registry.register(
            "compute_outbox_write_errors",
            "Outbox writes that failed since start (those reports were kept in memory only)",
            self.outbox_write_errors.clone(),
        );
    }

    /// The outbox after a change: pending reports, last sequence number, failed writes.
    pub fn outbox(&self, pending: usize, last_seq: u64, write_errors: u64) {
        self.outbox_pending.set(pending as i64);
        self.outbox_last_seq.set(last_seq as i64);
        self.outbox_write_errors.set(write_errors as i64);
    }

    /// Pending reports as last set (for tests and status pages).
    pub fn outbox_pending(&self) -> i64 {
        self.outbox_pending.get()
    }

    pub fn input_prepared(&self, source: &str, bytes: u64, took: Duration) {
        let l = SourceLabel {
            source: source.to_string(),
        };
        self.input_bytes.get_or_create(&l).inc_by(bytes);
        self.input_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    pub fn published(&self, publisher: &str, bytes: u64, took: Duration) {
        let l = PublisherLabel {
            publisher: publisher.to_string(),
        };
        self.publish_bytes.get_or_create(&l).inc_by(bytes);
        self.publish_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    pub fn image_pull(&self, outcome: PullOutcome) {
        self.image_pulls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    pub fn container_started(&self, took: Duration) {
        self.container_start_seconds.observe(took.as_secs_f64());
    }

    /// An execution refused by the admission policy (`outcome="refused"`).
    pub fn execution_refused(&self) {
        self.execution_finished("any", "refused");
    }

    pub fn execution_finished(&self, engine: &str, outcome: &str) {
        self.executions
            .get_or_create(&EngineOutcomeLabels {
                engine: engine.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Count of executions finished with `engine` and `outcome` (for tests and status pages).
    pub fn executions_finished(&self, engine: &str, outcome: &str) -> u64 {
        self.executions
            .get_or_create(&EngineOutcomeLabels {
                engine: engine.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }

    /// Image pulls with `outcome` so far.
    pub fn image_pulls(&self, outcome: PullOutcome) -> u64 {
        self.image_pulls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_string(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_families_encode_with_their_labels() {
        let m = ComputeMetrics::new();
        m.input_prepared("s3", 10, Duration::from_millis(3));
        m.published("local", 5, Duration::from_millis(1));
        m.image_pull(PullOutcome::Failed);
        m.container_started(Duration::from_millis(20));
        m.execution_finished("docker", "completed");
        let mut r = Registry::with_prefix("caravel");
        m.clone().register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("caravel_compute_input_bytes_total{source=\"s3\"} 10"),
            "{text}"
        );
        assert!(text.contains("caravel_compute_image_pulls_total{outcome=\"failed\"} 1"));
        assert!(text.contains(
            "caravel_compute_executions_total{engine=\"docker\",outcome=\"completed\"} 1"
        ));
        assert!(text.contains("caravel_compute_container_start_duration_seconds_count 1"));
        assert_eq!(m.executions_finished("docker", "completed"), 1);
    }
}
