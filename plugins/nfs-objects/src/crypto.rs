//! The keys of an encrypted repository (format version 2), and what they seal.
//!
//! Artifact trees hold build outputs, test logs and sometimes secrets, so a repository can be
//! encrypted: every object but `config.json` and the wrapped keys under `keys/` is AES-256-GCM
//! with a random 96-bit nonce, and blob ids are keyed hashes, which reveal nothing about content.
//! Everything derives from one random 256-bit master key (see `keyring` for how it is stored):
//!
//! - `id key` = HMAC-SHA256(master, "backplan-nfs-objects/2 id"): blob ids are blake3 in keyed
//!   mode under it, so deduplication works as before and an id confirms no guess of content;
//! - `blob key` = HMAC-SHA256(master, "backplan-nfs-objects/2 blob"), and for each pack
//!   HMAC-SHA256(blob key, pack name): each stored blob is sealed on its own under its pack's
//!   key, with the blob id as associated data, so a restore still reads only a blob's bytes and
//!   a blob moved to another pack, or swapped with another of its pack, fails to open;
//! - `object key` = HMAC-SHA256(master, "backplan-nfs-objects/2 object"), and for each object
//!   HMAC-SHA256(object key, object name): indexes, manifests and snapshot headers are sealed
//!   whole under the key of their name, in segments (see [`SEGMENT`]), so a valid object put
//!   under another name, cut short or reordered fails to open.
//!
//! A key per pack and per object keeps each key's random nonces far below the 2^32 messages
//! that AES-GCM allows one key: a pack holds at most some thousands of blobs.
//!
//! AES-256-GCM of aws-lc-rs: the AWS SDK's TLS already links it (no new build), and on this
//! CPU it seals 4 MiB buffers about four times as fast as RustCrypto's `aes-gcm` (FORMAT.md has
//! the figures); everything here is standard (AES-GCM, HMAC-SHA256, blake3 keyed), so an
//! operator can decrypt by hand with Python's `cryptography` (FORMAT.md has the recipe).

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use aws_lc_rs::hmac;

use crate::error::{Error, Result};
use crate::id::ContentId;

/// Bytes of a nonce, stored before each sealed blob or segment.
pub const NONCE: usize = NONCE_LEN;
/// Bytes of an authentication tag, stored after each sealed blob or segment.
pub const TAG: usize = 16;
/// What sealing adds to a blob or a segment: its nonce and its tag.
pub const OVERHEAD: usize = NONCE + TAG;
/// Plaintext bytes of each segment of a sealed object but the last (which holds the rest, 0 to
/// `SEGMENT` bytes): a manifest is opened as a stream, one segment in memory at a time.
pub const SEGMENT: usize = 1 << 20;
/// The name of the construction, as `config.json` records it.
pub const ALGORITHM: &str = "aes-256-gcm";

/// Length of a master key.
pub const MASTER_KEY_LEN: usize = 32;

/// What a repository's objects are sealed with: nothing (version 1, plaintext) or the keys
/// derived from its master key. Cheap to clone; every worker holds one.
#[derive(Clone, Default)]
pub struct Keys(Option<Arc<Derived>>);

struct Derived {
    id: [u8; 32],
    blob: hmac::Key,
    object: hmac::Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Keys")
            .field(&if self.is_encrypted() {
                "encrypted"
            } else {
                "plaintext"
            })
            .finish()
    }
}

/// HMAC-SHA256 of `message` under `key`.
fn derive(key: &hmac::Key, message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(key, message);
    tag.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The AES-256-GCM key of 32 bytes `key`.
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256 keys are 32 bytes"))
}

/// A fresh random nonce.
fn random_nonce() -> Result<[u8; NONCE]> {
    random_bytes()
}

/// `N` bytes from the system's random generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0; N];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Internal("the random number generator failed".into()))?;
    Ok(bytes)
}

/// Associated data of segment `index` of an object (`last`: whether it ends the object).
fn segment_aad(index: u64, last: bool) -> [u8; 9] {
    let mut aad = [0; 9];
    aad[..8].copy_from_slice(&index.to_be_bytes());
    aad[8] = u8::from(last);
    aad
}

impl Keys {
    /// No encryption: a version-1 repository.
    pub fn plaintext() -> Self {
        Self(None)
    }

