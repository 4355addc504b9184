//! The plan's metrics, written after every run for node_exporter's textfile collector.
//!
//! The numbers come from the catalog through [`backplan_core::health`], the same facts
//! `backplan status` judges, so an alert and the pager line never disagree. The file is written
//! atomically (a reader never sees half of it) in the exposition format, by `prometheus-client`.
//! Every series carries the plan's name, so many plans can write their own files into one
//! collector folder.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use backplan_core::health::Health;
use backplan_core::record::{RunStatus, StepStatus};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// Registers a gauge family and returns it.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> Gauges {
    let family = Gauges::default();
    registry.register(name, help, family.clone());
    family
}

fn seconds(at: jiff::Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

/// The metrics of `health` in the text exposition format.
pub(crate) fn render(health: &Health) -> String {
    let mut registry = Registry::with_prefix("backplan");
    let run_time = gauges(
        &mut registry,
        "last_run_timestamp_seconds",
        "When the newest finished run of this kind started",
    );
    let run_ok = gauges(
        &mut registry,
        "last_run_success",
        "Whether the newest finished run of this kind succeeded (1) or not (0)",
    );
    let run_duration = gauges(
        &mut registry,
        "last_run_duration_seconds",
        "How long the newest finished run of this kind took",
    );
    let success = gauges(
        &mut registry,
        "step_last_success_timestamp_seconds",
        "When the newest backup in which this step succeeded started",
    );
    let verified = gauges(
        &mut registry,
        "step_last_verified_timestamp_seconds",
        "When the newest verified backup of this step started",
    );
    let step_ok = gauges(
        &mut registry,
        "step_last_backup_success",
        "Whether this step succeeded (1) or not (0) in the newest backup run that included it",
    );
    let step_duration = gauges(
        &mut registry,
        "step_last_success_duration_seconds",
        "How long the newest successful backup of this step took",
    );
    let bytes = gauges(
        &mut registry,
        "step_last_success_bytes",
        "Bytes the newest successful backup of this step reported",
    );
    let files = gauges(
        &mut registry,
        "step_last_success_files",
        "Files the newest successful backup of this step reported (plugins that count files)",
    );
    let ttr = gauges(
        &mut registry,
        "drill_time_to_recovery_seconds",
        "From the start of the newest healthy drill to its first successful health check",
    );
    let plan = || vec![("plan", health.plan.clone())];
    for (kind, run) in &health.last_runs {
        let labels = [plan(), vec![("kind", kind.clone())]].concat();
        run_time.get_or_create(&labels).set(seconds(run.started_at));
        let ok = if run.status == RunStatus::Succeeded {
            1.0
        } else {
            0.0
        };
        run_ok.get_or_create(&labels).set(ok);
        if let Some(duration) = run.duration() {
            run_duration
                .get_or_create(&labels)
                .set(duration.as_secs_f64());
        }
    }
    for step in &health.steps {
        let labels = [plan(), vec![("step", step.step.clone())]].concat();
        if let Some(run) = &step.last_success {
            success.get_or_create(&labels).set(seconds(run.started_at));
            bytes.get_or_create(&labels).set(step.bytes as f64);
        }
        if let Some(run) = &step.last_verified {
            verified.get_or_create(&labels).set(seconds(run.started_at));
        }
        if let Some(status) = step.last_status {
            let ok = if status == StepStatus::Succeeded {
                1.0
            } else {
                0.0
            };
            step_ok.get_or_create(&labels).set(ok);
        }
        if let Some(duration) = step.duration {
            step_duration
                .get_or_create(&labels)
                .set(duration.as_secs_f64());
        }
        if let Some(count) = step.files {
            files.get_or_create(&labels).set(count as f64);
        }
    }
    if let Some(secs) = health.time_to_recovery_secs {
        ttr.get_or_create(&plan()).set(secs);
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// Writes the metrics of `health` to `path`, atomically.
pub(crate) fn write(path: &Path, health: &Health) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    backplan_core::catalog::store::write_atomic(path, render(health).as_bytes())
}
