//! Metrics in the Prometheus text format (`GET /metrics`), kept by hand: a few counters and
//! histograms updated where things happen, and gauges read from the store at scrape time.
//!
//! One process-wide registry, because the things measured (store flushes, sandbox runs, effects,
//! transitions, HTTP requests) happen in every module and should not need a handle threaded
//! through each.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

/// Every metric phoenix exports: name, type, help.
pub const CATALOG: &[(&str, &str, &str)] = &[
    (
        "phoenix_faults_reported_total",
        "counter",
        "Fault reports accepted, by source (repeats of open faults included).",
    ),
    (
        "phoenix_transitions_total",
        "counter",
        "Fault state transitions, by target state.",
    ),
    (
        "phoenix_faults_closed_total",
        "counter",
        "Faults that reached a terminal state, by state and reason.",
    ),
    (
        "phoenix_healed_total",
        "counter",
        "Healed faults, by whether a person approved the plan.",
    ),
    (
        "phoenix_time_to_heal_seconds",
        "histogram",
        "Time from a fault's first report to healed.",
    ),
    (
        "phoenix_sandbox_run_seconds",
        "histogram",
        "Wall time of one patch run in the sandbox.",
    ),
    (
        "phoenix_sandbox_runs_total",
        "counter",
        "Patch runs, by outcome (ok or the error code); includes runs for a report that turned out to repeat an open fault.",
    ),
    (
        "phoenix_effects_total",
        "counter",
        "Actions carried out, by kind and outcome.",
    ),
    (
        "phoenix_rollbacks_total",
        "counter",
        "Rollbacks, by outcome.",
    ),
    (
        "phoenix_store_flush_seconds",
        "histogram",
        "Duration of one group commit: writing (and with store_fsync, syncing) a group of writes to the store's journal.",
    ),
    (
        "phoenix_store_checkpoint_seconds",
        "histogram",
        "Duration of one store checkpoint: flushing sled and deleting the journal it covers.",
    ),
    (
        "phoenix_http_requests_total",
        "counter",
        "HTTP requests, by route and status.",
    ),
    (
        "phoenix_auth_failures_total",
        "counter",
        "Requests with a bearer token phoenix does not know (`outcome=\"refused\"`), and requests refused unread because their client address guessed wrong too often (`outcome=\"throttled\"`).",
    ),
    (
        "phoenix_reports_refused_total",
        "counter",
        "Reports refused because an app had too many open faults.",
    ),
    (
        "phoenix_faults_compacted_total",
        "counter",
        "Ended faults deleted after the retention period.",
    ),
    (
        "phoenix_sandbox_fuel_used_total",
        "counter",
        "Fuel (about one unit per wasm instruction) used by patch runs.",
    ),
    (
        "phoenix_open_faults",
        "gauge",
        "Faults not in a terminal state, by state (every open state, zeros included).",
    ),
    (
        "phoenix_approvals_pending",
        "gauge",
        "Faults waiting for a human decision.",
    ),
    (
        "phoenix_breaker_open",
        "gauge",
        "1 when a circuit breaker is open or half-open, by breaker.",
    ),
    (
        "phoenix_webhook_failures_total",
        "counter",
        "Webhook deliveries that failed after every retry.",
    ),
    (
        "phoenix_fleet_lease_seconds",
        "histogram",
        "Duration of one request for a fleet budget lease (taking a slot, or finding all held).",
    ),
    (
        "phoenix_fleet_leases_total",
        "counter",
        "Requests for a fleet budget lease, by outcome: granted, full (every slot held) or error (NATS out of reach).",
    ),
    (
        "phoenix_auto_heal_ratio",
        "gauge",
        "Healed without a person, over all healed (since start).",
    ),
];

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A gauge measured at scrape time: name, labels, value.
pub type Gauge<'a> = (&'static str, Vec<(&'a str, String)>, f64);

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    /// name → rendered labels → value.
    counters: Mutex<BTreeMap<&'static str, BTreeMap<String, f64>>>,
    histograms: Mutex<BTreeMap<&'static str, Histogram>>,
    /// `phoenix_sandbox_fuel_used_total`, added to at every patch run: an atomic, not a map
    /// entry behind the lock (that was ~5% of a warm run).
    fuel_used: std::sync::atomic::AtomicU64,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::with_known_series)
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    render_labels_into(labels, &mut out);
    out
}

