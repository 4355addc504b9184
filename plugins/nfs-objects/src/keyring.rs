//! The master key of an encrypted repository, stored only wrapped, under `keys/`.
//!
//! Each `keys/<id>.json` holds the master key sealed (AES-256-GCM) under one key-encryption
//! key: one derived from a passphrase with argon2id (its parameters and salt stored beside it),
//! or a data key that AWS KMS generated under a KMS key (stored as the ciphertext only KMS can
//! decrypt). Any one of them opens the repository; adding or removing one rewrites no data.
//! A passphrase never appears in a plan: the step names the file or environment variable that
//! holds it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::crypto::{MASTER_KEY_LEN, NONCE, random_bytes};
use crate::error::{Error, Result};

/// Folder of the wrapped master keys.
pub const KEYS_PREFIX: &str = "keys/";

/// Object name of key `id`.
pub fn key_object(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}.json")
}

/// The environment variable that makes new passphrase keys cheap to derive, for tests only: a
/// passphrase key made so is as weak as its passphrase.
pub const TEST_KDF_VARIABLE: &str = "BACKPLAN_NFS_OBJECTS_INSECURE_TEST_KDF";

/// argon2id parameters of new passphrase keys: 64 MiB, 3 passes, one lane (what RFC 9106
/// recommends where memory is constrained); about a quarter second here.
const ARGON2_MEMORY_KIB: u32 = 64 << 10;
const ARGON2_PASSES: u32 = 3;
/// The cheapest parameters argon2 allows, under [`TEST_KDF_VARIABLE`].
const TEST_ARGON2_MEMORY_KIB: u32 = 8;

/// Bounds of stored argon2 parameters: a key file is read before anything is trusted, so it
/// must not make opening allocate gigabytes or spin for hours.
const MAX_ARGON2_MEMORY_KIB: u32 = 4 << 20;
const MAX_ARGON2_PASSES: u32 = 64;

/// The AWS KMS calls a KMS-wrapped key needs.
pub trait Kms: Send + Sync + fmt::Debug {
    /// A fresh 256-bit data key under KMS key `key_id`: its plaintext, and its ciphertext.
    fn generate_data_key(&self, key_id: &str) -> Result<(Vec<u8>, Vec<u8>)>;
    /// The plaintext of data key `ciphertext`, made under KMS key `key_id`.
    fn decrypt(&self, key_id: &str, ciphertext: &[u8]) -> Result<Vec<u8>>;
}

/// A key-encryption key, as a step's configuration or `backplan keys add` names it.
#[derive(Clone)]
pub enum Kek {
    /// A passphrase, and where it was read from (for messages and the key's record).
    Passphrase { passphrase: Vec<u8>, from: String },
    /// A KMS key, and the client to reach KMS with.
    Kms { key_id: String, kms: Arc<dyn Kms> },
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({self})")
    }
}

impl fmt::Display for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kek::Passphrase { from, .. } => f.write_str(from),
            Kek::Kms { key_id, .. } => write!(f, "KMS key {key_id}"),
        }
    }
}

/// One wrapped master key, as stored in `keys/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// `passphrase` or `kms`.
    pub kind: String,
    /// Where the key-encryption key came from when the key was added (never the secret).
    pub source: String,
    pub created_at: jiff::Timestamp,
    /// A passphrase key's derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2id: Option<Argon2Params>,
    /// A KMS key's data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<KmsWrap>,
    /// The nonce of the wrapping, hex.
    pub nonce: String,
    /// The master key sealed under the key-encryption key, then its tag, hex.
    pub wrapped: String,
}

/// argon2id (version 0x13) of the passphrase into a 32-byte key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// 16 random bytes, hex.
    pub salt: String,
}

/// The data key a KMS key generated: the key-encryption key is its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsWrap {
    /// The KMS key (id, ARN or alias) as given when the key was added.
    pub key_id: String,
    /// `CiphertextBlob` of `GenerateDataKey`, hex.
    pub ciphertext: String,
}

