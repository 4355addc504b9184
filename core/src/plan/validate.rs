//! Phase two: the raw plan checked value by value and step by step into a [`Plan`]'s parts.
//!
//! Every number has bounds and every path or name must be non-empty: a plan is a file an
//! operator edits by hand, and `concurrency = 9223372036854775807` or `catalog = ""` is a
//! mistake to report at its line, not a value to act on.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use toml::Spanned;

use super::graph::{self, Order};
use super::json::{strings_with_pointers, toml_to_json};
use super::location::Problems;
use super::raw::{RawHeader, RawNotify, RawPluginRef, RawStep};
use super::refs::{self, Reference};
use super::spans::config_span;
use super::{CatalogLocation, PluginSpec, Step, StepPolicy, When};
use crate::notify::{Event, NotifySpec, Secret, Target};

/// The longest a step's attempt may be given.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest first retry delay.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// What the `[plan]` table says.
pub(super) struct Header {
    pub name: String,
    pub catalog: Option<CatalogLocation>,
    pub catalog_span: Option<std::ops::Range<usize>>,
    pub concurrency: usize,
    pub policy: StepPolicy,
    pub plugin_dirs: Vec<PathBuf>,
    pub metrics_file: Option<PathBuf>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn duration(
    problems: &mut Problems<'_>,
    value: &Spanned<String>,
    max: Duration,
) -> Option<Duration> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if d.is_zero() => {
            problems.add(Some(value.span()), "a duration must be longer than zero");
            None
        }
        Ok(d) if d > max => {
            problems.add(
                Some(value.span()),
                format!(
                    "{:?} is longer than the most allowed here, {}",
                    value.get_ref(),
                    humantime::format_duration(max)
                ),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.add(
                Some(value.span()),
                format!(
                    "{:?} is not a duration ({e}); write e.g. \"90s\", \"15m\", \"2h\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn count(
    problems: &mut Problems<'_>,
    value: &Spanned<i64>,
    range: RangeInclusive<u32>,
    what: &str,
) -> Option<u32> {
    let n = *value.get_ref();
    match u32::try_from(n) {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            problems.add(
                Some(value.span()),
                format!(
                    "{what} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }
}

/// A path the plan names: not empty, relative to the plan's folder.
fn path(
    problems: &mut Problems<'_>,
    value: &Spanned<String>,
    dir: &Path,
    what: &str,
) -> Option<PathBuf> {
    if value.get_ref().trim().is_empty() {
        problems.add(Some(value.span()), format!("{what} must not be empty"));
        return None;
    }
    Some(dir.join(value.get_ref()))
}

fn policy(
    problems: &mut Problems<'_>,
    base: StepPolicy,
    timeout: &Option<Spanned<String>>,
    retries: &Option<Spanned<i64>>,
    retry_delay: &Option<Spanned<String>>,
) -> StepPolicy {
    StepPolicy {
        timeout: timeout
            .as_ref()
            .and_then(|t| duration(problems, t, MAX_TIMEOUT))
            .unwrap_or(base.timeout),
        retries: retries
            .as_ref()
            .and_then(|r| count(problems, r, 0..=20, "retries"))
            .unwrap_or(base.retries),
        retry_delay: retry_delay
            .as_ref()
            .and_then(|d| duration(problems, d, MAX_RETRY_DELAY))
            .unwrap_or(base.retry_delay),
    }
}

/// Validates the `[plan]` table.
pub(super) fn header(problems: &mut Problems<'_>, raw: &RawHeader, dir: &Path) -> Header {
    let name = raw.name.get_ref().clone();
    if !valid_id(&name) {
        problems.add(
            Some(raw.name.span()),
            "the plan name must be 1-64 letters, digits, '-' or '_' (it names a folder)",
        );
    }
    let catalog = raw.catalog.as_ref().and_then(|c| {
        let text = c.get_ref();
        if let Some(rest) = text.strip_prefix("s3://") {
            match s3_location(rest) {
                Ok(location) => Some(location),
                Err(message) => {
                    problems.add(Some(c.span()), message);
                    None
                }
            }
        } else if text.contains("://") {
            problems.add(
                Some(c.span()),
                "the catalog must be a local folder or s3://BUCKET/PREFIX",
            );
            None
        } else {
            path(problems, c, dir, "the catalog").map(CatalogLocation::Local)
        }
    });
    let concurrency = raw
        .concurrency
        .as_ref()
        .and_then(|c| count(problems, c, 1..=256, "concurrency"))
        .map_or(4, |c| c as usize);
    let policy = policy(
        problems,
        StepPolicy::default(),
        &raw.timeout,
        &raw.retries,
        &raw.retry_delay,
    );
    let plugin_dirs = raw
        .plugin_dirs
        .iter()
        .filter_map(|d| path(problems, d, dir, "a plugin folder"))
        .collect();
    let metrics_file = raw
        .metrics_file
        .as_ref()
        .and_then(|m| path(problems, m, dir, "the metrics file"));
    Header {
        metrics_file,
        name,
        catalog,
        catalog_span: raw.catalog.as_ref().map(|c| c.span()),
        concurrency,
        policy,
        plugin_dirs,
    }
}

/// `BUCKET/PREFIX` (after `s3://`) as a catalog location: a valid bucket name, and a prefix of
/// plain segments (no empty ones, no `.` or `..`).
fn s3_location(rest: &str) -> Result<CatalogLocation, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(format!(
            "{bucket:?} is not an S3 bucket name (3-63 lower-case letters, digits, '-' or '.'); \
             write s3://BUCKET/PREFIX"
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "the catalog prefix {prefix:?} has an empty, `.` or `..` segment"
        ));
    }
    Ok(CatalogLocation::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Validates one `[[notify]]` entry: known events, exactly one target.
pub(super) fn notify(
    problems: &mut Problems<'_>,
    raw: &Spanned<RawNotify>,
    dir: &Path,
) -> Option<NotifySpec> {
    let entry = raw.get_ref();
    let mut on = Vec::new();
    for event in entry.on.get_ref() {
        match event.get_ref().as_str() {
            "success" => on.push(Event::Success),
            "partial" => on.push(Event::Partial),
            "failure" => on.push(Event::Failure),
            "stale" => on.push(Event::Stale),
            other => problems.add(
                Some(event.span()),
                format!("{other:?} is not an event: use success, partial, failure or stale"),
            ),
        }
    }
    if entry.on.get_ref().is_empty() {
        problems.add(Some(entry.on.span()), "`on` must name at least one event");
    }
    let targets = [
        &entry.webhook,
        &entry.webhook_env,
        &entry.webhook_file,
        &entry.sns_topic,
    ];
    if targets.iter().filter(|t| t.is_some()).count() != 1 {
        problems.add(
            Some(raw.span()),
            "a [[notify]] entry needs exactly one of webhook, webhook_env, webhook_file, sns_topic",
        );
        return None;
    }
    let nonempty = |problems: &mut Problems<'_>, value: &Spanned<String>, what: &str| {
        let text = value.get_ref().trim();
        if text.is_empty() {
            problems.add(Some(value.span()), format!("{what} must not be empty"));
            None
        } else {
            Some(text.to_owned())
        }
    };
    let target = if let Some(url) = &entry.webhook {
        let url = nonempty(problems, url, "webhook")
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
        if url.is_none() {
            problems.add(
                entry.webhook.as_ref().map(|u| u.span()),
                "webhook must be an http:// or https:// URL (keep a secret one in webhook_env or webhook_file)",
            );
        }
        Target::Webhook(Secret::Plain(url?))
    } else if let Some(name) = &entry.webhook_env {
        Target::Webhook(Secret::Env(nonempty(problems, name, "webhook_env")?))
    } else if let Some(file) = &entry.webhook_file {
        Target::Webhook(Secret::File(path(problems, file, dir, "webhook_file")?))
    } else {
        let arn = entry.sns_topic.as_ref()?;
        let text = nonempty(problems, arn, "sns_topic")?;
        if !text.starts_with("arn:") || text.split(':').count() != 6 {
            problems.add(
                Some(arn.span()),
                format!("{text:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"),
            );
            return None;
        }
        Target::Sns { topic_arn: text }
    };
    Some(NotifySpec { on, target })
}

/// Validates one `[[plugins]]` entry.
pub(super) fn plugin_spec(
    problems: &mut Problems<'_>,
    raw: &RawPluginRef,
    dir: &Path,
) -> Option<PluginSpec> {
    let sha256 = match &raw.sha256 {
        Some(pin) => {
            let hex = pin
                .get_ref()
                .trim_start_matches("sha256:")
                .to_ascii_lowercase();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.add(Some(pin.span()), "sha256 must be 64 hex digits");
                return None;
            }
            Some(hex)
        }
        None => None,
    };
    Some(PluginSpec {
        path: path(problems, &raw.path, dir, "a plugin's path")?,
        sha256,
        span: raw.path.span(),
    })
}

/// The validated steps, in backup order, with the restore order and both orders' dependencies
/// as indices into `steps`.
pub(super) struct Steps {
    pub steps: Vec<Step>,
    pub restore_order: Vec<usize>,
    pub deps: [Vec<Vec<usize>>; 2],
}

/// Validates the `[[steps]]`: ids, both orders' graphs, each step's policy and config, and
/// the references in its config. `document` gives the spans inside config tables.
pub(super) fn steps(
    problems: &mut Problems<'_>,
    raw: &[Spanned<RawStep>],
    base: StepPolicy,
    document: Option<&toml::de::DeTable<'_>>,
) -> Steps {
    let empty = Steps {
        steps: Vec::new(),
        restore_order: Vec::new(),
        deps: [Vec::new(), Vec::new()],
    };
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in raw.iter().enumerate() {
        let id = step.get_ref().id.get_ref().as_str();
        if !valid_id(id) {
            problems.add(
                Some(step.get_ref().id.span()),
                "a step id must be 1-64 letters, digits, '-' or '_'",
            );
        } else if ids.insert(id, i).is_some() {
            problems.add(
                Some(step.get_ref().id.span()),
                format!("step id `{id}` is used twice"),
            );
        }
    }
    if raw.is_empty() {
        problems.add(None, "the plan has no [[steps]]");
    }
    let edges = Order::BOTH.map(|order| graph::edges(problems, raw, &ids, order));
    let Some(order) = graph::topological_order(problems, raw, &edges[0], Order::Backup) else {
        return empty;
    };
    let Some(restore_order) = graph::topological_order(problems, raw, &edges[1], Order::Restore)
    else {
        return empty;
    };
    // Steps are stored in backup order; everything else is kept as positions in that list.
    let mut position = vec![0; raw.len()];
    for (p, &i) in order.iter().enumerate() {
        position[i] = p;
    }
    let deps = edges.each_ref().map(|edges| {
        order
            .iter()
            .map(|&i| edges[i].iter().map(|&j| position[j]).collect())
            .collect::<Vec<Vec<usize>>>()
    });
    let graph = Graph {
        ids: &ids,
        position: &position,
        deps: &deps,
        document,
    };
    let steps = order
        .iter()
        .map(|&i| {
            let step = raw[i].get_ref();
            let config = config(problems, step, i, document);
            graph.check_references(problems, step, i, &config);
            Step {
                id: step.id.get_ref().clone(),
                plugin: step.plugin.get_ref().clone(),
                description: step.description.clone(),
                after: step.after.iter().map(|a| a.get_ref().clone()).collect(),
                restore_after: Order::Restore
                    .written(step)
                    .0
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
                config,
                when: when(problems, step),
                policy: policy(
                    problems,
                    base,
                    &step.timeout,
                    &step.retries,
                    &step.retry_delay,
                ),
                index: i,
                plugin_span: step.plugin.span(),
            }
        })
        .collect();
    Steps {
        steps,
        restore_order: restore_order.iter().map(|&i| position[i]).collect(),
        deps,
    }
}

/// The step's `when`: `on-success` (the default), `always` or `on-failure`.
fn when(problems: &mut Problems<'_>, step: &RawStep) -> When {
    let Some(raw) = &step.when else {
        return When::OnSuccess;
    };
    match raw.get_ref().as_str() {
        "on-success" => When::OnSuccess,
        "always" => When::Always,
        "on-failure" => When::OnFailure,
        other => {
            problems.add(
                Some(raw.span()),
                format!("when = {other:?}: write \"on-success\", \"always\" or \"on-failure\""),
            );
            When::OnSuccess
        }
    }
}

/// The step's `config` as JSON; NaN and infinities are reported where they are written.
fn config(
    problems: &mut Problems<'_>,
    step: &RawStep,
    index: usize,
    document: Option<&toml::de::DeTable<'_>>,
) -> Value {
    let Some(table) = &step.config else {
        return Value::Object(Default::default());
    };
    let mut non_finite = Vec::new();
    let config = toml_to_json(
        &toml::Value::Table(table.get_ref().clone()),
        "",
        &mut non_finite,
    );
    for pointer in non_finite {
        let span = document
            .and_then(|doc| config_span(doc, index, &pointer))
            .unwrap_or_else(|| table.span());
        problems.add(
            Some(span),
            format!(
                "step `{}`: config at `{}`: NaN and infinity are not numbers a plugin can use",
                step.id.get_ref(),
                pointer.trim_start_matches('/').replace('/', ".")
            ),
        );
    }
    config
}

/// What reference checks look up: ids, positions in backup order, both orders' dependencies,
/// and the spans of config values.
struct Graph<'a> {
    ids: &'a BTreeMap<&'a str, usize>,
    position: &'a [usize],
    deps: &'a [Vec<Vec<usize>>; 2],
    document: Option<&'a toml::de::DeTable<'a>>,
}

impl Graph<'_> {
    /// Reports malformed references in the config of the step at raw `index`, and references to
    /// outputs of steps that do not run before it in either order, at the string holding them.
    fn check_references(
        &self,
        problems: &mut Problems<'_>,
        step: &RawStep,
        index: usize,
        config: &Value,
    ) {
        let mut strings = Vec::new();
        strings_with_pointers(config, String::new(), &mut strings);
        for (pointer, text) in strings {
            let span = self
                .document
                .and_then(|doc| config_span(doc, index, &pointer))
                .or_else(|| step.config.as_ref().map(|c| c.span()))
                .unwrap_or_else(|| step.id.span());
            let found = match refs::references(&text) {
                Ok(found) => found,
                Err(message) => {
                    problems.add(Some(span), message);
                    continue;
                }
            };
            for reference in found {
                let Reference::StepOutput { step: other, .. } = reference else {
                    continue;
                };
                let Some(&raw_other) = self.ids.get(other.as_str()) else {
                    problems.add(
                        Some(span.clone()),
                        format!("{text:?} refers to an unknown step `{other}`"),
                    );
                    continue;
                };
                if !self.runs_before(self.position[raw_other], self.position[index]) {
                    problems.add(
                        Some(span.clone()),
                        format!(
                            "{text:?} uses an output of `{other}`, which does not run before \
                             `{}`: add it to `after` (or `restore_after`)",
                            step.id.get_ref()
                        ),
                    );
                }
            }
        }
    }

    /// Whether step `earlier` is an ancestor of step `later` in either order (positions).
    fn runs_before(&self, earlier: usize, later: usize) -> bool {
        self.deps.iter().any(|deps| {
            let mut wanted = BTreeSet::from([earlier]);
            graph::ancestors(deps, later, Some(&mut wanted));
            wanted.is_empty()
        })
    }
}