/// [`render_labels`] into `out` (cleared first).
fn render_labels_into(labels: &[(&str, &str)], out: &mut String) {
    out.clear();
    for (i, (key, value)) in labels.iter().enumerate() {
        out.push_str(if i == 0 { "{" } else { "," });
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !labels.is_empty() {
        out.push('}');
    }
}

thread_local! {
    /// The labels of a counter update, rendered into a buffer each thread keeps: most updates
    /// (transitions, HTTP requests) find their counter and allocate nothing.
    static LABELS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Metrics {
    /// A registry whose counters with a known, small set of labels start at 0, each series
    /// exported from the first scrape: a `rate()` or an alert over them works before the first
    /// event, and a dashboard shows 0 rather than "no data".
    pub fn with_known_series() -> Metrics {
        use crate::core::fault::{FaultState, Source};
        let metrics = Metrics::default();
        for name in [
            "phoenix_reports_refused_total",
            "phoenix_faults_compacted_total",
        ] {
            metrics.add(name, &[], 0.0);
        }
        for (name, key, values) in [
            (
                "phoenix_rollbacks_total",
                "outcome",
                &["rolled_back", "rollback_failed"][..],
            ),
            (
                "phoenix_auth_failures_total",
                "outcome",
                &["refused", "throttled"],
            ),
            ("phoenix_healed_total", "approved", &["true", "false"]),
            (
                "phoenix_faults_closed_total",
                "state",
                &["healed", "resolved"],
            ),
            (
                "phoenix_fleet_leases_total",
                "outcome",
                &["granted", "full", "error"],
            ),
        ] {
            for value in values {
                metrics.add(name, &[(key, value)], 0.0);
            }
        }
        metrics.add("phoenix_sandbox_runs_total", &[("outcome", "ok")], 0.0);
        for kind in ["exec", "restart", "signal", "write_file", "http"] {
            for outcome in ["ok", "error"] {
                metrics.add(
                    "phoenix_effects_total",
                    &[("kind", kind), ("outcome", outcome)],
                    0.0,
                );
            }
        }
        for source in Source::ALL {
            metrics.add(
                "phoenix_faults_reported_total",
                &[("source", source.as_str())],
                0.0,
            );
        }
        for state in FaultState::OPEN
            .iter()
            .chain(&[FaultState::Healed, FaultState::Resolved])
        {
            metrics.add("phoenix_transitions_total", &[("to", state.name())], 0.0);
        }
        metrics
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    /// Adds `amount` to a counter.
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], amount: f64) {
        LABELS.with_borrow_mut(|rendered| {
            render_labels_into(labels, rendered);
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let series = counters.entry(name).or_default();
            match series.get_mut(rendered.as_str()) {
                Some(value) => *value += amount,
                None => {
                    series.insert(rendered.clone(), amount);
                }
            }
        });
    }

    /// Adds the fuel one patch run used.
    pub fn add_fuel_used(&self, fuel: u64) {
        self.fuel_used
            .fetch_add(fuel, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, seconds: f64) {
        let mut histograms = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = histograms.entry(name).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                histogram.counts[i] += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    fn counter(&self, name: &str, labels: &str) -> f64 {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(l, _)| l.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }

    /// The text exposition, with `gauges` (name, labels, value) measured at scrape time.
    pub fn render(&self, gauges: &[Gauge<'_>], webhook_failures: u64) -> String {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let healed_auto = self.counter("phoenix_healed_total", "approved=\"false\"");
        let healed_all = self.counter("phoenix_healed_total", "");
        let mut out = String::new();
        for (name, kind, help) in CATALOG {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match *kind {
                "histogram" => {
                    let histogram = histograms.get(name).cloned().unwrap_or_default();
                    for (i, bound) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{le=\"{bound}\"}} {}",
                            histogram.counts[i]
                        );
                    }
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
                    let _ = writeln!(out, "{name}_sum {}", histogram.sum);
                    let _ = writeln!(out, "{name}_count {}", histogram.count);
                }
                _ if *name == "phoenix_sandbox_fuel_used_total" => {
                    let fuel = self.fuel_used.load(std::sync::atomic::Ordering::Relaxed);
                    let _ = writeln!(out, "{name} {fuel}");
                }
                _ if *name == "phoenix_webhook_failures_total" => {
                    let _ = writeln!(out, "{name} {webhook_failures}");
                }
                _ if *name == "phoenix_auto_heal_ratio" => {
                    let ratio = if healed_all > 0.0 {
                        healed_auto / healed_all
                    } else {
                        0.0
                    };
                    let _ = writeln!(out, "{name} {ratio}");
                }
                "gauge" => {
                    for (gauge, labels, value) in gauges.iter().filter(|(g, _, _)| g == name) {
                        let labels: Vec<(&str, &str)> =
                            labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        let _ = writeln!(out, "{gauge}{} {value}", render_labels(&labels));
                    }
                }
                _ => {
                    for (labels, value) in counters.get(name).into_iter().flatten() {
                        let _ = writeln!(out, "{name}{labels} {value}");
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.inc(
            "phoenix_effects_total",
            &[("kind", "exec"), ("outcome", "ok")],
        );
        metrics.inc(
            "phoenix_effects_total",
            &[("kind", "exec"), ("outcome", "ok")],
        );
        metrics.inc("phoenix_healed_total", &[("approved", "false")]);
        metrics.inc("phoenix_healed_total", &[("approved", "true")]);
        metrics.observe("phoenix_store_flush_seconds", 0.002);
        metrics.add_fuel_used(40);
        metrics.add_fuel_used(2);
        let text = metrics.render(&[("phoenix_open_faults", vec![], 3.0)], 1);
        assert!(
            text.contains("phoenix_effects_total{kind=\"exec\",outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("phoenix_store_flush_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("phoenix_store_flush_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("phoenix_store_flush_seconds_count 1\n"));
        assert!(text.contains("phoenix_open_faults 3\n"));
        assert!(text.contains("phoenix_auto_heal_ratio 0.5\n"));
        assert!(text.contains("phoenix_webhook_failures_total 1\n"));
        assert!(
            text.contains("phoenix_sandbox_fuel_used_total 42\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE phoenix_time_to_heal_seconds histogram\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            render_labels(&[("route", "a\"b\\c")]),
            "{route=\"a\\\"b\\\\c\"}"
        );
        assert_eq!(
            render_labels(&[("a", "x\ny"), ("b", "z")]),
            "{a=\"x\\ny\",b=\"z\"}"
        );
        assert_eq!(render_labels(&[]), "");
    }
}