/// The master key, opened.
pub struct Opened {
    pub master: [u8; MASTER_KEY_LEN],
    /// The id of the key file that opened it.
    pub key_id: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Associated data of the wrapping of key `id`: a key file renamed does not open.
fn wrap_aad(id: &str) -> Vec<u8> {
    format!("backplan-nfs-objects/2 key {id}").into_bytes()
}

fn aead(kek: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, kek)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Invalid(format!("a key-encryption key of {} bytes", kek.len())))
}

/// argon2id of `passphrase` with `params`.
fn derive(passphrase: &[u8], params: &Argon2Params) -> Result<[u8; 32]> {
    let salt = unhex(&params.salt).ok_or_else(|| Error::Invalid("salt is not hex".into()))?;
    if params.memory_kib > MAX_ARGON2_MEMORY_KIB || params.iterations > MAX_ARGON2_PASSES {
        return Err(Error::Invalid(format!(
            "argon2id parameters {} KiB, {} passes are beyond what this version accepts",
            params.memory_kib, params.iterations
        )));
    }
    let argon = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|err| Error::Invalid(format!("argon2id parameters: {err}")))?;
    let mut out = [0; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon)
        .hash_password_into(passphrase, &salt, &mut out)
        .map_err(|err| Error::Invalid(format!("argon2id: {err}")))?;
    Ok(out)
}

/// The parameters of a new passphrase key (cheap under [`TEST_KDF_VARIABLE`]).
fn new_argon2_params() -> Result<Argon2Params> {
    let cheap = std::env::var_os(TEST_KDF_VARIABLE).is_some_and(|v| v == "1");
    Ok(Argon2Params {
        memory_kib: if cheap {
            TEST_ARGON2_MEMORY_KIB
        } else {
            ARGON2_MEMORY_KIB
        },
        iterations: if cheap { 1 } else { ARGON2_PASSES },
        parallelism: 1,
        salt: hex(&random_bytes::<16>()?),
    })
}

/// A new key file wrapping `master` under `kek`, with id `id`.
fn wrap(id: &str, master: &[u8; MASTER_KEY_LEN], kek: &Kek) -> Result<KeyFile> {
    let (kind, source, argon2id, kms, wrapping_key) = match kek {
        Kek::Passphrase { passphrase, from } => {
            let params = new_argon2_params()?;
            let key = derive(passphrase, &params)?.to_vec();
            ("passphrase", from.clone(), Some(params), None, key)
        }
        Kek::Kms { key_id, kms } => {
            let (plaintext, ciphertext) = kms.generate_data_key(key_id)?;
            let wrap = KmsWrap {
                key_id: key_id.clone(),
                ciphertext: hex(&ciphertext),
            };
            (
                "kms",
                format!("KMS key {key_id}"),
                None,
                Some(wrap),
                plaintext,
            )
        }
    };
    let nonce = random_bytes::<NONCE>()?;
    let mut wrapped = master.to_vec();
    aead(&wrapping_key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(id)),
            &mut wrapped,
        )
        .map_err(|_| Error::Internal("AES-GCM sealing failed".into()))?;
    Ok(KeyFile {
        kind: kind.into(),
        source,
        created_at: jiff::Timestamp::now(),
        argon2id,
        kms,
        nonce: hex(&nonce),
        wrapped: hex(&wrapped),
    })
}

/// Whether `file` is of another kind than `kek` (a passphrase key is never tried on KMS).
fn mismatch(file: &KeyFile, kek: &Kek) -> bool {
    match kek {
        Kek::Passphrase { .. } => file.argon2id.is_none(),
        Kek::Kms { .. } => file.kms.is_none(),
    }
}

