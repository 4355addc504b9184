//! The plugin host: every plugin a plan can use, built-in or loaded from a library.
//!
//! Built-ins are registered from their static descriptors; third-party plugins are `cdylib`s
//! loaded with libloading from paths a plan names or from plugin folders. Both end up as the
//! same [`HostedPlugin`] behind the same C ABI, so the runner cannot tell them apart.
//!
//! Loading refuses, naming the file: a file or its folder writable by group or others, or owned
//! by anyone but root or the current user (as ssh does); a sha256 that does not match the plan's
//! pin; a wrong ABI version (checked before anything else in the descriptor is read); a name
//! already taken. The checks and the load use one open file descriptor (`/proc/self/fd/N`), so
//! the file cannot be swapped between the check and the load. Libraries are never unloaded: the
//! process may still hold pointers into them.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use backplan_plugin_sdk::abi::{ENTRY_SYMBOL, EntryFn, PluginDescriptor};
use backplan_plugin_sdk::host::PluginRef;
use backplan_plugin_sdk::{Action, Description};
use serde_json::Value;

use crate::digest::sha256_hex_of;
use crate::plan::{Plan, SchemaSource};

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Linked into the binary.
    Builtin,
    /// Loaded from this library file.
    Library(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Library(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a plugin could not be registered or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The file or its folder has unsafe ownership or permissions.
    #[error("refusing plugin {path}: {reason}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file's sha256 is not the pinned one.
    #[error("refusing plugin {path}: its sha256 is {actual}, the plan pins {expected}")]
    PinMismatch {
        /// The file.
        path: PathBuf,
        /// The pin.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The library could not be opened or has no entry symbol.
    #[error("cannot load plugin {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's words.
        reason: String,
    },
    /// The descriptor or description is not acceptable.
    #[error("refusing plugin {origin}: {reason}")]
    Abi {
        /// Where it came from.
        origin: Origin,
        /// What is wrong.
        reason: String,
    },
    /// Two plugins claim one name.
    #[error("plugin name `{name}` is taken twice: by {first} and by {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// The one registered first.
        first: Origin,
        /// The one refused.
        second: Origin,
    },
}

/// A plugin ready to be called.
#[derive(Debug)]
pub struct HostedPlugin {
    /// The ABI handle.
    pub plugin: PluginRef,
    /// What it says about itself.
    pub description: Description,
    /// Where it came from.
    pub origin: Origin,
    validator: jsonschema::Validator,
}

impl HostedPlugin {
    /// Whether the plugin implements `action` (check and permissions always count).
    pub fn supports(&self, action: Action) -> bool {
        matches!(action, Action::Check | Action::Permissions)
            || self.description.actions.contains(&action)
    }
}

/// Every plugin available to a plan.
#[derive(Debug, Default)]
pub struct PluginHost {
    plugins: BTreeMap<String, HostedPlugin>,
}

