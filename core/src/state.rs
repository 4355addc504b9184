//! Where backplan keeps local state: each step's state folder (`<root>/<plan>/steps/<step>`,
//! always here), and the catalog of runs when the plan does not name one (`<root>/catalog`).
//!
//! `--state-dir` or `BACKPLAN_STATE_DIR` wins; then `$XDG_STATE_HOME/backplan`; then
//! `~/.local/state/backplan`; as a last resort `/var/lib/backplan`.

use std::path::{Path, PathBuf};

use crate::plan::{CatalogLocation, Plan};

/// The state root, from an explicit choice or the environment.
pub fn state_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_owned();
    }
    if let Some(dir) = std::env::var_os("BACKPLAN_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("backplan");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/backplan");
    }
    PathBuf::from("/var/lib/backplan")
}

/// Where the plan's catalog is: the plan's own choice, or the folder `<state root>/catalog`.
pub fn catalog_location(plan: &Plan, state_root: &Path) -> CatalogLocation {
    plan.catalog
        .clone()
        .unwrap_or_else(|| CatalogLocation::Local(state_root.join("catalog")))
}
