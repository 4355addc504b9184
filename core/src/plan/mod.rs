//! Plans: the TOML file that says what to back up, with which plugins, in which order.
//!
//! Loading has two phases, like ripgrep's flags: [`raw`] is the file as written (serde with
//! spans, unknown keys rejected), and [`Plan`] is the validated result — ids unique, `after`
//! naming real steps, no cycles, references to other steps' outputs pointing at steps that run
//! earlier, durations and numbers in range, steps in an order that respects the graph. Every
//! problem is reported with file, line and column, all of them at once. Checking each step's
//! `config` against its plugin's JSON Schema needs the plugins, so it is a separate call,
//! [`Plan::check_configs`], made before anything runs.

mod location;
mod raw;
pub mod refs;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use location::{Located, PlanError};
use raw::{RawHeader, RawPlan, RawStep};
use refs::Reference;

/// Where a plan's run records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogLocation {
    /// A local folder (the default is the state folder).
    Local(PathBuf),
}

/// A third-party plugin library named by the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// Absolute path of the library.
    pub path: PathBuf,
    /// The expected sha256 of the file, lower-case hex.
    pub sha256: Option<String>,
    span: Range<usize>,
}

/// How a step is run: limits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    /// The longest one attempt may take.
    pub timeout: Duration,
    /// How many times a retryable failure is tried again.
    pub retries: u32,
    /// The first retry's delay; it doubles each time (with jitter), up to a minute.
    pub retry_delay: Duration,
}

impl Default for StepPolicy {
    fn default() -> Self {
        StepPolicy {
            timeout: Duration::from_secs(12 * 3600),
            retries: 2,
            retry_delay: Duration::from_secs(2),
        }
    }
}

/// One validated step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique id in the plan.
    pub id: String,
    /// The plugin that runs it.
    pub plugin: String,
    /// Optional words for humans.
    pub description: Option<String>,
    /// The steps that must finish first (as written).
    pub after: Vec<String>,
    /// Every step this one depends on, directly or not.
    pub ancestors: BTreeSet<String>,
    /// The steps that must finish first in a restore: `restore_after` as written, or `after`.
    /// A restore often goes in another order than the backup (launch the machine, stop the app,
    /// fix it up, put the data back, start the app).
    pub restore_after: Vec<String>,
    /// Every step this one depends on in a restore, directly or not.
    pub restore_ancestors: BTreeSet<String>,
    /// The `config` table as JSON, references unresolved.
    pub config: Value,
    /// Limits and retries.
    pub policy: StepPolicy,
    index: usize,
    plugin_span: Range<usize>,
}

/// A validated plan. Steps are in a topological order that keeps the file's order where the
/// graph allows.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file.
    pub path: PathBuf,
    /// Its folder (relative paths in the plan are relative to it).
    pub dir: PathBuf,
    /// The plan's name (one catalog folder and one lock per name).
    pub name: String,
    /// Optional words for humans.
    pub description: Option<String>,
    /// `sha256:` digest of the file's bytes, recorded with every run.
    pub digest: String,
    /// Where run records go.
    pub catalog: Option<CatalogLocation>,
    /// How many steps may run at once.
    pub concurrency: usize,
    /// Third-party plugin libraries.
    pub plugins: Vec<PluginSpec>,
    /// Folders whose plugin libraries are all loaded.
    pub plugin_dirs: Vec<PathBuf>,
    /// The steps, dependencies first.
    pub steps: Vec<Step>,
    /// Indices into `steps` in restore order (`restore_after` dependencies first).
    restore_order: Vec<usize>,
    source: String,
}

/// What [`Plan::check_configs`] needs from the plugin host.
pub trait SchemaSource {
    /// Whether a plugin of that name is known.
    fn has_plugin(&self, name: &str) -> bool;
    /// The config problems of `config` for plugin `name`: (JSON pointer, message) pairs.
    fn config_problems(&self, name: &str, config: &Value) -> Vec<(String, String)>;
}

struct Problems<'a> {
    file: &'a Path,
    source: &'a str,
    found: Vec<(usize, Located)>,
}

