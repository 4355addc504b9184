//! Snapshot manifests: one sorted stream of entries, never held whole in memory.
//!
//! A manifest is zstd-compressed JSON Lines, one entry per line, sorted in walk order (by path,
//! component by component). Sorted order is what makes an incremental backup a merge-join of
//! "the tree now" against "the previous manifest" with constant memory, and what lets restore
//! and verify stream it. Entries carry the full location of every blob (pack, offset, length), so
//! reading a snapshot needs no index. Paths are kept as bytes; a path that is not UTF-8 is written
//! as `path_hex` instead of `path` (same for symlink targets).

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::blob::BlobRef;
use crate::error::{Error, IoContext, Result};
use crate::id::ContentId;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A further name of a file stored earlier in this manifest (`target` is that path).
    Hardlink,
}

/// One file, folder or link of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the backed-up root, `/`-separated; empty for the root itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits, including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Recorded to detect changes that keep size and mtime (e.g. `touch -r`); never restored.
    pub ctime_ns: i64,
    /// Recorded for change detection; never restored.
    pub inode: u64,
    /// Symlink target, or for a hard link the path of the entry it links to.
    pub target: Option<Vec<u8>>,
    /// The file's content, in order.
    pub chunks: Vec<BlobRef>,
    /// The file kept changing while it was read: its content may mix two versions.
    pub torn: bool,
}

/// Whether relative path `path` is `prefix` or lies below it (`prefix` empty means everything).
pub fn is_within(path: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/')))
}

/// The walk order: component by component, each compared as bytes; the root (empty path) first.
pub fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&byte| byte == b'/')
        .cmp(b.split(|&byte| byte == b'/'))
}

/// The JSON shape of one line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    #[serde(rename = "type")]
    kind: Kind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<BlobRef>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    torn: bool,
}

fn split_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

fn join_bytes(text: Option<String>, hex: Option<String>) -> Option<Vec<u8>> {
    match (text, hex) {
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(hex)) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect(),
        _ => None,
    }
}

impl From<&Entry> for Line {
    fn from(entry: &Entry) -> Self {
        let (path, path_hex) = split_bytes(&entry.path);
        let (target, target_hex) = entry.target.as_deref().map_or((None, None), split_bytes);
        Line {
            path,
            path_hex,
            kind: entry.kind,
            size: entry.size,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime_ns: entry.mtime_ns,
            ctime_ns: entry.ctime_ns,
            inode: entry.inode,
            target,
            target_hex,
            chunks: entry.chunks.clone(),
            torn: entry.torn,
        }
    }
}

impl Line {
    fn into_entry(self) -> Option<Entry> {
        let path = join_bytes(self.path, self.path_hex)?;
        let target = match (self.target, self.target_hex) {
            (None, None) => None,
            (text, hex) => Some(join_bytes(text, hex)?),
        };
        Some(Entry {
            path,
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            target,
            chunks: self.chunks,
            torn: self.torn,
        })
    }
}

/// A writer that hashes everything passing through.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// The manifest file once written: where it is staged and its digest.
#[derive(Debug)]
pub struct FinishedManifest {
    pub staged: PathBuf,
    /// blake3 of the compressed bytes, recorded in the snapshot header.
    pub digest: ContentId,
    pub entries: u64,
}

/// Streams sorted entries into a compressed staging file.
pub struct ManifestWriter {
    encoder: zstd::Encoder<'static, Hashing<BufWriter<File>>>,
    staged: PathBuf,
    last_path: Option<Vec<u8>>,
    entries: u64,
    line: Vec<u8>,
}

impl std::fmt::Debug for ManifestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestWriter")
            .field("staged", &self.staged)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// The zstd level manifests are written at. Level 1 is both faster and smaller than 3 on
/// manifests, which are mostly hex content ids: 65 against 73 MB for 1,000,000 files, 3.60
/// against 3.84 MB for 57,500, in half the time (a no-change run writes the whole manifest).
const MANIFEST_LEVEL: i32 = 1;

impl ManifestWriter {
    /// Starts a manifest in file `staged`.
    pub fn create(staged: &Path) -> Result<Self> {
        let file = File::create(staged).at(staged)?;
        let sink = Hashing {
            inner: BufWriter::with_capacity(256 * 1024, file),
            hasher: blake3::Hasher::new(),
        };
        let encoder = zstd::Encoder::new(sink, MANIFEST_LEVEL).at(staged)?;
        Ok(Self {
            encoder,
            staged: staged.to_owned(),
            last_path: None,
            entries: 0,
            line: Vec::with_capacity(1024),
        })
    }

