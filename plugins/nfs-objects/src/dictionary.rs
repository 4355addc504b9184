//! Compression dictionaries: what the files of one source share, stored once.
//!
//! Each blob is compressed alone (a restore reads any blob by its byte range), so every zstd
//! frame starts knowing nothing. In a small file, or a 512 KiB chunk of a log, much of the
//! output is the first use of each identifier, path and word that the file shares with its
//! neighbours. A dictionary trained on a sample of the source's own files gives zstd those
//! before the first byte. On the bench tree the small files' text shrank a sixth more (level 2,
//! 5,000 files: 59.6 → 50.5 MB). Blobs up to [`crate::blob::DICTIONARY_USE_MAX`] use it: on
//! larger chunks it gained less than it cost in restore time (BENCH.md).
//!
//! A repository whose config says `dictionaries: true` (every new one, unless the plan says
//! `compression_dictionary = false`) may hold dictionaries under `dictionaries/`. The first
//! backup of a source that finds none trains one before it stores anything (later ones do not
//! sample the source again): it reads up to [`SAMPLE_BYTES`] of the source's first compressible
//! small files, trains a [`DICTIONARY_SIZE`] dictionary, and keeps it only if it makes that
//! sample smaller by more than its own size. The dictionary is
//! published before any blob compressed with it. A zstd frame names its dictionary in its
//! header, so a reader needs nothing else: it loads each dictionary the first time a blob asks
//! for it, and a blob whose dictionary cannot be read is reported as unreadable on its own.
//! Dictionaries are never deleted; they are sealed like indexes in an encrypted repository
//! (they are made of the source's bytes).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::FileType;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::repo::{DICTIONARY_PREFIX, dictionary_object, object_stem};
use crate::target;
use crate::walk::{Step, Walk};

/// Size of a trained dictionary (zstd's own default). Each worker's compressor holds tables
/// built from it, each decoder a copy.
pub const DICTIONARY_SIZE: usize = 112 << 10;
/// Bytes of sample a dictionary is trained on (about 36 × its size; zstd suggests 100 ×, but
/// on the bench tree's small files, 2 MiB or 4 MiB of compressible ones trained a dictionary
/// as good as 78 MB of any kind did, in 0.14 s or 0.27 s).
const SAMPLE_BYTES: usize = 4 << 20;
/// Files up to this size are sampled whole; larger ones are left out (their chunks gain less).
const SAMPLE_FILE_MAX: u64 = 128 << 10;
/// Files shorter than this tell too little to sample.
const SAMPLE_FILE_MIN: u64 = 256;
/// The sample is taken from at most this many walked entries, so a tree of huge files only
/// or of empty ones is not walked twice for nothing.
const SAMPLE_ENTRIES_MAX: usize = 50_000;
/// Fewer compressible files than this: no dictionary (zstd cannot train on a handful).
const SAMPLE_FILES_MIN: usize = 32;

/// A dictionary's bytes, or why they cannot be had.
type Loaded = std::result::Result<Arc<[u8]>, String>;

/// The dictionaries of one repository, each loaded the first time a blob needs it.
pub struct Dictionaries {
    backend: Arc<dyn Backend>,
    loaded: Mutex<HashMap<u32, Loaded>>,
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionaries").finish_non_exhaustive()
    }
}

impl Dictionaries {
    /// The dictionaries stored in `backend` (nothing is read yet).
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Dictionary `id`, or why it cannot be had (kept: a missing dictionary is asked for once).
    pub fn get(&self, id: u32) -> Loaded {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded
            .entry(id)
            .or_insert_with(|| load(self.backend.as_ref(), id))
            .clone()
    }

    /// The ids of the dictionaries in the repository, ascending.
    pub fn list(&self) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self
            .backend
            .list(DICTIONARY_PREFIX)?
            .iter()
            .filter_map(|object| object_stem(&object.name, ".zdict"))
            .filter_map(|stem| u32::from_str_radix(stem, 16).ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The dictionary a backup compresses with: the first one stored that can be read.
    pub fn for_backup(&self) -> Result<Option<(u32, Arc<[u8]>)>> {
        Ok(self
            .list()?
            .into_iter()
            .find_map(|id| self.get(id).ok().map(|bytes| (id, bytes))))
    }

    /// Stores `dictionary` (as made by [`train`]) under its id; returns the id.
    pub fn publish(&self, dictionary: Vec<u8>) -> Result<u32> {
        let id = header_id(&dictionary)
            .ok_or_else(|| Error::Internal("a trained dictionary has no id".into()))?;
        let name = dictionary_object(id);
        if self.backend.exists(&name)? {
            return Err(Error::Internal(format!(
                "{name} already exists (a dictionary id drawn twice)"
            )));
        }
        self.backend.put_bytes(&name, &dictionary)?;
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Ok(dictionary.into()));
        Ok(id)
    }
}

