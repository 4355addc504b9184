//! The step's `encryption` table, and the `keys` action, for encrypted repositories.
//!
//! A step names where its key-encryption key comes from, never the secret: a passphrase file or
//! environment variable, or a KMS key. Each is resolved when an action runs; one that cannot be
//! read (a missing file, an unset variable) or that opens none of the repository's keys is a
//! configuration error naming it, raised before anything is written.

use std::path::PathBuf;
use std::sync::Arc;

use backplan_plugin_sdk::{KeyInfo, KeyOperation, KeySource, Keys, PluginError, PluginResult};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::backend::Backend;
use crate::keyring::{self, Kek, key_object};
use crate::kms::AwsKms;
use crate::repo::Repository;

/// How a new repository is encrypted, and what opens an encrypted one. Exactly one key source.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// A file whose first line is the passphrase (keep it readable only by backplan's user).
    #[schemars(length(min = 1))]
    pub passphrase_file: Option<PathBuf>,
    /// An environment variable holding the passphrase.
    #[schemars(length(min = 1))]
    pub passphrase_env: Option<String>,
    /// An AWS KMS key (id, ARN or alias) that wraps the repository's key: GenerateDataKey when
    /// the repository or key is made, Decrypt to open it.
    #[schemars(length(min = 1))]
    pub kms_key_id: Option<String>,
    /// Refused: a passphrase never goes in a plan. Use `passphrase_file` or `passphrase_env`.
    pub passphrase: Option<serde_json::Value>,
}

impl Encryption {
    /// What the schema cannot say: exactly one key source, and never a passphrase inline.
    pub fn validate(&self) -> PluginResult<()> {
        if self.passphrase.is_some() {
            return Err(PluginError::config(
                "encryption.passphrase is refused: a passphrase must never be written in a plan; \
                 name a file holding it with encryption.passphrase_file, or an environment \
                 variable with encryption.passphrase_env",
            ));
        }
        let given = [
            self.passphrase_file.is_some(),
            self.passphrase_env.is_some(),
            self.kms_key_id.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(PluginError::config(
                "encryption needs exactly one of passphrase_file, passphrase_env and kms_key_id \
                 (add more keys with `backplan keys add`)",
            ));
        }
        Ok(())
    }

    /// The key source the step names.
    fn source(&self) -> KeySource {
        if let Some(path) = &self.passphrase_file {
            KeySource::PassphraseFile(path.to_string_lossy().into_owned())
        } else if let Some(name) = &self.passphrase_env {
            KeySource::PassphraseEnv(name.clone())
        } else {
            KeySource::KmsKeyId(self.kms_key_id.clone().unwrap_or_default())
        }
    }

    /// The key-encryption key the step names, read now (KMS is reached in `region`).
    pub fn kek(&self, region: Option<&str>) -> PluginResult<Kek> {
        self.validate()?;
        kek_of(&self.source(), region)
    }
}

/// The key-encryption key of `source`: the passphrase read, or a KMS client. A file that
/// cannot be read, an unset or empty variable, an empty passphrase: a configuration error
/// naming the source.
pub fn kek_of(source: &KeySource, region: Option<&str>) -> PluginResult<Kek> {
    let passphrase = |text: String, from: String| {
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(PluginError::config(format!(
                "{from}: the passphrase is empty"
            )));
        }
        Ok(Kek::Passphrase {
            passphrase: line.as_bytes().to_vec(),
            from,
        })
    };
    match source {
        KeySource::PassphraseFile(path) => {
            let from = format!("passphrase file {path}");
            let text = std::fs::read_to_string(path)
                .map_err(|err| PluginError::config(format!("{from}: {err}")))?;
            passphrase(text, from)
        }
        KeySource::PassphraseEnv(name) => {
            let from = format!("passphrase in ${name}");
            let text = std::env::var(name).map_err(|err| {
                PluginError::config(format!("{from}: {err} (environment variable {name})"))
            })?;
            passphrase(text, from)
        }
        KeySource::KmsKeyId(key_id) => {
            if key_id.is_empty() {
                return Err(PluginError::config("a KMS key id is empty"));
            }
            let kms = AwsKms::connect(region).map_err(crate::plugin::to_plugin_error)?;
            Ok(Kek::Kms {
                key_id: key_id.clone(),
                kms: Arc::new(kms),
            })
        }
    }
}