/// The master key in `file` (key `id`) if `kek` opens it; `Ok(None)` if it does not (a wrong
/// passphrase, another KMS key).
fn unwrap(id: &str, file: &KeyFile, kek: &Kek) -> Result<Option<[u8; MASTER_KEY_LEN]>> {
    let wrapping_key = match (kek, &file.argon2id, &file.kms) {
        (Kek::Passphrase { passphrase, .. }, Some(params), _) => {
            derive(passphrase, params)?.to_vec()
        }
        (Kek::Kms { key_id, kms }, _, Some(wrap)) => {
            if wrap.key_id != *key_id {
                return Ok(None);
            }
            let ciphertext = unhex(&wrap.ciphertext).ok_or_else(|| {
                Error::Invalid(format!("{}: ciphertext is not hex", key_object(id)))
            })?;
            kms.decrypt(key_id, &ciphertext)?
        }
        _ => return Ok(None),
    };
    let nonce = unhex(&file.nonce)
        .and_then(|n| Nonce::try_assume_unique_for_key(&n).ok())
        .ok_or_else(|| Error::Invalid(format!("{}: nonce is not 12 hex bytes", key_object(id))))?;
    let Some(mut wrapped) = unhex(&file.wrapped) else {
        return Err(Error::Invalid(format!(
            "{}: wrapped key is not hex",
            key_object(id)
        )));
    };
    let Ok(master) =
        aead(&wrapping_key)?.open_in_place(nonce, Aad::from(wrap_aad(id)), &mut wrapped)
    else {
        return Ok(None);
    };
    Ok(<[u8; MASTER_KEY_LEN]>::try_from(&*master).ok())
}

/// The least argon2id memory (KiB) a passphrase key should cost: OWASP's minimum, 19 MiB.
const WEAK_ARGON2_MEMORY_KIB: u32 = 19 << 10;

/// Why passphrase key `file` is weak, if it is: argon2id parameters below the minimum (such as
/// those of [`TEST_KDF_VARIABLE`]), which make guessing its passphrase cheap.
pub fn weakness(file: &KeyFile) -> Option<String> {
    let params = file.argon2id.as_ref()?;
    (params.memory_kib < WEAK_ARGON2_MEMORY_KIB).then(|| {
        format!(
            "its argon2id costs only {} KiB and {} pass(es), far below the default {} KiB and \
             {ARGON2_PASSES}: add a new key and remove this one",
            params.memory_kib, params.iterations, ARGON2_MEMORY_KIB
        )
    })
}

/// Every key file of the repository by id. One that does not parse fails the listing: it may
/// be the only key that opens.
pub fn list(backend: &dyn Backend) -> Result<BTreeMap<String, KeyFile>> {
    let mut keys = BTreeMap::new();
    for object in backend.list(KEYS_PREFIX)? {
        let Some(id) = object
            .name
            .strip_prefix(KEYS_PREFIX)
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let bytes = backend.get(&object.name)?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|err| Error::Corrupt {
            name: object.name.clone(),
            reason: err.to_string(),
        })?;
        keys.insert(id.to_owned(), file);
    }
    Ok(keys)
}

/// A fresh key id: 16 random hex digits.
fn new_id() -> Result<String> {
    Ok(hex(&random_bytes::<8>()?))
}

/// A new master key, wrapped and ready to store: everything that can fail for want of a
/// working key source (argon2id, KMS) is done before anything is written.
#[derive(Debug)]
pub struct NewKey {
    pub opened: Opened,
    bytes: Vec<u8>,
}

impl NewKey {
    /// Stores the key file.
    pub fn publish(&self, backend: &dyn Backend) -> Result<()> {
        backend.put_bytes(&key_object(&self.opened.key_id), &self.bytes)
    }
}

/// A new random master key wrapped under `kek`, not yet stored.
pub fn create(kek: &Kek) -> Result<NewKey> {
    let master = random_bytes::<MASTER_KEY_LEN>()?;
    let key_id = new_id()?;
    let bytes =
        serde_json::to_vec_pretty(&wrap(&key_id, &master, kek)?).expect("key files serialise");
    Ok(NewKey {
        opened: Opened { master, key_id },
        bytes,
    })
}

/// Stores `master` wrapped under `kek` as a new key; returns its id.
pub fn add(backend: &dyn Backend, master: &[u8; MASTER_KEY_LEN], kek: &Kek) -> Result<String> {
    let id = new_id()?;
    let file = wrap(&id, master, kek)?;
    let bytes = serde_json::to_vec_pretty(&file).expect("key files serialise");
    backend.put_bytes(&key_object(&id), &bytes)?;
    Ok(id)
}

