//! Phase one: the plan exactly as written, with the span of every value we may complain about.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo is reported at its line instead of
//! silently falling back to a default.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    pub plan: RawHeader,
    #[serde(default)]
    pub plugins: Vec<RawPluginRef>,
    #[serde(default)]
    pub steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    pub notify: Vec<Spanned<RawNotify>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub on: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub webhook: Option<Spanned<String>>,
    #[serde(default)]
    pub webhook_env: Option<Spanned<String>>,
    #[serde(default)]
    pub webhook_file: Option<Spanned<String>>,
    #[serde(default)]
    pub sns_topic: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub catalog: Option<Spanned<String>>,
    #[serde(default)]
    pub concurrency: Option<Spanned<i64>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
    #[serde(default)]
    pub retry_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub plugin_dirs: Vec<Spanned<String>>,
    #[serde(default)]
    pub metrics_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPluginRef {
    pub path: Spanned<String>,
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub id: Spanned<String>,
    pub plugin: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    #[serde(default)]
    pub restore_after: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
    #[serde(default)]
    pub retry_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
}