impl Problems<'_> {
    fn add(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let at = span.as_ref().map_or(0, |s| s.start);
        self.found.push((
            at,
            Located::new(self.file, self.source, span, message.into()),
        ));
    }

    fn finish(mut self) -> Result<(), PlanError> {
        if self.found.is_empty() {
            return Ok(());
        }
        self.found.sort_by_key(|(at, _)| *at);
        Err(PlanError {
            problems: self.found.into_iter().map(|(_, p)| p).collect(),
        })
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_duration(problems: &mut Problems<'_>, value: &toml::Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            problems.add(Some(value.span()), "a duration must be longer than zero");
            None
        }
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

fn parse_count(
    problems: &mut Problems<'_>,
    value: &toml::Spanned<i64>,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Option<u32> {
    let n = *value.get_ref();
    if range.contains(&n) {
        Some(n as u32)
    } else {
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

fn policy(
    problems: &mut Problems<'_>,
    base: StepPolicy,
    timeout: &Option<toml::Spanned<String>>,
    retries: &Option<toml::Spanned<i64>>,
    retry_delay: &Option<toml::Spanned<String>>,
) -> StepPolicy {
    StepPolicy {
        timeout: timeout
            .as_ref()
            .and_then(|t| parse_duration(problems, t))
            .unwrap_or(base.timeout),
        retries: retries
            .as_ref()
            .and_then(|r| parse_count(problems, r, 0..=20, "retries"))
            .unwrap_or(base.retries),
        retry_delay: retry_delay
            .as_ref()
            .and_then(|d| parse_duration(problems, d))
            .unwrap_or(base.retry_delay),
    }
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Every string inside a JSON value, with its JSON pointer.
fn strings_with_pointers(value: &Value, pointer: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((pointer, s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strings_with_pointers(v, format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                strings_with_pointers(v, format!("{pointer}/{escaped}"), out);
            }
        }
        _ => {}
    }
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            PlanError::one(Located::new(
                path,
                "",
                None,
                format!("cannot read the plan: {e}"),
            ))
        })?;
        Plan::parse(path, source)
    }

    /// Validates a plan given as text; `path` is used in messages and for relative paths.
    pub fn parse(path: &Path, source: String) -> Result<Plan, PlanError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let raw: RawPlan = toml::from_str(&source).map_err(|e| {
            PlanError::one(Located::new(
                &path,
                &source,
                e.span(),
                e.message().to_owned(),
            ))
        })?;
        let digest = format!("sha256:{}", crate::digest::sha256_hex(source.as_bytes()));
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut problems = Problems {
            file: &path,
            source: &source,
            found: Vec::new(),
        };
        let header = Header::validate(&mut problems, &raw.plan, &dir);
        let plugins = raw
            .plugins
            .iter()
            .filter_map(|p| plugin_spec(&mut problems, p, &dir))
            .collect();
        let (steps, restore_order) = validate_steps(&mut problems, &raw.steps, header.policy);
        problems.finish()?;
        let Header {
            name,
            catalog,
            concurrency,
            plugin_dirs,
            ..
        } = header;
        Ok(Plan {
            dir,
            name,
            description: raw.plan.description.clone(),
            digest,
            catalog,
            concurrency,
            plugins,
            plugin_dirs,
            steps,
            restore_order,
            source,
            path,
        })
    }

    /// The steps in the order a run of this kind takes them: restore order for restores and
    /// drills, backup order otherwise.
    pub fn steps_for(&self, restoring: bool) -> Vec<&Step> {
        if restoring {
            self.restore_order.iter().map(|&i| &self.steps[i]).collect()
        } else {
            self.steps.iter().collect()
        }
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Checks that every step's plugin exists and its `config` satisfies the plugin's schema.
    /// References (`${...}`) stand in string fields; they are checked as the strings they are.
    pub fn check_configs(&self, schemas: &dyn SchemaSource) -> Result<(), PlanError> {
        let mut problems = Problems {
            file: &self.path,
            source: &self.source,
            found: Vec::new(),
        };
        let document = toml::de::DeTable::parse(&self.source).ok();
        for step in &self.steps {
            if !schemas.has_plugin(&step.plugin) {
                problems.add(
                    Some(step.plugin_span.clone()),
                    format!(
                        "unknown plugin `{}` (see `backplan plugins list`; third-party plugins \
                         are named in [[plugins]] or found in plugin_dirs)",
                        step.plugin
                    ),
                );
                continue;
            }
            for (pointer, message) in schemas.config_problems(&step.plugin, &step.config) {
                let span = document
                    .as_ref()
                    .and_then(|doc| config_span(doc.get_ref(), step.index, &pointer))
                    .or_else(|| Some(step.plugin_span.clone()));
                let at = if pointer.is_empty() {
                    String::new()
                } else {
                    format!(
                        " at `{}`",
                        pointer.trim_start_matches('/').replace('/', ".")
                    )
                };
                problems.add(span, format!("step `{}`: config{at}: {message}", step.id));
            }
        }
        problems.finish()
    }
}

/// Finds the span of the value at JSON `pointer` inside step `index`'s `config` table, or of the
/// closest enclosing value that exists (a missing key is reported at its table).
fn config_span(doc: &toml::de::DeTable<'_>, index: usize, pointer: &str) -> Option<Range<usize>> {
    use toml::de::DeValue;
    let steps = doc.get("steps")?;
    let step = steps.get_ref().get(index)?;
    let mut node = step.get_ref().get("config")?;
    for segment in pointer.split('/').skip(1) {
        let key = segment.replace("~1", "/").replace("~0", "~");
        let next = match node.get_ref() {
            DeValue::Array(_) => key
                .parse::<usize>()
                .ok()
                .and_then(|i| node.get_ref().get(i)),
            _ => node.get_ref().get(key.as_str()),
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    Some(node.span())
}

struct Header {
    name: String,
    catalog: Option<CatalogLocation>,
    concurrency: usize,
    policy: StepPolicy,
    plugin_dirs: Vec<PathBuf>,
}

impl Header {
    fn validate(problems: &mut Problems<'_>, raw: &RawHeader, dir: &Path) -> Header {
        let name = raw.name.get_ref().clone();
        if !valid_id(&name) {
            problems.add(
                Some(raw.name.span()),
                "the plan name must be 1-64 letters, digits, '-' or '_' (it names a folder)",
            );
        }
        let catalog = raw.catalog.as_ref().and_then(|c| {
            let text = c.get_ref();
            if text.starts_with("s3://") {
                problems.add(
                    Some(c.span()),
                    "an S3 catalog is not available in this version; use a local folder",
                );
                None
            } else if text.contains("://") {
                problems.add(Some(c.span()), "the catalog must be a local folder");
                None
            } else {
                Some(CatalogLocation::Local(dir.join(text)))
            }
        });
        let concurrency = raw
            .concurrency
            .as_ref()
            .and_then(|c| parse_count(problems, c, 1..=256, "concurrency"))
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
            .map(|d| dir.join(d.get_ref()))
            .collect();
        Header {
            name,
            catalog,
            concurrency,
            policy,
            plugin_dirs,
        }
    }
}

fn plugin_spec(
    problems: &mut Problems<'_>,
    raw: &raw::RawPluginRef,
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
        path: dir.join(raw.path.get_ref()),
        sha256,
        span: raw.path.span(),
    })
}

impl PluginSpec {
    /// Where in the plan the plugin is named (for error messages).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
}

fn validate_steps(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    base: StepPolicy,
) -> (Vec<Step>, Vec<usize>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in raw.iter().enumerate() {
        let id = step.get_ref().id.get_ref().as_str();
        if !valid_id(id) {
            problems.add(
                Some(step.get_ref().id.span()),
                "a step id must be 1-64 letters, digits, '-' or '_'",
            );
        } else if seen.insert(id, i).is_some() {
            problems.add(
                Some(step.get_ref().id.span()),
                format!("step id `{id}` is used twice"),
            );
        }
    }
    if raw.is_empty() {
        problems.add(None, "the plan has no [[steps]]");
    }
    let lists = |step: &RawStep| step.after.clone();
    let restore_lists = |step: &RawStep| {
        step.restore_after
            .clone()
            .unwrap_or_else(|| step.after.clone())
    };
    let edges = graph_edges(problems, raw, &seen, "after", &lists);
    let restore_edges = graph_edges(problems, raw, &seen, "restore_after", &restore_lists);
    let Some(order) = topological_order(problems, raw, &edges, "") else {
        return (Vec::new(), Vec::new());
    };
    let Some(restore_order) = topological_order(problems, raw, &restore_edges, " in restore order")
    else {
        return (Vec::new(), Vec::new());
    };
    let ancestors = all_ancestors(raw, &edges, &order);
    let restore_ancestors = all_ancestors(raw, &restore_edges, &restore_order);
    // Steps are stored in backup order; the restore order is kept as positions in that list.
    let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let restore_order = restore_order.iter().map(|i| position[i]).collect();
    let steps = order
        .into_iter()
        .map(|i| {
            let step = raw[i].get_ref();
            let config = step
                .config
                .as_ref()
                .map(|c| toml_to_json(&toml::Value::Table(c.get_ref().clone())))
                .unwrap_or_else(|| Value::Object(Default::default()));
            check_references(
                problems,
                step,
                &config,
                [&ancestors[i], &restore_ancestors[i]],
                &seen,
            );
            Step {
                id: step.id.get_ref().clone(),
                plugin: step.plugin.get_ref().clone(),
                description: step.description.clone(),
                after: step.after.iter().map(|a| a.get_ref().clone()).collect(),
                ancestors: ancestors[i].clone(),
                restore_after: restore_lists(step)
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
                restore_ancestors: restore_ancestors[i].clone(),
                config,
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
    (steps, restore_order)
}

/// The dependency edges of one ordering (`after` or `restore_after`), with unknown ids
/// reported where they are written.
fn graph_edges(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    ids: &BTreeMap<&str, usize>,
    key: &str,
    lists: &dyn Fn(&RawStep) -> Vec<toml::Spanned<String>>,
) -> Vec<Vec<usize>> {
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
    for (i, step) in raw.iter().enumerate() {
        let written = step.get_ref().restore_after.is_some() || key == "after";
        for dep in lists(step.get_ref()) {
            match ids.get(dep.get_ref().as_str()) {
                Some(&j) if j == i && written => {
                    problems.add(Some(dep.span()), "a step cannot run after itself")
                }
                Some(&j) if j == i => {}
                Some(&j) => edges[i].push(j),
                None if written => problems.add(
                    Some(dep.span()),
                    format!("`{key}` names an unknown step `{}`", dep.get_ref()),
                ),
                None => {}
            }
        }
    }
    edges
}

/// Every step each step depends on, directly or not; `order` has dependencies first.
fn all_ancestors(
    raw: &[toml::Spanned<RawStep>],
    edges: &[Vec<usize>],
    order: &[usize],
) -> Vec<BTreeSet<String>> {
    let mut ancestors: Vec<BTreeSet<String>> = vec![BTreeSet::new(); raw.len()];
    for &i in order {
        let mut set = BTreeSet::new();
        for &j in &edges[i] {
            set.insert(raw[j].get_ref().id.get_ref().clone());
            set.extend(ancestors[j].iter().cloned());
        }
        ancestors[i] = set;
    }
    ancestors
}

/// Kahn's algorithm, taking ready steps in file order. Reports a cycle with its path.
fn topological_order(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    edges: &[Vec<usize>],
    which: &str,
) -> Option<Vec<usize>> {
    let n = raw.len();
    let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in edges.iter().enumerate() {
        for &j in deps {
            dependents[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    if order.len() == n {
        return Some(order);
    }
    // Walk `after` edges among the unfinished steps until one repeats: that is a cycle.
    let stuck: BTreeSet<usize> = (0..n).filter(|i| waiting[*i] > 0).collect();
    let start = *stuck.first()?;
    let mut path = vec![start];
    let mut at = start;
    loop {
        at = *edges[at].iter().find(|j| stuck.contains(j))?;
        if let Some(pos) = path.iter().position(|&p| p == at) {
            let cycle: Vec<&str> = path[pos..]
                .iter()
                .chain(std::iter::once(&at))
                .map(|&i| raw[i].get_ref().id.get_ref().as_str())
                .collect();
            let first = path[pos];
            let step = raw[first].get_ref();
            let written = match &step.restore_after {
                Some(list) if !which.is_empty() => list,
                _ => &step.after,
            };
            let span = written
                .first()
                .map(|a| a.span())
                .unwrap_or_else(|| step.id.span());
            problems.add(
                Some(span),
                format!("the steps form a cycle{which}: {}", cycle.join(" → ")),
            );
            return None;
        }
        path.push(at);
    }
}

fn check_references(
    problems: &mut Problems<'_>,
    step: &RawStep,
    config: &Value,
    ancestors: [&BTreeSet<String>; 2],
    ids: &BTreeMap<&str, usize>,
) {
    let span = step
        .config
        .as_ref()
        .map(|c| c.span())
        .unwrap_or_else(|| step.id.span());
    let mut strings = Vec::new();
    strings_with_pointers(config, String::new(), &mut strings);
    for (_, text) in strings {
        match refs::references(&text) {
            Err(message) => problems.add(Some(span.clone()), message),
            Ok(found) => {
                for reference in found {
                    if let Reference::StepOutput { step: other, .. } = reference {
                        if !ids.contains_key(other.as_str()) {
                            problems.add(
                                Some(span.clone()),
                                format!("{text:?} refers to an unknown step `{other}`"),
                            );
                        } else if !ancestors.iter().any(|a| a.contains(&other)) {
                            problems.add(
                                Some(span.clone()),
                                format!(
                                    "{text:?} uses an output of `{other}`, which does not run \
                                     before `{}`: add it to `after` (or `restore_after`)",
                                    step.id.get_ref()
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

impl Step {
    /// The steps that must finish before this one in a run that restores (or not).
    pub fn deps(&self, restoring: bool) -> &[String] {
        if restoring {
            &self.restore_after
        } else {
            &self.after
        }
    }

    /// Every step this one depends on in a run that restores (or not).
    pub fn ancestors_for(&self, restoring: bool) -> &BTreeSet<String> {
        if restoring {
            &self.restore_ancestors
        } else {
            &self.ancestors
        }
    }
}