/// Opens the master key with `kek`: the first key file it opens. A `kek` that opens none is a
/// configuration error naming it.
pub fn open(backend: &dyn Backend, kek: &Kek) -> Result<Opened> {
    let keys = list(backend)?;
    if keys.is_empty() {
        return Err(Error::NotARepository(format!(
            "encrypted, but {KEYS_PREFIX} holds no key"
        )));
    }
    for (id, file) in keys.iter().filter(|(_, file)| !mismatch(file, kek)) {
        if let Some(master) = unwrap(id, file, kek)? {
            return Ok(Opened {
                master,
                key_id: id.clone(),
            });
        }
    }
    let tried = keys.values().filter(|file| !mismatch(file, kek)).count();
    Err(Error::Encryption(match kek {
        Kek::Passphrase { from, .. } => format!(
            "the {from} opens none of the repository's {tried} passphrase key(s): wrong passphrase"
        ),
        Kek::Kms { key_id, .. } => format!(
            "KMS key {key_id} wraps none of the repository's keys ({tried} KMS key(s)): add it \
             with `backplan keys add` using a key that opens, or name the KMS key the \
             repository was made with"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    fn passphrase(text: &str) -> Kek {
        Kek::Passphrase {
            passphrase: text.as_bytes().to_vec(),
            from: "passphrase in $TEST".into(),
        }
    }

    fn cheap() {
        // SAFETY: tests of this module set it to the same value; nothing reads the environment
        // concurrently in a way that a set could tear.
        unsafe { std::env::set_var(TEST_KDF_VARIABLE, "1") };
    }

    #[test]
    fn a_passphrase_opens_its_key_and_a_wrong_one_is_a_configuration_error() {
        cheap();
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        let made = create(&passphrase("right")).unwrap();
        made.publish(&backend).unwrap();
        let made = made.opened;
        let opened = open(&backend, &passphrase("right")).unwrap();
        assert_eq!(opened.master, made.master);
        assert_eq!(opened.key_id, made.key_id);
        let err = open(&backend, &passphrase("wrong")).unwrap_err();
        assert!(matches!(err, Error::Encryption(_)), "{err}");
        assert!(err.to_string().contains("passphrase in $TEST"), "{err}");
        let stored = backend.get(&key_object(&made.key_id)).unwrap();
        assert!(!stored.windows(5).any(|w| w == b"right"));
    }

    #[test]
    fn a_second_key_opens_the_same_master_and_a_renamed_key_file_opens_nothing() {
        cheap();
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        let made = create(&passphrase("one")).unwrap();
        made.publish(&backend).unwrap();
        let made = made.opened;
        let second = add(&backend, &made.master, &passphrase("two")).unwrap();
        assert_eq!(
            open(&backend, &passphrase("two")).unwrap().master,
            made.master
        );
        assert_eq!(open(&backend, &passphrase("two")).unwrap().key_id, second);
        let bytes = backend.get(&key_object(&second)).unwrap();
        backend.delete(&key_object(&second)).unwrap();
        backend
            .put_bytes(&key_object("0000000000000000"), &bytes)
            .unwrap();
        assert!(open(&backend, &passphrase("two")).is_err());
    }

    #[test]
    fn a_key_made_at_test_cost_is_called_weak_and_one_at_the_default_is_not() {
        cheap();
        let weak = wrap("k", &[1; 32], &passphrase("x")).unwrap();
        assert!(weakness(&weak).unwrap().contains("8 KiB"), "{weak:?}");
        let mut default = weak.clone();
        default.argon2id.as_mut().unwrap().memory_kib = ARGON2_MEMORY_KIB;
        assert_eq!(weakness(&default), None);
    }

    #[test]
    fn absurd_argon2_parameters_in_a_key_file_are_refused_before_any_work() {
        let params = Argon2Params {
            memory_kib: u32::MAX,
            iterations: 1,
            parallelism: 1,
            salt: "00".repeat(16),
        };
        let err = derive(b"x", &params).unwrap_err();
        assert!(err.to_string().contains("beyond"), "{err}");
    }
}