/// The magic number a zstd dictionary starts with, before its 4-byte id.
const MAGIC: [u8; 4] = 0xEC30_A437_u32.to_le_bytes();

/// The id in a dictionary's header.
fn header_id(dictionary: &[u8]) -> Option<u32> {
    let header = dictionary.get(..8)?;
    (header[..4] == MAGIC).then(|| u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")))
}

/// Dictionary `id` read from `backend`, checked to be a dictionary of that id.
fn load(backend: &dyn Backend, id: u32) -> Loaded {
    let name = dictionary_object(id);
    let bytes = backend
        .get(&name)
        .map_err(|err| format!("dictionary {name}: {err}"))?;
    match header_id(&bytes) {
        Some(found) if found == id => Ok(bytes.into()),
        _ => Err(format!(
            "dictionary {name}: not a zstd dictionary of id {id:08x}"
        )),
    }
}

/// A dictionary for the files below `source`, trained on a sample of them, with a fresh
/// random id; `None` when the sample is too small or the dictionary does not pay for itself
/// on it (at zstd `level`). Files that cannot be read are left out of the sample (the backup
/// reports them).
pub fn train(source: &Path, one_file_system: bool, level: i32) -> Result<Option<Vec<u8>>> {
    let samples = sample(source, one_file_system, level)?;
    if samples.sizes.len() < SAMPLE_FILES_MIN {
        return Ok(None);
    }
    let trained = zstd::dict::from_continuous(&samples.bytes, &samples.sizes, DICTIONARY_SIZE);
    let Ok(mut dictionary) = trained else {
        return Ok(None);
    };
    if header_id(&dictionary).is_none() {
        return Ok(None);
    }
    // zstd reserves ids below 2^15 and from 2^31; ours are drawn at random between.
    let id = fastrand::u32((1 << 15)..(1 << 31));
    dictionary[4..8].copy_from_slice(&id.to_le_bytes());
    let saved = compressed_size(&samples, level, None)?.saturating_sub(compressed_size(
        &samples,
        level,
        Some(&dictionary),
    )?);
    Ok((saved > dictionary.len()).then_some(dictionary))
}

/// Files sampled for training, back to back (zstd's trainer takes them so, without a copy).
#[derive(Debug, Default)]
struct Samples {
    bytes: Vec<u8>,
    sizes: Vec<usize>,
}

impl Samples {
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.sizes.iter().scan(0, |start, &size| {
            let sample = &self.bytes[*start..*start + size];
            *start += size;
            Some(sample)
        })
    }
}

/// Bytes of `samples` compressed one by one at `level`, with `dictionary` if given.
fn compressed_size(samples: &Samples, level: i32, dictionary: Option<&[u8]>) -> Result<usize> {
    let zstd_error = |err: std::io::Error| Error::Internal(format!("zstd: {err}"));
    let mut compressor = match dictionary {
        Some(dictionary) => zstd::bulk::Compressor::with_dictionary(level, dictionary),
        None => zstd::bulk::Compressor::new(level),
    }
    .map_err(zstd_error)?;
    let mut output = Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE_FILE_MAX as usize));
    let mut total = 0;
    for sample in samples.iter() {
        output.clear();
        total += compressor
            .compress_to_buffer(sample, &mut output)
            .map_err(zstd_error)?;
    }
    Ok(total)
}

/// The first small files below `source` (walk order) that compress by at least 1/16 at
/// `level`, whole, up to [`SAMPLE_BYTES`] in all. Opened as a backup opens them: below the
/// source, through no symlink, never waiting on a fifo.
fn sample(source: &Path, one_file_system: bool, level: i32) -> Result<Samples> {
    let walk = Walk::new(source, one_file_system)?;
    let root: target::Folder = Arc::new(walk.root_folder().map_err(|err| Error::Io {
        path: source.to_owned(),
        source: err,
    })?);
    let mut compressor = zstd::bulk::Compressor::new(level)
        .map_err(|err| Error::Invalid(format!("zstd level {level}: {err}")))?;
    let mut samples = Samples::default();
    let mut read = Vec::new();
    let mut output = Vec::new();
    for step in walk.take(SAMPLE_ENTRIES_MAX) {
        let Step::Found(found) = step else { continue };
        let size = found.metadata.size;
        if found.metadata.kind != FileType::RegularFile
            || !(SAMPLE_FILE_MIN..=SAMPLE_FILE_MAX).contains(&size)
        {
            continue;
        }
        if read_small(&root, &found.relative, &mut read).is_none() {
            continue;
        }
        // Worthwhile when compression saves 1/16 (as for blobs): zstd stops at the limit.
        let limit = read.len() - read.len() / 16;
        output.resize(limit, 0);
        if compressor
            .compress_to_buffer(&read, &mut output[..limit])
            .is_ok()
        {
            samples.bytes.extend_from_slice(&read);
            samples.sizes.push(read.len());
            if samples.bytes.len() >= SAMPLE_BYTES {
                break;
            }
        }
    }
    Ok(samples)
}