    /// The keys derived from `master`.
    pub fn from_master(master: &[u8; MASTER_KEY_LEN]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, master);
        let sub = |purpose: &str| {
            derive(
                &master,
                format!("backplan-nfs-objects/2 {purpose}").as_bytes(),
            )
        };
        Self(Some(Arc::new(Derived {
            id: sub("id"),
            blob: hmac::Key::new(hmac::HMAC_SHA256, &sub("blob")),
            object: hmac::Key::new(hmac::HMAC_SHA256, &sub("object")),
        })))
    }

    /// Whether objects are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// The id of blob content `data`: blake3, keyed when the repository is encrypted.
    pub fn id_of(&self, data: &[u8]) -> ContentId {
        match &self.0 {
            Some(keys) => ContentId(*blake3::keyed_hash(&keys.id, data).as_bytes()),
            None => ContentId::of(data),
        }
    }

    /// What sealing adds to a stored blob: [`OVERHEAD`] bytes, or none in plaintext.
    pub fn blob_overhead(&self) -> u64 {
        if self.is_encrypted() {
            OVERHEAD as u64
        } else {
            0
        }
    }

    /// The key that seals the blobs of pack `pack`, if the repository is encrypted.
    pub fn pack_key(&self, pack: &str) -> Option<PackKey> {
        let keys = self.0.as_ref()?;
        Some(PackKey {
            pack: pack.to_owned(),
            key: aead_key(&derive(&keys.blob, pack.as_bytes())),
        })
    }

    /// The key that seals object `name`, if the repository is encrypted.
    pub fn object_key(&self, name: &str) -> Option<ObjectKey> {
        let keys = self.0.as_ref()?;
        Some(ObjectKey {
            name: name.to_owned(),
            key: aead_key(&derive(&keys.object, name.as_bytes())),
        })
    }
}

/// The key of one pack's blobs.
pub struct PackKey {
    pack: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for PackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackKey")
            .field("pack", &self.pack)
            .finish_non_exhaustive()
    }
}

impl PackKey {
    /// The pack these blobs belong to.
    pub fn pack(&self) -> &str {
        &self.pack
    }

    /// Seals stored blob `stored` of id `id` in place (it becomes the ciphertext); returns the
    /// nonce to store before it and the tag to store after it.
    pub fn seal_in_place(&self, id: &ContentId, stored: &mut [u8]) -> Result<([u8; NONCE], Tag)> {
        let nonce = random_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&id.0),
                stored,
            )
            .map_err(|_| Error::Internal("AES-GCM sealing failed".into()))?;
        Ok((nonce, tag))
    }

    /// Opens sealed blob `sealed` of id `id` into `out` (which must be `sealed.len() -
    /// OVERHEAD` bytes long); `Err` with why when it does not open.
    pub fn open(
        &self,
        id: &ContentId,
        sealed: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<(), String> {
        open_into(&self.key, &Aad::from(&id.0), sealed, out)
    }
}

/// Opens `sealed` (nonce, ciphertext, tag) into `out`, of the ciphertext's length.
fn open_into(
    key: &LessSafeKey,
    aad: &Aad<&[u8]>,
    sealed: &[u8],
    out: &mut [u8],
) -> std::result::Result<(), String> {
    if sealed.len() < OVERHEAD || out.len() != sealed.len() - OVERHEAD {
        return Err(format!(
            "{} bytes cannot be a sealed piece (nonce and tag alone are {OVERHEAD})",
            sealed.len()
        ));
    }
    let (nonce, rest) = sealed.split_at(NONCE);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce length");
    key.open_separate_gather(nonce, Aad::from(aad.as_ref()), ciphertext, tag, out)
        .map_err(|_| {
            "authentication failed: damaged, moved from another name, or not sealed with this \
             repository's key"
                .to_owned()
        })
}

/// The key of one sealed object (index, manifest, snapshot header).
pub struct ObjectKey {
    name: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ObjectKey {
    /// The sealed form of `plaintext`: its segments, each nonce, ciphertext, tag.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let segments = plaintext.len().div_ceil(SEGMENT).max(1);
        let mut out = Vec::with_capacity(plaintext.len() + segments * OVERHEAD);
        let mut pieces = plaintext.chunks(SEGMENT).peekable();
        let mut index = 0;
        loop {
            let piece = pieces.next().unwrap_or_default();
            let last = pieces.peek().is_none();
            self.seal_segment(index, last, piece, &mut out)?;
            if last {
                return Ok(out);
            }
            index += 1;
        }
    }

