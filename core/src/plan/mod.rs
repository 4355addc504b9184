//! Plans: the TOML file that says what to back up, with which plugins, in which order.
//!
//! Loading has two phases, like ripgrep's flags: [`raw`] is the file as written (serde with
//! spans, unknown keys rejected), and [`Plan`] is the validated result ([`validate`]) — ids
//! unique, `after` naming real steps, no cycles ([`graph`]), references to other steps' outputs
//! pointing at steps that run earlier ([`refs`]), durations, numbers and paths in range and not
//! empty, steps in an order that respects the graph. Every problem is reported with file, line
//! and column, all of them at once. Checking each step's `config` against its plugin's JSON
//! Schema needs the plugins, so it is a separate call, [`Plan::check_configs`], made before
//! anything runs.
//!
//! Validation is linear in the plan's size (a plan of ten thousand steps checks in well under a
//! second): nothing quadratic, such as every step's set of ancestors, is stored.

pub mod graph;
mod json;
mod location;
mod raw;
pub mod refs;
mod spans;
mod validate;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use graph::Order;
use location::Problems;
pub use location::{Located, PlanError};
use raw::RawPlan;

/// Where a plan's run records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogLocation {
    /// A local folder (the default is the state folder).
    Local(PathBuf),
    /// `s3://BUCKET/PREFIX` on AWS or any S3-compatible endpoint (`AWS_ENDPOINT_URL_S3`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without a trailing `/` (may be empty).
        prefix: String,
    },
}

impl std::fmt::Display for CatalogLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogLocation::Local(dir) => write!(f, "{}", dir.display()),
            CatalogLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            CatalogLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
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

impl PluginSpec {
    /// Where in the plan the plugin is named (for error messages).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
}

/// How a step is run: limits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    /// The longest one attempt may take.
    pub timeout: Duration,
    /// How many times a retryable failure is tried again.
    pub retries: u32,
    /// The first retry's delay; it doubles each time (with jitter), up to a minute (or the
    /// delay itself, if longer).
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

/// When a step runs, given how the steps it runs after ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum When {
    /// Only if every one of them succeeded (the default).
    #[default]
    OnSuccess,
    /// Whatever they did, even when the run is cancelled: start the app again after a stop
    /// hook, release an external lock.
    Always,
    /// Only if one of them did not succeed: clean up, page someone.
    OnFailure,
}

impl When {
    /// The plan's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on-success",
            When::Always => "always",
            When::OnFailure => "on-failure",
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
    /// The steps that must finish first in a restore: `restore_after` as written, or `after`.
    /// A restore often goes in another order than the backup (launch the machine, stop the app,
    /// fix it up, put the data back, start the app).
    pub restore_after: Vec<String>,
    /// The `config` table as JSON, references unresolved.
    pub config: Value,
    /// Limits and retries.
    pub policy: StepPolicy,
    /// When it runs, given how its dependencies ended.
    pub when: When,
    /// Position in the file's `[[steps]]` (for locating config problems).
    index: usize,
    plugin_span: Range<usize>,
}

impl Step {
    /// The steps that must finish before this one in a run of `order`.
    pub fn deps(&self, order: Order) -> &[String] {
        match order {
            Order::Backup => &self.after,
            Order::Restore => &self.restore_after,
        }
    }
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
    /// Where `catalog` is written in the file.
    catalog_span: Option<Range<usize>>,
    /// How many steps may run at once.
    pub concurrency: usize,
    /// Third-party plugin libraries.
    pub plugins: Vec<PluginSpec>,
    /// Folders whose plugin libraries are all loaded.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where to write the plan's metrics after every run (node_exporter's textfile collector).
    pub metrics_file: Option<PathBuf>,
    /// Who hears about runs (and stale backups).
    pub notify: Vec<crate::notify::NotifySpec>,
    /// The steps, dependencies first.
    pub steps: Vec<Step>,
    /// Indices into `steps` in restore order (`restore_after` dependencies first).
    restore_order: Vec<usize>,
    /// Each step's dependencies as indices into `steps`, per order ([`Order::slot`]).
    deps: [Vec<Vec<usize>>; 2],
    /// Step id → index into `steps`.
    by_id: HashMap<String, usize>,
    source: String,
}

/// What [`Plan::check_configs`] needs from the plugin host.
pub trait SchemaSource {
    /// Whether a plugin of that name is known.
    fn has_plugin(&self, name: &str) -> bool;
    /// The config problems of `config` for plugin `name`: (JSON pointer, message) pairs.
    fn config_problems(&self, name: &str, config: &Value) -> Vec<(String, String)>;
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
        let document = toml::de::DeTable::parse(&source).ok();
        let digest = format!("sha256:{}", crate::digest::sha256_hex(source.as_bytes()));
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut problems = Problems::new(&path, &source);
        let header = validate::header(&mut problems, &raw.plan, &dir);
        let plugins = raw
            .plugins
            .iter()
            .filter_map(|p| validate::plugin_spec(&mut problems, p, &dir))
            .collect();
        let notify = raw
            .notify
            .iter()
            .filter_map(|n| validate::notify(&mut problems, n, &dir))
            .collect();
        let steps = validate::steps(
            &mut problems,
            &raw.steps,
            header.policy,
            document.as_ref().map(|d| d.get_ref()),
        );
        problems.finish()?;
        let validate::Steps {
            steps,
            restore_order,
            deps,
        } = steps;
        let by_id = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        Ok(Plan {
            dir,
            name: header.name,
            description: raw.plan.description.clone(),
            digest,
            catalog: header.catalog,
            catalog_span: header.catalog_span,
            concurrency: header.concurrency,
            plugins,
            plugin_dirs: header.plugin_dirs,
            metrics_file: header.metrics_file,
            notify,
            steps,
            restore_order,
            deps,
            by_id,
            source,
            path,
        })
    }

    /// The steps in the order a run of `order` takes them.
    pub fn steps_in(&self, order: Order) -> Vec<&Step> {
        match order {
            Order::Backup => self.steps.iter().collect(),
            Order::Restore => self.restore_order.iter().map(|&i| &self.steps[i]).collect(),
        }
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.by_id.get(id).map(|&i| &self.steps[i])
    }

    /// Every step `step` depends on in `order`, directly or not, in backup order.
    pub fn ancestors(&self, step: &Step, order: Order) -> Vec<&Step> {
        let Some(&at) = self.by_id.get(&step.id) else {
            return Vec::new();
        };
        let mut found = graph::ancestors(&self.deps[order.slot()], at, None);
        found.sort_unstable();
        found.into_iter().map(|i| &self.steps[i]).collect()
    }

    /// A problem with the catalog the plan names (a bucket that cannot be read, a server that
    /// ignores conditional writes), reported at the `catalog` line.
    pub fn catalog_problem(&self, message: impl Into<String>) -> PlanError {
        PlanError::one(Located::new(
            &self.path,
            &self.source,
            self.catalog_span.clone(),
            message.into(),
        ))
    }

    /// Checks that every step's plugin exists and its `config` satisfies the plugin's schema.
    /// References (`${...}`) stand in string fields; they are checked as the strings they are.
    pub fn check_configs(&self, schemas: &dyn SchemaSource) -> Result<(), PlanError> {
        let mut problems = Problems::new(&self.path, &self.source);
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
                    .and_then(|doc| spans::config_span(doc.get_ref(), step.index, &pointer))
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

#[cfg(test)]
mod tests;
