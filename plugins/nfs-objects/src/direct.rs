//! Reading and writing large data around the page cache (`O_DIRECT`).
//!
//! A backup reads each large file once and writes packs that are not read back soon; a restore
//! writes large files once; and the packs must reach the disk before the snapshot is published
//! anyway. Through the page
//! cache, every byte is first copied into a freshly allocated cache page and later written back
//! by the kernel: on the 2-core VMs we measure on, that copy into new pages costs about 2 s of
//! CPU per GB (the host backs each new guest page on first touch), more than zstd spends on the
//! same data, and a pack's fsync then waits for the writeback. With `O_DIRECT` the disk reads
//! straight from our buffer: ~0.4 s of CPU per GB, the data is on the disk when `write` returns,
//! and the machine's page cache (the CI server's working set) is not evicted by a backup.
//! Reading large files directly likewise spares the copy out of the cache (~1 s of CPU in a
//! 1.8 GB backup here) and the eviction, at the price of reading the disk even when the file
//! was cached; more workers than cores hide that wait.
//!
//! `O_DIRECT` needs the buffer address, the file offset and the length to be multiples of the
//! device's block size; [`ALIGN`] (4 KiB) covers every common device. Writers here only ever
//! write whole aligned blocks, padding the last one with zeros, and cut the file back to its
//! true length with `ftruncate` before it is synced. Filesystems without `O_DIRECT` (tmpfs,
//! some FUSE) refuse it with `EINVAL`, at `open` or at the first write; the file then falls back
//! to ordinary buffered writes, which are always correct.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Whether large reads and writes go around the page cache: the step's `direct_io`.
///
/// On an NFS (or other network) client, `O_DIRECT` also bypasses the client's cache and turns
/// every read and write into a synchronous round trip to the server, so `auto` keeps it for
/// local filesystems only.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DirectIo {
    /// On for local filesystems, off for network ones (NFS, SMB/CIFS, FUSE, Ceph, 9p, …).
    #[default]
    Auto,
    /// Always (where the filesystem accepts `O_DIRECT`).
    On,
    /// Never: every read and write through the page cache.
    Off,
}

impl DirectIo {
    /// Whether I/O on files under `path` should be direct. `auto` on a path whose filesystem
    /// cannot be told (it does not exist yet) looks at its nearest existing parent.
    pub fn applies_to(self, path: &Path) -> bool {
        match self {
            DirectIo::On => true,
            DirectIo::Off => false,
            DirectIo::Auto => !path
                .ancestors()
                .find_map(|at| rustix::fs::statfs(at).ok())
                .is_some_and(|fs| is_network_filesystem(fs.f_type)),
        }
    }
}

/// Whether a `statfs` filesystem type is one reached over the network (or through FUSE, whose
/// servers are often remote: sshfs, s3fs).
fn is_network_filesystem(f_type: i64) -> bool {
    const NETWORK: [i64; 12] = [
        0x6969,                 // NFS
        0x517B,                 // SMB
        0xFF53_4D42_u32 as i64, // CIFS
        0xFE53_4D42_u32 as i64, // SMB2
        0x6573_5546,            // FUSE
        0x00C3_6400,            // Ceph
        0x0102_1997,            // 9p
        0x5346_414F,            // AFS
        0x7375_7245,            // Coda
        0x0116_1970,            // GFS2
        0x7461_636F,            // OCFS2
        0x0BD0_0BD0,            // Lustre
    ];
    NETWORK.contains(&f_type) || NETWORK.contains(&(f_type & 0xFFFF_FFFF))
}

/// Alignment of buffers, offsets and lengths for `O_DIRECT`.
pub const ALIGN: usize = 4096;

