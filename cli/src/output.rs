//! What the operator sees: progress bars on a terminal, `tracing` lines elsewhere, and the
//! report at the end of a command.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backplan_core::record::{RunRecord, StepRecord, StepStatus};
use backplan_core::runner::{CheckResult, Observer};
use backplan_plugin_sdk::{PluginError, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to draw bars: stderr is a terminal, no `--json`, no `--no-progress`.
pub(crate) fn bars_wanted(json: bool, no_progress: bool) -> bool {
    !json && !no_progress && std::io::stderr().is_terminal()
}

/// Sets up `tracing` to stderr. With bars, log lines are printed above them.
pub(crate) fn init_logging(verbose: u8, quiet: bool, bars: Option<MultiProgress>) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let writer = move || SuspendingWriter { bars: bars.clone() };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Writes to stderr, hiding the progress bars while it does.
struct SuspendingWriter {
    bars: Option<MultiProgress>,
}

impl Write for SuspendingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.bars {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One bar per running step.
pub(crate) struct BarObserver {
    bars: MultiProgress,
    steps: Mutex<HashMap<String, ProgressBar>>,
}

impl BarObserver {
    /// Bars drawn on stderr.
    pub(crate) fn new(bars: MultiProgress) -> Self {
        bars.set_draw_target(ProgressDrawTarget::stderr());
        BarObserver {
            bars,
            steps: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, step: &str) -> ProgressBar {
        let mut steps = self.steps.lock().unwrap();
        steps
            .entry(step.to_owned())
            .or_insert_with(|| {
                let bar = self.bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
                        .expect("valid template"),
                );
                bar.set_prefix(step.to_owned());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }
}

impl Observer for BarObserver {
    fn step_started(&self, step: &str, attempt: u32) {
        let bar = self.bar(step);
        bar.set_message(if attempt > 1 {
            format!("attempt {attempt}")
        } else {
            "running".into()
        });
    }

    fn step_progress(&self, step: &str, progress: &Progress) {
        let bar = self.bar(step);
        if let Some(total) = progress.total {
            if bar.length() != Some(total) {
                let template = if progress.unit == "bytes" {
                    "{spinner} {prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {wide_msg}"
                } else {
                    "{spinner} {prefix:.bold} [{bar:30}] {pos}/{len} eta {eta} {wide_msg}"
                };
                bar.set_style(
                    ProgressStyle::with_template(template)
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_length(total);
            }
            bar.set_position(progress.done);
        }
        bar.set_message(progress.message.clone());
    }

    fn step_retrying(&self, step: &str, attempt: u32, delay: Duration, error: &PluginError) {
        self.bar(step).set_message(format!(
            "attempt {attempt} failed ({error}); retrying in {delay:.0?}"
        ));
    }

    fn step_finished(&self, step: &StepRecord) {
        if let Some(bar) = self.steps.lock().unwrap().remove(&step.id) {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
        let _ = self.bars.println(step_line(step));
    }
}

/// Progress as `tracing` events, at most one per step every few seconds.
#[derive(Default)]
pub(crate) struct LogObserver {
    last: Mutex<HashMap<String, Instant>>,
}

const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Observer for LogObserver {
    fn step_started(&self, step: &str, attempt: u32) {
        tracing::info!(step, attempt, "step started");
    }

    fn step_progress(&self, step: &str, progress: &Progress) {
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        let finished = progress.total.is_some_and(|t| progress.done >= t);
        if !finished
            && last
                .get(step)
                .is_some_and(|t| now - *t < LOG_PROGRESS_EVERY)
        {
            return;
        }
        last.insert(step.to_owned(), now);
        tracing::info!(
            step,
            done = progress.done,
            total = progress.total,
            unit = %progress.unit,
            "{}",
            progress.message
        );
    }

    fn step_finished(&self, step: &StepRecord) {
        tracing::info!(step = %step.id, status = ?step.status, "{}", step_line(step));
    }
}

fn mark(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "ok  ",
        StepStatus::Failed => "FAIL",
        StepStatus::TimedOut => "TIME",
        StepStatus::Cancelled => "STOP",
        StepStatus::Skipped => "skip",
        StepStatus::Pending | StepStatus::Running => "... ",
    }
}

/// One line per step: mark, id, plugin, duration, summary or error.
pub(crate) fn step_line(step: &StepRecord) -> String {
    let duration = step
        .duration()
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_default();
    let text = match &step.error {
        Some(error) => error.to_string(),
        None => step.summary.clone(),
    };
    format!(
        "  {} {:<20} {:<12} {:>7}  {}",
        mark(step.status),
        step.id,
        step.plugin,
        duration,
        text
    )
}

/// The report printed after a run.
pub(crate) fn run_report(record: &RunRecord, record_location: &str) -> String {
    let duration = record
        .finished_at
        .and_then(|end| end.duration_since(record.started_at).try_into().ok())
        .map(|d: Duration| format!(" in {:.1}s", d.as_secs_f64()))
        .unwrap_or_default();
    let mut out = format!(
        "{kind:?} run {id} of plan `{plan}`: {status:?}{interrupted}{dry}{duration}\n",
        kind = record.kind,
        id = record.run_id,
        plan = record.plan.name,
        status = record.status,
        interrupted = if record.interrupted {
            " (interrupted)"
        } else {
            ""
        },
        dry = if record.dry_run { " (dry run)" } else { "" },
    );
    if let Some(why) = &record.stopped_because {
        out.push_str(&format!("  {why}\n"));
    }
    if let Some(at) = record.rebuilt {
        out.push_str(&format!(
            "  rebuilt on {at} by `catalog rebuild` from what the backups left\n"
        ));
    }
    for step in &record.steps {
        out.push_str(&step_line(step));
        out.push('\n');
        for warning in &step.warnings {
            out.push_str(&format!("         warning: {warning}\n"));
        }
    }
    if let Some(drill) = &record.drill {
        match (drill.healthy, drill.time_to_recovery_secs) {
            (true, Some(ttr)) => out.push_str(&format!(
                "  health {} answered: time to recovery {ttr:.1}s\n",
                drill.health_target
            )),
            _ => out.push_str(&format!(
                "  health {}: {}\n",
                drill.health_target,
                drill.health_error.as_deref().unwrap_or("not checked")
            )),
        }
        for teardown in &drill.teardown {
            let mark = if teardown.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!(
                "  {mark} teardown {:<11} {}\n",
                teardown.step, teardown.message
            ));
        }
    }
    out.push_str(&format!("record: {record_location}\n"));
    out
}

/// The report printed by `plan check`.
pub(crate) fn check_report(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for check in results {
        let (mark, text) = match &check.result {
            Ok(output) => ("ok  ", output.summary.clone()),
            Err(error) => ("FAIL", error.to_string()),
        };
        out.push_str(&format!("  {mark} {:<20} {text}\n", check.step));
        if let Ok(output) = &check.result {
            for warning in &output.warnings {
                out.push_str(&format!("         warning: {warning}\n"));
            }
        }
    }
    out
}

/// The steps under `status`'s line: each one's newest successful and verified backup and their
/// ages.
pub(crate) fn status_report(
    health: &backplan_core::health::Health,
    now: jiff::Timestamp,
) -> String {
    let ago = |run: &Option<backplan_core::health::RunFact>| match run {
        Some(run) => {
            let age: Duration = now
                .duration_since(run.started_at)
                .try_into()
                .unwrap_or_default();
            let hours = age.as_secs() / 3600;
            format!(
                "{} ({}h{:02}m ago)",
                run.run_id,
                hours,
                age.as_secs() / 60 % 60
            )
        }
        None => "never".into(),
    };
    let mut out = String::new();
    for step in &health.steps {
        out.push_str(&format!(
            "  {:<20} last success {:<44} last verified {}\n",
            step.step,
            ago(&step.last_success),
            ago(&step.last_verified)
        ));
    }
    out
}