    /// Appends `entry`, which must sort after the previous one.
    pub fn push(&mut self, entry: &Entry) -> Result<()> {
        if let Some(last) = &self.last_path {
            if path_order(last, &entry.path) != Ordering::Less {
                return Err(Error::Invalid(format!(
                    "manifest entries out of order: {:?} after {:?}",
                    String::from_utf8_lossy(&entry.path),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, &Line::from(entry)).expect("entries serialise");
        self.line.push(b'\n');
        self.encoder.write_all(&self.line).at(&self.staged)?;
        self.last_path = Some(entry.path.clone());
        self.entries += 1;
        Ok(())
    }

    /// Closes the stream; the staged file is complete (not yet fsynced: publishing does that).
    pub fn finish(self) -> Result<FinishedManifest> {
        let mut sink = self.encoder.finish().at(&self.staged)?;
        sink.flush().at(&self.staged)?;
        Ok(FinishedManifest {
            digest: ContentId(*sink.hasher.finalize().as_bytes()),
            staged: self.staged,
            entries: self.entries,
        })
    }
}

type Decoder = zstd::stream::read::Decoder<'static, BufReader<Hashing<Box<dyn Read + Send>>>>;

/// Streams the entries of a stored manifest, checking its digest when the stream ends.
pub struct ManifestReader {
    name: String,
    lines: BufReader<Decoder>,
    expected: ContentId,
    line: Vec<u8>,
    finished: bool,
}

impl std::fmt::Debug for ManifestReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestReader")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ManifestReader {
    /// Opens manifest object `name` whose compressed bytes must hash to `expected`.
    pub fn open(backend: &dyn Backend, name: &str, expected: ContentId) -> Result<Self> {
        let source = Hashing {
            inner: backend.open(name)?,
            hasher: blake3::Hasher::new(),
        };
        let decoder = Decoder::with_buffer(BufReader::with_capacity(256 * 1024, source))
            .map_err(|source| backend_read_error(name, source))?;
        Ok(Self {
            name: name.to_owned(),
            lines: BufReader::with_capacity(256 * 1024, decoder),
            expected,
            line: Vec::with_capacity(1024),
            finished: false,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.line.clear();
        let read = self
            .lines
            .read_until(b'\n', &mut self.line)
            .map_err(|err| Error::from_stream(err, |err| self.corrupt(err.to_string())))?;
        if read == 0 {
            // Hash whatever the decoder did not need, then compare with the snapshot header.
            let source = self.lines.get_mut().get_mut().get_mut();
            let drained = io::copy(source, &mut io::sink());
            let digest = ContentId(*source.hasher.finalize().as_bytes());
            drained.map_err(|err| Error::from_stream(err, |err| self.corrupt(err.to_string())))?;
            if digest != self.expected {
                return Err(self.corrupt("digest does not match the snapshot header"));
            }
            return Ok(None);
        }
        let line: Line =
            serde_json::from_slice(&self.line).map_err(|err| self.corrupt(err.to_string()))?;
        line.into_entry()
            .map(Some)
            .ok_or_else(|| self.corrupt("bad path or target encoding"))
    }
}

impl Iterator for ManifestReader {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = self.next_entry();
        if !matches!(next, Ok(Some(_))) {
            self.finished = true;
        }
        next.transpose()
    }
}

/// Entries decoded ahead by one thread at most.
const PREFETCH_BATCH: usize = 1024;
/// Batches decoded and not yet taken: the memory bound of a [`Prefetched`] reader.
const PREFETCH_BATCHES: usize = 4;

/// A [`ManifestReader`] decoding on a thread of its own, a few batches ahead of its caller.
///
/// Decoding (zstd, then JSON) is about half of a backup that changes nothing, whose walking
/// thread otherwise spends the rest in `lstat`: on a second core the two overlap. Entries come
/// in the same order, the digest check (or any error) last, as from the reader itself.
pub struct Prefetched {
    batches: Option<std::sync::mpsc::Receiver<Vec<Result<Entry>>>>,
    batch: std::vec::IntoIter<Result<Entry>>,
    /// The last batch came: the reader ended.
    complete: bool,
    decoder: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Prefetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetched").finish_non_exhaustive()
    }
}

impl ManifestReader {
    /// This reader, decoding ahead on a thread of its own.
    pub fn prefetched(mut self) -> Result<Prefetched> {
        let (sender, batches) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
        let decoder = std::thread::Builder::new()
            .name("manifest-reader".into())
            .spawn(move || {
                loop {
                    let batch: Vec<Result<Entry>> = self.by_ref().take(PREFETCH_BATCH).collect();
                    // A short batch, perhaps empty, is the last: it tells the end from a crash.
                    let last = batch.len() < PREFETCH_BATCH;
                    // Not sent when the caller has gone: nothing more to do.
                    if sender.send(batch).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(|err| Error::Internal(format!("starting a manifest reader: {err}")))?;
        Ok(Prefetched {
            batches: Some(batches),
            batch: Vec::new().into_iter(),
            complete: false,
            decoder: Some(decoder),
        })
    }
}

impl Iterator for Prefetched {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(entry);
            }
            match self.batches.as_ref()?.recv() {
                Ok(batch) => {
                    self.complete = batch.len() < PREFETCH_BATCH;
                    self.batch = batch.into_iter();
                }
                Err(_) => {
                    self.batches = None;
                    // Gone without its last batch: the thread panicked, and the manifest was
                    // not read to its end (nor its digest checked).
                    return (!self.complete)
                        .then(|| Err(Error::Internal("the manifest reader stopped early".into())));
                }
            }
        }
    }
}

impl Drop for Prefetched {
    /// Stops the decoding thread: it sees the channel closed at its next batch.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(decoder) = self.decoder.take() {
            let _ = decoder.join();
        }
    }
}

/// A failure to read manifest `name`: the backend's own error when its stream carried one.
fn backend_read_error(name: &str, source: io::Error) -> Error {
    Error::from_stream(source, |source| Error::Backend {
        name: name.to_owned(),
        source,
        transient: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use std::sync::Arc;

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            size: 0,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime_ns: -5,
            ctime_ns: 7,
            inode: 9,
            target: None,
            chunks: Vec::new(),
            torn: false,
        }
    }

    #[test]
    fn order_is_by_component() {
        // Bytewise, "a-b" < "a/c"; in walk order the folder "a" and all it holds come first.
        assert_eq!(path_order(b"a/c", b"a-b"), Ordering::Less);
        assert_eq!(path_order(b"", b"a"), Ordering::Less);
        assert_eq!(path_order(b"a", b"a/b"), Ordering::Less);
        assert_eq!(path_order(b"a/b", b"a/b"), Ordering::Equal);
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(!is_within(b"ab", b"a"));
        assert!(is_within(b"x", b""));
    }

    #[test]
    fn prefetched_entries_and_the_digest_check_come_as_from_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::new(dir.path()).unwrap());
        // Exactly one batch, a batch and one more, several batches and a part.
        for count in [PREFETCH_BATCH, PREFETCH_BATCH + 1, 5 * PREFETCH_BATCH + 7] {
            let staged = backend.staging_dir().join("m");
            let mut writer = ManifestWriter::create(&staged).unwrap();
            let entries: Vec<Entry> = (0..count)
                .map(|i| entry(format!("{i:08}").as_bytes(), Kind::Dir))
                .collect();
            for e in &entries {
                writer.push(e).unwrap();
            }
            let done = writer.finish().unwrap();
            backend.put_file("manifests/m", &done.staged).unwrap();
            let open = |digest| {
                ManifestReader::open(backend.as_ref(), "manifests/m", digest)
                    .unwrap()
                    .prefetched()
                    .unwrap()
            };
            let read: Vec<Entry> = open(done.digest).collect::<Result<_>>().unwrap();
            assert_eq!(read, entries, "{count}");
            let results: Vec<_> = open(ContentId::of(b"other")).collect();
            assert_eq!(results.len(), count + 1, "{count}");
            assert!(matches!(results[count], Err(Error::Corrupt { .. })));
            // Left early, the decoding thread stops.
            let mut partly = open(done.digest);
            assert!(partly.next().unwrap().is_ok());
            drop(partly);
        }
    }

    #[test]
    fn round_trip_with_non_utf8_names_and_digest_check() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let staged = backend.staging_dir().join("m");
        let mut link = entry(b"a/\xff\xfe-link", Kind::Symlink);
        link.target = Some(b"../\xfftarget".to_vec());
        let mut file = entry(b"a/file", Kind::File);
        file.size = 3;
        file.torn = true;
        file.chunks.push(BlobRef {
            id: ContentId::of(b"abc"),
            pack: "ab".repeat(16),
            offset: 10,
            length: 3,
            raw_length: 3,
            zstd: false,
        });
        let entries = vec![entry(b"", Kind::Dir), entry(b"a", Kind::Dir), file, link];

        let mut writer = ManifestWriter::create(&staged).unwrap();
        for e in &entries {
            writer.push(e).unwrap();
        }
        assert!(
            writer.push(&entry(b"a", Kind::Dir)).is_err(),
            "out of order"
        );
        let done = writer.finish().unwrap();
        assert_eq!(done.entries, 4);
        backend.put_file("manifests/m", &done.staged).unwrap();

        let read: Vec<Entry> = ManifestReader::open(backend.as_ref(), "manifests/m", done.digest)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(read, entries);

        let wrong = ContentId::of(b"other");
        let results: Vec<_> = ManifestReader::open(backend.as_ref(), "manifests/m", wrong)
            .unwrap()
            .collect();
        assert_eq!(results.len(), 5);
        assert!(matches!(results[4], Err(Error::Corrupt { .. })));
    }
}