/// Reads into `bytes` the regular file at `relative` below `root`, at most
/// [`SAMPLE_FILE_MAX`] bytes of it; `None` if it cannot be read or is no longer a regular file.
fn read_small(root: &target::Folder, relative: &[u8], bytes: &mut Vec<u8>) -> Option<()> {
    let file = target::open_beneath(root, relative, false).ok()?;
    if target::look_open(&file).ok()?.kind != FileType::RegularFile {
        return None;
    }
    bytes.clear();
    file.take(SAMPLE_FILE_MAX)
        .read_to_end(bytes)
        .ok()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of a made-up build log vocabulary, like the bench tree's text (no two alike).
    fn write_logs(dir: &Path, files: usize) {
        let mut rng = fastrand::Rng::with_seed(11);
        let words: Vec<String> = (0..2000)
            .map(|i| format!("src/{}/{:x}.rs", i % 37, rng.u64(..)))
            .collect();
        for n in 0..files {
            let text: String = (0..1500)
                .map(|_| words[rng.usize(..words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            std::fs::write(dir.join(format!("log-{n:04}.txt")), text).unwrap();
        }
    }

    #[test]
    fn a_dictionary_trained_on_similar_files_pays_for_itself() {
        let source = tempfile::tempdir().unwrap();
        write_logs(source.path(), 200);
        let dictionary = train(source.path(), true, 2)
            .unwrap()
            .expect("a dictionary");
        let id = header_id(&dictionary).unwrap();
        assert!(((1 << 15)..(1 << 31)).contains(&id), "{id}");
        assert!(dictionary.len() <= DICTIONARY_SIZE);
    }

    #[test]
    fn random_files_or_too_few_files_make_no_dictionary() {
        let source = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        for n in 0..100 {
            let noise: Vec<u8> = (0..8192).map(|_| rng.u8(..)).collect();
            std::fs::write(source.path().join(format!("{n}.bin")), noise).unwrap();
        }
        assert_eq!(train(source.path(), true, 2).unwrap(), None);
        let few = tempfile::tempdir().unwrap();
        write_logs(few.path(), SAMPLE_FILES_MIN - 1);
        assert_eq!(train(few.path(), true, 2).unwrap(), None);
    }

    #[test]
    fn the_sample_reads_no_link_and_no_fifo() {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::mpsc::RecvTimeoutError;

        let source = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write_logs(outside.path(), 40);
        for entry in std::fs::read_dir(outside.path()).unwrap() {
            let path = entry.unwrap().path();
            std::os::unix::fs::symlink(&path, source.path().join(path.file_name().unwrap()))
                .unwrap();
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            source.path().join("fifo"),
            FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        // Sampled on a thread: a sample that opened the fifo would wait there for a writer, and
        // the test fails (after letting it go by opening the fifo's other end) instead of hanging.
        let (done, finished) = std::sync::mpsc::channel();
        let root = source.path().to_owned();
        std::thread::spawn(move || done.send(sample(&root, true, 2).unwrap().sizes.len()));
        match finished.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(sampled) => assert_eq!(sampled, 0, "a link was followed"),
            Err(RecvTimeoutError::Disconnected) => panic!("the sample failed"),
            Err(RecvTimeoutError::Timeout) => {
                // Non-blocking, so this cannot wait in turn if the sample is stuck elsewhere.
                let _writer = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(source.path().join("fifo"));
                panic!("the sample opened the fifo and waited for a writer");
            }
        }
    }

    #[test]
    fn a_published_dictionary_is_found_and_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> =
            Arc::new(crate::backend::LocalBackend::new(dir.path()).unwrap());
        let source = tempfile::tempdir().unwrap();
        write_logs(source.path(), 100);
        let dictionary = train(source.path(), true, 2).unwrap().unwrap();
        let dictionaries = Dictionaries::new(Arc::clone(&backend));
        assert_eq!(dictionaries.for_backup().unwrap(), None);
        let id = dictionaries.publish(dictionary.clone()).unwrap();
        let fresh = Dictionaries::new(Arc::clone(&backend));
        assert_eq!(fresh.list().unwrap(), vec![id]);
        assert_eq!(&*fresh.get(id).unwrap(), &dictionary[..]);
        // A dictionary object whose header names another id is refused.
        backend
            .put_bytes(&dictionary_object(id ^ 1), &dictionary)
            .unwrap();
        let Err(err) = Dictionaries::new(backend).get(id ^ 1) else {
            panic!("a dictionary under another id's name was taken");
        };
        assert!(err.contains("not a zstd dictionary"), "{err}");
    }
}
