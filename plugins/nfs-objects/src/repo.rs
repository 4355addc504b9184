//! The repository: its object layout, its format marker, and the handle every action starts from.
//!
//! All object names are built here, so FORMAT.md and the code can be checked against one place.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, SealedBackend};
use crate::crypto::{self, Keys};
use crate::dictionary::Dictionaries;
use crate::error::{Error, Result};
use crate::keyring::{self, KEYS_PREFIX, Kek};

/// The object that marks a folder or prefix as a repository.
pub const CONFIG_OBJECT: &str = "config.json";
/// Folder of pack files.
pub const DATA_PREFIX: &str = "data/";
/// Folder of per-pack indexes.
pub const INDEX_PREFIX: &str = "index/";
/// Folder of snapshot manifests.
pub const MANIFEST_PREFIX: &str = "manifests/";
/// Folder of snapshot headers; a snapshot exists exactly when its header does.
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
/// Folder of compression dictionaries (see `dictionary`).
pub const DICTIONARY_PREFIX: &str = "dictionaries/";

/// Objects younger than this may belong to a backup still running: prune does not delete them
/// when unreferenced, and verify does not judge a pack without an index before.
pub const IN_PROGRESS_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

const FORMAT_NAME: &str = "backplan-nfs-objects";
/// Plaintext repositories.
const PLAINTEXT_VERSION: u32 = 1;
/// Encrypted repositories (see `crypto`).
const ENCRYPTED_VERSION: u32 = 2;

/// Bounds of `chunk_size`. Each worker holds two chunks (and a compressed one) in memory, and a
/// manifest entry holds one reference per chunk of its file, so neither end may be absurd.
pub const CHUNK_SIZE: std::ops::RangeInclusive<u64> = (64 << 10)..=(16 << 20);
/// Bounds of `pack_size`: a pack is at most `pack_size` plus one blob, far below the 80 GB of
/// a multipart upload of 8 MiB parts.
pub const PACK_SIZE: std::ops::RangeInclusive<u64> = 1..=(1 << 30);

/// Object name of pack `name`.
pub fn pack_object(name: &str) -> String {
    format!("{DATA_PREFIX}{}/{name}.pack", name.get(..2).unwrap_or(name))
}

/// Object name of the index of pack `name`.
pub fn index_object(name: &str) -> String {
    format!("{INDEX_PREFIX}{name}.json")
}

/// Object name of the manifest of snapshot `id`.
pub fn manifest_object(id: &str) -> String {
    format!("{MANIFEST_PREFIX}{id}.jsonl.zst")
}

/// Object name of the header of snapshot `id`.
pub fn snapshot_object(id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{id}.json")
}

/// Object name of compression dictionary `id`.
pub fn dictionary_object(id: u32) -> String {
    format!("{DICTIONARY_PREFIX}{id:08x}.zdict")
}

/// The last path component of `object` without `suffix`, if it ends with it.
pub fn object_stem<'a>(object: &'a str, suffix: &str) -> Option<&'a str> {
    object.rsplit('/').next()?.strip_suffix(suffix)
}

/// Tunables fixed when the repository is created (recorded in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Always `backplan-nfs-objects`.
    pub format: String,
    /// Format version: 1 (plaintext) or 2 (encrypted).
    pub version: u32,
    /// Chunks are at most this long (see `chunker`; before 2026-12 they were all this long).
    pub chunk_size: u64,
    /// A pack is sealed once it holds at least this many bytes.
    pub pack_size: u64,
    /// Version 2: the construction every object is sealed with, `aes-256-gcm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// Blobs may be compressed with a dictionary of `dictionaries/` (see `dictionary`). Written
    /// only when true, so a repository without dictionaries stays readable by binaries older
    /// than them (they refuse a config with a field they do not know).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dictionaries: bool,
}