/// The `keys` action on the repository in `backend`, which `kek` (the step's key) opens: its
/// summary, the keys, and warnings about weak ones.
pub fn keys_action(
    backend: &dyn Backend,
    kek: &Kek,
    operation: &KeyOperation,
    region: Option<&str>,
) -> PluginResult<(String, Keys, Vec<String>)> {
    let engine = crate::plugin::to_plugin_error;
    if !Repository::peek(backend).map_err(engine)?.is_encrypted() {
        return Err(PluginError::config(
            "the repository is not encrypted (format version 1): it has no keys",
        ));
    }
    let opened = keyring::open(backend, kek).map_err(engine)?;
    let summary = match operation {
        KeyOperation::List => String::new(),
        KeyOperation::Add { source } => {
            let new = kek_of(source, region)?;
            let id = keyring::add(backend, &opened.master, &new).map_err(engine)?;
            format!("added key {id} ({source}); no data was rewritten")
        }
        KeyOperation::Remove { id } => {
            let keys = keyring::list(backend).map_err(engine)?;
            if !keys.contains_key(id) {
                return Err(PluginError::config(format!(
                    "the repository has no key {id} (`backplan keys list` shows its keys)"
                )));
            }
            if *id == opened.key_id {
                return Err(PluginError::config(format!(
                    "key {id} is the one the step's configuration opens the repository with \
                     ({kek}): change the step to another key first"
                )));
            }
            if keys.len() == 1 {
                return Err(PluginError::config(format!(
                    "key {id} is the repository's last key"
                )));
            }
            backend.delete(&key_object(id)).map_err(engine)?;
            format!("removed key {id}; no data was rewritten")
        }
    };
    let keys = keyring::list(backend).map_err(engine)?;
    let warnings = keys
        .iter()
        .filter_map(|(id, file)| keyring::weakness(file).map(|weak| format!("key {id}: {weak}")))
        .collect();
    let keys = Keys {
        keys: keys
            .into_iter()
            .map(|(id, file)| KeyInfo {
                in_use: id == opened.key_id,
                id,
                kind: file.kind,
                source: file.source,
                created_at: file.created_at.to_string(),
            })
            .collect(),
    };
    let summary = if summary.is_empty() {
        format!("{} key(s)", keys.keys.len())
    } else {
        summary
    };
    Ok((summary, keys, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_in_the_plan_is_refused_naming_the_two_ways() {
        let encryption = Encryption {
            passphrase: Some("hunter2".into()),
            ..Encryption::default()
        };
        let err = encryption.validate().unwrap_err();
        assert!(err.message.contains("passphrase_file"), "{}", err.message);
        assert!(err.message.contains("passphrase_env"), "{}", err.message);
    }

    #[test]
    fn exactly_one_key_source_is_named() {
        let both = Encryption {
            passphrase_env: Some("A".into()),
            kms_key_id: Some("alias/x".into()),
            ..Encryption::default()
        };
        assert!(both.validate().is_err());
        assert!(Encryption::default().validate().is_err());
    }

    #[test]
    fn an_unreadable_or_empty_passphrase_is_a_configuration_error_naming_its_source() {
        let missing = kek_of(&KeySource::PassphraseFile("/nonexistent/pass".into()), None);
        let err = missing.unwrap_err();
        assert!(
            err.message.contains("passphrase file /nonexistent/pass"),
            "{}",
            err.message
        );
        let unset = kek_of(
            &KeySource::PassphraseEnv("BACKPLAN_TEST_SURELY_UNSET_VARIABLE".into()),
            None,
        );
        let err = unset.unwrap_err();
        assert!(
            err.message.contains("$BACKPLAN_TEST_SURELY_UNSET_VARIABLE"),
            "{}",
            err.message
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = kek_of(
            &KeySource::PassphraseFile(empty.display().to_string()),
            None,
        );
        assert!(err.unwrap_err().message.contains("empty"));
    }
}