impl PluginHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host with the given built-ins.
    pub fn with_builtins(builtins: &[&'static PluginDescriptor]) -> Result<Self, HostError> {
        let mut host = Self::new();
        for descriptor in builtins {
            host.register_builtin(descriptor)?;
        }
        Ok(host)
    }

    /// Registers a statically linked plugin.
    pub fn register_builtin(
        &mut self,
        descriptor: &'static PluginDescriptor,
    ) -> Result<(), HostError> {
        // SAFETY: a `&'static` descriptor lives for the whole process.
        let plugin = unsafe { PluginRef::from_raw(descriptor) }.map_err(|e| HostError::Abi {
            origin: Origin::Builtin,
            reason: e.to_string(),
        })?;
        self.insert(plugin, Origin::Builtin)
    }

    /// Loads the plugins a plan names, then every library in its plugin folders.
    pub fn load_for_plan(&mut self, plan: &Plan) -> Result<(), HostError> {
        for spec in &plan.plugins {
            self.load_library(&spec.path, spec.sha256.as_deref())?;
        }
        for dir in &plan.plugin_dirs {
            self.load_dir(dir)?;
        }
        Ok(())
    }

    /// Loads every `*.so` in `dir` (in name order).
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), HostError> {
        let entries = std::fs::read_dir(dir).map_err(|e| HostError::Load {
            path: dir.to_owned(),
            reason: format!("cannot read the plugin folder: {e}"),
        })?;
        let mut libraries: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        libraries.sort();
        for path in libraries {
            self.load_library(&path, None)?;
        }
        Ok(())
    }

    /// Loads one plugin library after checking its ownership, permissions and pin.
    pub fn load_library(&mut self, path: &Path, sha256: Option<&str>) -> Result<(), HostError> {
        let file = File::open(path).map_err(|e| HostError::Load {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        check_ownership(path, &file)?;
        if let Some(expected) = sha256 {
            let actual = sha256_hex_of(&file).map_err(|e| HostError::Load {
                path: path.to_owned(),
                reason: format!("cannot read it: {e}"),
            })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(HostError::PinMismatch {
                    path: path.to_owned(),
                    expected: expected.to_owned(),
                    actual,
                });
            }
        }
        let origin = Origin::Library(path.to_owned());
        let descriptor = open_descriptor(path, &file)?;
        // SAFETY: the library is leaked (never unloaded), so the descriptor stays valid.
        let plugin = unsafe { PluginRef::from_raw(descriptor) }.map_err(|e| HostError::Abi {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        self.insert(plugin, origin)
    }

    fn insert(&mut self, plugin: PluginRef, origin: Origin) -> Result<(), HostError> {
        let abi = |reason: String| HostError::Abi {
            origin: origin.clone(),
            reason,
        };
        let description = plugin
            .describe()
            .map_err(|e| abi(format!("describe failed: {e}")))?;
        if description.name != plugin.name() {
            return Err(abi(format!(
                "its descriptor says `{}` but it describes itself as `{}`",
                plugin.name(),
                description.name
            )));
        }
        if let Some(existing) = self.plugins.get(&description.name) {
            return Err(HostError::Duplicate {
                name: description.name,
                first: existing.origin.clone(),
                second: origin,
            });
        }
        let validator = jsonschema::validator_for(&description.config_schema)
            .map_err(|e| abi(format!("its config schema is not a valid JSON Schema: {e}")))?;
        self.plugins.insert(
            description.name.clone(),
            HostedPlugin {
                plugin,
                description,
                origin,
                validator,
            },
        );
        Ok(())
    }

    /// The plugin of that name.
    pub fn get(&self, name: &str) -> Option<&HostedPlugin> {
        self.plugins.get(name)
    }

    /// Every plugin, by name.
    pub fn iter(&self) -> impl Iterator<Item = &HostedPlugin> {
        self.plugins.values()
    }
}

impl SchemaSource for PluginHost {
    fn has_plugin(&self, name: &str) -> bool {
        self.plugins.contains_key(name)
    }

    fn config_problems(&self, name: &str, config: &Value) -> Vec<(String, String)> {
        let Some(plugin) = self.plugins.get(name) else {
            return Vec::new();
        };
        plugin
            .validator
            .iter_errors(config)
            .map(|e| {
                let mut pointer = e.instance_path().as_str().to_owned();
                // Point an unknown key at the key itself, not at its table.
                if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                    e.kind()
                    && let Some(key) = unexpected.first()
                {
                    pointer = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                }
                (pointer, e.to_string())
            })
            .collect()
    }
}

/// Refuses a file (or its folder) writable by group/others or owned by someone else.
fn check_ownership(path: &Path, file: &File) -> Result<(), HostError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let refuse = |reason: String| HostError::Unsafe {
        path: path.to_owned(),
        reason,
    };
    let judge = |what: &str, meta: &std::fs::Metadata| -> Result<(), HostError> {
        if meta.uid() != 0 && meta.uid() != me {
            return Err(refuse(format!(
                "{what} is owned by uid {}, not by root or the current user (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "{what} is writable by group or others (mode {:o}); fix with chmod go-w",
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    };
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    judge("the file", &meta)?;
    let folder = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .ok_or_else(|| refuse("cannot find its folder".into()))?;
    let folder_meta =
        std::fs::metadata(&folder).map_err(|e| refuse(format!("cannot stat its folder: {e}")))?;
    judge(&format!("its folder {}", folder.display()), &folder_meta)
}

/// Opens the already-checked file through its descriptor and returns the plugin's descriptor.
fn open_descriptor(path: &Path, file: &File) -> Result<*const PluginDescriptor, HostError> {
    use std::os::fd::AsRawFd;
    let load_error = |reason: String| HostError::Load {
        path: path.to_owned(),
        reason,
    };
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    // SAFETY: loading a library runs its initialisers; that is the point of a plugin, and the
    // file passed the ownership, permission and pin checks above.
    let library = unsafe { libloading::Library::new(&by_fd) }
        .map_err(|e| load_error(e.to_string().replace(&by_fd, &path.display().to_string())))?;
    // Never unloaded: descriptors, strings and callbacks point into it.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by the ABI.
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }.map_err(|_| {
        load_error(format!(
            "it does not export `{}`: is it a backplan plugin built with the `dynamic` feature?",
            String::from_utf8_lossy(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1])
        ))
    })?;
    // SAFETY: calling the exported entry function, as the ABI defines it.
    Ok(unsafe { entry() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> PluginHost {
        PluginHost::with_builtins(&[backplan_plugin_exec::plugin_descriptor()]).unwrap()
    }

    #[test]
    fn a_builtin_is_described_and_its_schema_enforced() {
        let host = host();
        let exec = host.get("exec").unwrap();
        assert_eq!(exec.origin, Origin::Builtin);
        assert!(exec.supports(Action::Restore));
        let ok = serde_json::json!({"command": ["true"]});
        assert!(host.config_problems("exec", &ok).is_empty());
        let typo = serde_json::json!({"comand": ["true"]});
        let problems = host.config_problems("exec", &typo);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("comand"), "{problems:?}");
    }

    #[test]
    fn a_duplicate_name_is_refused() {
        let mut host = host();
        let err = host
            .register_builtin(backplan_plugin_exec::plugin_descriptor())
            .unwrap_err();
        assert!(
            matches!(err, HostError::Duplicate { ref name, .. } if name == "exec"),
            "{err}"
        );
    }

    #[test]
    fn group_writable_files_and_folders_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"not really a library").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = host().load_library(&lib, None).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert!(err.to_string().contains("libx.so"), "{err}");

        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = host().load_library(&lib, None).unwrap_err();
        assert!(err.to_string().contains("its folder"), "{err}");
    }

    #[test]
    fn a_wrong_pin_is_refused_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"bytes").unwrap();
        let err = host()
            .load_library(&lib, Some(&"0".repeat(64)))
            .unwrap_err();
        assert!(matches!(err, HostError::PinMismatch { .. }), "{err}");
    }

    #[test]
    fn a_file_that_is_no_library_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"bytes").unwrap();
        let err = host().load_library(&lib, None).unwrap_err();
        assert!(matches!(err, HostError::Load { .. }), "{err}");
        assert!(err.to_string().contains("libx.so"), "{err}");
    }
}