/// `n` rounded up to a multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A byte buffer whose start is [`ALIGN`]ed, without unsafe code: a `Vec` one block longer than
/// needed, used from its first aligned address. The `Vec` is never grown after creation, so the
/// address stays put.
pub struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl AlignedBuffer {
    /// An empty buffer able to hold `capacity` bytes (rounded up to whole blocks).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = align_up(capacity.max(1));
        let storage = vec![0; capacity + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Self {
            storage,
            start,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.storage.len() - ALIGN
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn spare(&self) -> usize {
        self.capacity() - self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// The first `len` bytes, to be written into (e.g. as a read or decompression target); sets
    /// the length to `len`. A buffer too small is first replaced by a larger one, dropping its
    /// content.
    pub fn fill_area(&mut self, len: usize) -> &mut [u8] {
        if self.capacity() < len {
            *self = Self::with_capacity(len);
        }
        self.len = len;
        &mut self.storage[self.start..self.start + len]
    }

    /// Sets the length to `len` (at most what [`fill_area`](Self::fill_area) last exposed).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends as much of `data` as fits; how many bytes were taken.
    pub fn append(&mut self, data: &[u8]) -> usize {
        let taken = data.len().min(self.spare());
        let at = self.start + self.len;
        self.storage[at..at + taken].copy_from_slice(&data[..taken]);
        self.len += taken;
        taken
    }

    /// Replaces the content with `data`.
    pub fn copy_from(&mut self, data: &[u8]) {
        self.fill_area(data.len()).copy_from_slice(data);
    }

    /// The content followed by zeros up to the next block boundary (the padding is written into
    /// the buffer's spare room, which always covers it because the capacity is whole blocks).
    pub fn padded(&mut self) -> &[u8] {
        let end = align_up(self.len);
        let at = self.start + self.len;
        self.storage[at..self.start + end].fill(0);
        &self.storage[self.start..self.start + end]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A file written with `O_DIRECT` where the filesystem allows it, buffered otherwise.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    direct: bool,
}

impl DirectFile {
    /// Creates (or truncates) `path` for writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let open = |flags| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        match open(libc::O_DIRECT) {
            Ok(file) => Ok(Self { file, direct: true }),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(Self {
                file: open(0)?,
                direct: false,
            }),
            Err(err) => Err(err),
        }
    }

    /// Creates (or truncates) `path` for ordinary buffered writes.
    pub fn create_buffered(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            file,
            direct: false,
        })
    }

    /// Wraps `file`, already open for writing; `direct` says whether `O_DIRECT` is set on it.
    pub fn from_open(file: File, direct: bool) -> Self {
        Self { file, direct }
    }

    /// Whether writes still bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes all of `data` at `offset`. A direct write needs `data` to start at an aligned
    /// address and `offset` and `data.len()` to be multiples of [`ALIGN`] (see [`is_aligned`]);
    /// a write the filesystem refuses (`EINVAL`: unaligned, or no `O_DIRECT` support) is done
    /// buffered instead, and so is every later write to this file.
    pub fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            match self.file.write_all_at(data, offset) {
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => self.stop_direct()?,
                done => return done,
            }
        }
        self.file.write_all_at(data, offset)
    }

    /// Clears `O_DIRECT` on the open file.
    fn stop_direct(&mut self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: `fd` is an open descriptor owned by `self.file`; F_GETFL/F_SETFL only read and
        // change its status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }
}

/// Whether `data` at `offset` meets `O_DIRECT`'s alignment.
pub fn is_aligned(data: &[u8], offset: u64) -> bool {
    data.as_ptr().align_offset(ALIGN) == 0 && offset % ALIGN as u64 == 0 && data.len() % ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_auto_is_off_only_on_network_filesystems() {
        assert!(is_network_filesystem(0x6969), "NFS");
        assert!(
            is_network_filesystem(0xFF53_4D42_u32 as i32 as i64),
            "CIFS, signed f_type"
        );
        assert!(!is_network_filesystem(0xEF53), "ext4");
        assert!(!is_network_filesystem(0x0102_1994), "tmpfs");
        let here = tempfile::tempdir().unwrap();
        let not_yet = here.path().join("to/be/made");
        assert!(
            DirectIo::Auto.applies_to(&not_yet),
            "a local folder not made yet"
        );
        assert!(DirectIo::On.applies_to(&not_yet));
        assert!(!DirectIo::Off.applies_to(here.path()));
    }

    #[test]
    fn buffers_are_aligned_and_pad_with_zeros() {
        let mut buffer = AlignedBuffer::with_capacity(10);
        assert_eq!(buffer.capacity(), ALIGN);
        assert_eq!(buffer.append(b"abc"), 3);
        assert_eq!(buffer.as_slice().as_ptr().align_offset(ALIGN), 0);
        buffer.storage[buffer.start + 3] = 9; // stale byte from earlier use
        let padded = buffer.padded();
        assert_eq!(padded.len(), ALIGN);
        assert_eq!(&padded[..4], b"abc\0");
        assert_eq!(buffer.append(&vec![1; 2 * ALIGN]), ALIGN - 3);
        assert_eq!(buffer.spare(), 0);
    }

    #[test]
    fn direct_writes_then_truncate_give_the_exact_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = DirectFile::create(&path).unwrap();
        let mut buffer = AlignedBuffer::with_capacity(2 * ALIGN);
        let data: Vec<u8> = (0..ALIGN + 100).map(|i| (i % 251) as u8).collect();
        buffer.append(&data);
        file.write_all_at(buffer.padded(), 0).unwrap();
        file.file().set_len(data.len() as u64).unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_refused_direct_write_is_done_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = DirectFile::create(&path).unwrap();
        // Unaligned address, offset and length: ext4 and xfs refuse this with EINVAL.
        file.write_all_at(b"odd length", 3).unwrap();
        file.write_all_at(b"!", 13).unwrap();
        if on_ext4(dir.path()) {
            assert!(!file.is_direct());
        }
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0odd length!");
    }

    fn on_ext4(path: &Path) -> bool {
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct given a NUL-terminated path.
        unsafe {
            let mut stat: libc::statfs = std::mem::zeroed();
            libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == EXT4_SUPER_MAGIC
        }
    }
}
