//! Keys that must exist: from the plan and from a manifest file.
//!
//! The listing marks every expected key it passes (a lock-free flag per key), so a complete
//! bucket costs no extra calls; only keys the listing did not see (outside the listed prefixes, or
//! written after the listing passed) are confirmed one by one with HeadObject.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use backplan_plugin_sdk::{PluginError, PluginResult};

use crate::config::Config;

/// The expected keys and whether each was seen.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    index: HashMap<String, usize>,
    keys: Vec<String>,
    seen: Vec<AtomicBool>,
}

impl Expected {
    /// Builds the set from `expected_keys` and `expected_manifest`.
    pub(crate) fn load(config: &Config) -> PluginResult<Self> {
        let mut keys = config.expected_keys.clone();
        if let Some(path) = &config.expected_manifest {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PluginError::config(format!(
                    "expected_manifest {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            keys.extend(parse_manifest(&text));
        }
        Ok(Self::new(keys))
    }

    fn new(keys: Vec<String>) -> Self {
        let mut set = Expected::default();
        for key in keys {
            if !set.index.contains_key(&key) {
                set.index.insert(key.clone(), set.keys.len());
                set.keys.push(key);
                set.seen.push(AtomicBool::new(false));
            }
        }
        set
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Called by the listing for every key it sees.
    pub(crate) fn mark(&self, key: &str) {
        if let Some(i) = self.index.get(key) {
            self.seen[*i].store(true, Ordering::Relaxed);
        }
    }

    /// The keys not seen so far, in the order they were given.
    pub(crate) fn unseen(&self) -> Vec<&str> {
        self.keys
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !seen.load(Ordering::Relaxed))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// One key per line; blank lines and lines starting with `#` are skipped. Keys are taken
/// verbatim (no trimming of inner spaces), only the line ending is removed.
pub(crate) fn parse_manifest(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_and_marking() {
        let keys: Vec<String> =
            parse_manifest("# header\na/1\r\n\n  \nb/with space \na/1\n").collect();
        assert_eq!(keys, ["a/1", "b/with space ", "a/1"]);
        let set = Expected::new(keys);
        assert_eq!(set.len(), 2);
        set.mark("a/1");
        set.mark("not/expected");
        assert_eq!(set.unseen(), ["b/with space "]);
    }
}