/// Whether the encrypted repository in `backend` is one whose creation was killed between its
/// config and its key: no key, and nothing any key would have sealed.
fn unfinished_creation(backend: &dyn Backend) -> Result<bool> {
    for prefix in [
        KEYS_PREFIX,
        DATA_PREFIX,
        INDEX_PREFIX,
        MANIFEST_PREFIX,
        SNAPSHOT_PREFIX,
        DICTIONARY_PREFIX,
    ] {
        if !backend.list(prefix)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `config.json` read and checked.
fn parse_config(bytes: &[u8]) -> Result<RepoConfig> {
    let config: RepoConfig = serde_json::from_slice(bytes)
        .map_err(|err| Error::NotARepository(format!("{CONFIG_OBJECT}: {err}")))?;
    let known = match config.version {
        PLAINTEXT_VERSION => config.encryption.is_none(),
        ENCRYPTED_VERSION => config.encryption.as_deref() == Some(crypto::ALGORITHM),
        _ => false,
    };
    if config.format != FORMAT_NAME || !known {
        return Err(Error::NotARepository(format!(
            "format {} version {} encryption {} (this is {FORMAT_NAME} version              {PLAINTEXT_VERSION}, or {ENCRYPTED_VERSION} with {})",
            config.format,
            config.version,
            config.encryption.as_deref().unwrap_or("none"),
            crypto::ALGORITHM
        )));
    }
    if let Some(flaw) = config.flaw() {
        return Err(Error::NotARepository(format!("{CONFIG_OBJECT}: {flaw}")));
    }
    Ok(config)
}

impl RepoConfig {
    /// Whether the repository is encrypted (format version 2).
    pub fn is_encrypted(&self) -> bool {
        self.version == ENCRYPTED_VERSION
    }

    /// Whether a step naming key `kek` (or none) may use this repository: a key for an
    /// encrypted one, none for a plaintext one. Nothing is ever written in plaintext into an
    /// encrypted repository.
    pub fn check_key_choice(&self, kek: Option<&Kek>) -> Result<()> {
        match (self.is_encrypted(), kek) {
            (false, Some(kek)) => Err(Error::Encryption(format!(
                "the repository is not encrypted (format version 1), but the step names a key \
                 ({kek}): remove `encryption` from the step, or back up into a new, empty \
                 repository to have it encrypted"
            ))),
            (true, None) => Err(Error::Encryption(
                "the repository is encrypted (format version 2), but the step names no key: set \
                 encryption.passphrase_file, encryption.passphrase_env or encryption.kms_key_id"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Why these tunables are unusable, if they are.
    fn flaw(&self) -> Option<String> {
        if !CHUNK_SIZE.contains(&self.chunk_size) {
            return Some(format!(
                "chunk_size {} is not between {} and {}",
                self.chunk_size,
                CHUNK_SIZE.start(),
                CHUNK_SIZE.end()
            ));
        }
        (!PACK_SIZE.contains(&self.pack_size)).then(|| {
            format!(
                "pack_size {} is not between {} and {}",
                self.pack_size,
                PACK_SIZE.start(),
                PACK_SIZE.end()
            )
        })
    }
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self {
            format: FORMAT_NAME.into(),
            version: PLAINTEXT_VERSION,
            chunk_size: 4 << 20,
            // 64 MiB: a backup of the bench tree into S3 made 43 objects instead of 85 with
            // 32 MiB (restic: 82), in the same time; a pack costs a PUT and an index object.
            pack_size: 64 << 20,
            encryption: None,
            dictionaries: true,
        }
    }
}

/// An opened repository.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Sealing and opening objects when the repository is encrypted.
    backend: Arc<dyn Backend>,
    config: RepoConfig,
    keys: Keys,
    /// The key file that opened an encrypted repository.
    key_id: Option<String>,
    /// Its compression dictionaries, loaded as blobs ask for them.
    dictionaries: Arc<Dictionaries>,
}

impl Repository {
    /// Opens the plaintext repository in `backend`, creating it with `defaults` when the
    /// backend is empty.
    pub fn open_or_init(backend: Arc<dyn Backend>, defaults: RepoConfig) -> Result<Self> {
        Self::open_or_init_with(backend, defaults, None)
    }

    /// Opens the repository in `backend` with key-encryption key `kek` (`None`: a plaintext
    /// one), creating it with `defaults` when the backend is empty, encrypted exactly when a
    /// `kek` is given. Nothing is written before `kek` is known to work.
    pub fn open_or_init_with(
        backend: Arc<dyn Backend>,
        mut defaults: RepoConfig,
        kek: Option<&Kek>,
    ) -> Result<Self> {
        match backend.get(CONFIG_OBJECT) {
            Ok(bytes) => {
                let config = parse_config(&bytes)?;
                if let Some(kek) = kek.filter(|_| config.is_encrypted()) {
                    if unfinished_creation(backend.as_ref())? {
                        let key = keyring::create(kek)?;
                        key.publish(backend.as_ref())?;
                        return Ok(Self::with_keys(backend, config, Some(key.opened)));
                    }
                }
                Self::from_config_bytes(backend, &bytes, kek)
            }
            Err(Error::MissingObject(_)) => {
                if let Some(flaw) = defaults.flaw() {
                    return Err(Error::Invalid(flaw));
                }
                if !backend.list(SNAPSHOT_PREFIX)?.is_empty() {
                    return Err(Error::NotARepository(format!(
                        "{CONFIG_OBJECT} is missing but snapshots exist"
                    )));
                }
                // The key is made (argon2id, KMS) before anything is written; the config comes
                // first, so a folder holding a key file is always a repository.
                let key = kek.map(keyring::create).transpose()?;
                if key.is_some() {
                    defaults.version = ENCRYPTED_VERSION;
                    defaults.encryption = Some(crypto::ALGORITHM.into());
                }
                let bytes = serde_json::to_vec_pretty(&defaults).expect("config serialises");
                backend.put_bytes(CONFIG_OBJECT, &bytes)?;
                let opened = key
                    .map(|key| key.publish(backend.as_ref()).map(|()| key.opened))
                    .transpose()?;
                Ok(Self::with_keys(backend, defaults, opened))
            }
            Err(err) => Err(err),
        }
    }

    /// Opens an existing plaintext repository; never creates one.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::open_with(backend, None)
    }

    /// Opens an existing repository with key-encryption key `kek` (`None`: a plaintext one);
    /// never creates one (restore, verify and prune use this).
    pub fn open_with(backend: Arc<dyn Backend>, kek: Option<&Kek>) -> Result<Self> {
        match backend.get(CONFIG_OBJECT) {
            Ok(bytes) => Self::from_config_bytes(backend, &bytes, kek),
            Err(Error::MissingObject(_)) => {
                Err(Error::NotARepository(format!("{CONFIG_OBJECT} not found")))
            }
            Err(err) => Err(err),
        }
    }

    /// The tunables of the repository in `backend`, read without opening it: whether it is
    /// encrypted, for a caller that must choose a key.
    pub fn peek(backend: &dyn Backend) -> Result<RepoConfig> {
        let bytes = match backend.get(CONFIG_OBJECT) {
            Err(Error::MissingObject(_)) => {
                return Err(Error::NotARepository(format!("{CONFIG_OBJECT} not found")));
            }
            other => other?,
        };
        parse_config(&bytes)
    }

    fn from_config_bytes(
        backend: Arc<dyn Backend>,
        bytes: &[u8],
        kek: Option<&Kek>,
    ) -> Result<Self> {
        let config = parse_config(bytes)?;
        config.check_key_choice(kek)?;
        let opened = kek
            .map(|kek| keyring::open(backend.as_ref(), kek))
            .transpose()?;
        Ok(Self::with_keys(backend, config, opened))
    }

    fn with_keys(
        backend: Arc<dyn Backend>,
        config: RepoConfig,
        opened: Option<keyring::Opened>,
    ) -> Self {
        match opened {
            None => Self {
                dictionaries: Arc::new(Dictionaries::new(Arc::clone(&backend))),
                backend,
                config,
                keys: Keys::plaintext(),
                key_id: None,
            },
            Some(opened) => {
                let keys = Keys::from_master(&opened.master);
                let backend: Arc<dyn Backend> = Arc::new(SealedBackend::new(backend, keys.clone()));
                Self {
                    dictionaries: Arc::new(Dictionaries::new(Arc::clone(&backend))),
                    backend,
                    config,
                    keys,
                    key_id: Some(opened.key_id),
                }
            }
        }
    }

    /// The store holding the objects (sealing and opening them in an encrypted repository).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// What blobs are sealed and named with.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Its compression dictionaries.
    pub fn dictionaries(&self) -> &Arc<Dictionaries> {
        &self.dictionaries
    }

    /// The id of the key that opened an encrypted repository.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The tunables recorded at creation.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn init_then_open_and_refuse_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        assert!(matches!(
            Repository::open(backend.clone()),
            Err(Error::NotARepository(_))
        ));
        let custom = RepoConfig {
            chunk_size: 64 << 10,
            ..RepoConfig::default()
        };
        Repository::open_or_init(backend.clone(), custom.clone()).unwrap();
        assert_eq!(Repository::open(backend.clone()).unwrap().config(), &custom);
        // Defaults given later do not override what the repository was created with.
        let again = Repository::open_or_init(backend.clone(), RepoConfig::default()).unwrap();
        assert_eq!(again.config().chunk_size, 64 << 10);

        backend
            .put_bytes(CONFIG_OBJECT, br#"{"format":"restic"}"#)
            .unwrap();
        assert!(matches!(
            Repository::open(backend),
            Err(Error::NotARepository(_))
        ));
    }

    #[test]
    fn absurd_chunk_and_pack_sizes_in_a_repository_config_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let tiny = RepoConfig {
            chunk_size: 1,
            ..RepoConfig::default()
        };
        let err = Repository::open_or_init(backend.clone(), tiny).unwrap_err();
        assert!(
            err.to_string().contains("chunk_size 1 is not between"),
            "{err}"
        );
        for (chunk, pack) in [(u64::MAX, 1 << 20), (4 << 20, 0), (4 << 20, u64::MAX)] {
            let config = format!(
                r#"{{"format":"backplan-nfs-objects","version":1,"chunk_size":{chunk},"pack_size":{pack}}}"#
            );
            backend.delete(CONFIG_OBJECT).unwrap();
            backend.put_bytes(CONFIG_OBJECT, config.as_bytes()).unwrap();
            let err = Repository::open(backend.clone()).unwrap_err();
            assert!(matches!(err, Error::NotARepository(_)), "{err}");
            assert!(err.to_string().contains("is not between"), "{err}");
        }
    }

    #[test]
    fn object_names() {
        assert_eq!(pack_object("ab12"), "data/ab/ab12.pack");
        assert_eq!(object_stem("data/ab/ab12.pack", ".pack"), Some("ab12"));
        assert_eq!(object_stem(&snapshot_object("s1"), ".json"), Some("s1"));
        assert_eq!(object_stem("index/x.json", ".pack"), None);
    }
}