    /// Appends segment `index` holding `piece` to `out`.
    pub fn seal_segment(
        &self,
        index: u64,
        last: bool,
        piece: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let nonce = random_nonce()?;
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(piece);
        let tag: Tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(segment_aad(index, last)),
                &mut out[start..],
            )
            .map_err(|_| Error::Internal("AES-GCM sealing failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The plaintext of the whole sealed object `sealed`.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(sealed.len());
        let pieces: Vec<&[u8]> = if sealed.is_empty() {
            vec![sealed]
        } else {
            sealed.chunks(SEGMENT + OVERHEAD).collect()
        };
        let count = pieces.len();
        for (index, piece) in pieces.into_iter().enumerate() {
            self.open_segment(index as u64, index + 1 == count, piece, &mut out)?;
        }
        Ok(out)
    }

    /// Appends the plaintext of segment `index` (`last`: whether the object ends with it),
    /// sealed as `piece`, to `out`.
    pub fn open_segment(
        &self,
        index: u64,
        last: bool,
        piece: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        out.resize(start + piece.len().saturating_sub(OVERHEAD), 0);
        open_into(
            &self.key,
            &Aad::from(&segment_aad(index, last)[..]),
            piece,
            &mut out[start..],
        )
        .map_err(|reason| Error::Corrupt {
            name: self.name.clone(),
            reason: format!("segment {index}: {reason}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_master(&[7; 32])
    }

    #[test]
    fn blob_ids_are_keyed_and_plain_ids_are_plain_blake3() {
        assert_eq!(Keys::plaintext().id_of(b"x"), ContentId::of(b"x"));
        assert_ne!(keys().id_of(b"x"), ContentId::of(b"x"));
        assert_eq!(keys().id_of(b"x"), keys().id_of(b"x"));
        assert_ne!(keys().id_of(b"x"), Keys::from_master(&[8; 32]).id_of(b"x"));
    }

    #[test]
    fn a_blob_opens_only_in_its_pack_under_its_id() {
        let keys = keys();
        let id = keys.id_of(b"secret");
        let pack = keys.pack_key(&"a".repeat(32)).unwrap();
        let mut blob = b"secret".to_vec();
        let (nonce, tag) = pack.seal_in_place(&id, &mut blob).unwrap();
        let sealed = [&nonce[..], &blob, tag.as_ref()].concat();
        assert_eq!(sealed.len(), 6 + OVERHEAD);
        let mut out = vec![0; 6];
        pack.open(&id, &sealed, &mut out).unwrap();
        assert_eq!(out, b"secret");
        let other = keys.pack_key(&"b".repeat(32)).unwrap();
        assert!(
            other.open(&id, &sealed, &mut out).is_err(),
            "moved to another pack"
        );
        assert!(
            pack.open(&keys.id_of(b"x"), &sealed, &mut out).is_err(),
            "another id"
        );
        let mut flipped = sealed.clone();
        flipped[NONCE + 2] ^= 1;
        assert!(pack.open(&id, &flipped, &mut out).is_err(), "flipped byte");
    }

    #[test]
    fn an_object_opens_only_under_its_name_whole_and_in_order() {
        let keys = keys();
        let key = keys.object_key("manifests/a.jsonl.zst").unwrap();
        for len in [0, 5, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 3] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = key.seal(&plain).unwrap();
            assert_eq!(key.open(&sealed).unwrap(), plain, "{len}");
        }
        let plain = vec![1; 2 * SEGMENT + 3];
        let sealed = key.seal(&plain).unwrap();
        let other = keys.object_key("manifests/b.jsonl.zst").unwrap();
        assert!(other.open(&sealed).is_err(), "another name");
        let cut = &sealed[..2 * (SEGMENT + OVERHEAD)];
        assert!(key.open(cut).is_err(), "cut at a segment boundary");
        let mut swapped = sealed[SEGMENT + OVERHEAD..2 * (SEGMENT + OVERHEAD)].to_vec();
        swapped.extend_from_slice(&sealed[..SEGMENT + OVERHEAD]);
        swapped.extend_from_slice(&sealed[2 * (SEGMENT + OVERHEAD)..]);
        assert!(key.open(&swapped).is_err(), "segments reordered");
    }
}
