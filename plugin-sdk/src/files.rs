//! Files a plugin keeps a backup in: written atomically, checksummed, checked again later.
//!
//! Every plugin that backs up into files needs the same few things done right, so they are here
//! once. A file is written to a fresh temporary name next to its target (created exclusively, so
//! a symlink planted there is never written through, and two writers never share one), synced,
//! renamed over the target and the folder synced: a failed, cancelled or killed write never
//! leaves half a file where a good one is expected, and a failed or cancelled one removes its
//! temporary file. (After a SIGKILL a hidden `.NAME.PID-N.partial` may stay behind; it is never
//! mistaken for the target.) The bytes are counted and hashed (SHA-256) on the way, progress is
//! reported in bytes, cancellation is honoured between chunks, and every error names the path.
//! Missing folders above the file are created first.
//!
//! The file gets the mode the process's umask gives a new file; a plugin that must keep an
//! original file's permissions sets them itself.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Context, IoResultExt, PluginError, PluginResult, Progress};

/// How much is read or written between two cancellation checks.
const CHUNK: usize = 64 * 1024;

/// How many temporary names are tried before giving up (each taken one is a killed writer's).
const TEMP_ATTEMPTS: u32 = 100;

/// The size and SHA-256 of a file's bytes: what a record keeps to prove the file unchanged.
///
/// Put it in a record with `#[serde(flatten)]` to store `size` and `sha256` as two fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checksum {
    /// The number of bytes.
    pub size: u64,
    /// Their SHA-256, lower-case hex.
    pub sha256: String,
}

impl fmt::Display for Checksum {
    /// `19 bytes, sha256 3b5d3c7d207e…`: short enough for a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.sha256.get(..12).unwrap_or(&self.sha256);
        write!(f, "{} bytes, sha256 {short}…", self.size)
    }
}

/// The size of the regular file at `path` (following symlinks). A missing file, a folder, a FIFO
/// or a device is a permanent error naming the path.
pub fn regular_file_size(path: &Path) -> PluginResult<u64> {
    let meta = fs::metadata(path).io_context("cannot read", path)?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    Ok(meta.len())
}

/// Reads the regular file at `path` once and returns its [`Checksum`].
pub fn checksum(ctx: &Context, path: &Path) -> PluginResult<Checksum> {
    let (mut file, total) = open_regular(path)?;
    let mut tally = Tally::new(
        io::sink(),
        ctx,
        format!("reading {}", path.display()),
        total,
    );
    // Writing to a sink never fails, so `to` never shows up in an error.
    pump(ctx, &mut file, path, &mut tally, path)?;
    Ok(tally.finish().1)
}

/// Confirms that the file at `path` still has the `expected` size and SHA-256; a missing or
/// changed file is a permanent error (retrying will not mend it) that gives both checksums.
pub fn verify_checksum(ctx: &Context, path: &Path, expected: &Checksum) -> PluginResult<()> {
    let found = checksum(ctx, path)?;
    if found != *expected {
        return Err(PluginError::permanent(format!(
            "checksum mismatch: {} has sha256 {} ({} bytes), the backup recorded {} ({} bytes)",
            path.display(),
            found.sha256,
            found.size,
            expected.sha256,
            expected.size
        )));
    }
    Ok(())
}

/// Copies the regular file `from` to `to` atomically (see the module docs) and returns the
/// [`Checksum`] of the bytes written. Missing folders above `to` are created.
pub fn copy(ctx: &Context, from: &Path, to: &Path) -> PluginResult<Checksum> {
    copy_checked(ctx, from, to, None)
}

/// Copies `from` to `to` like [`copy`], but puts the copy in place only if its bytes have the
/// `expected` checksum (a restore's last line of defence): otherwise `to` is left as it was and
/// the error is a permanent checksum mismatch.
pub fn copy_verified(
    ctx: &Context,
    from: &Path,
    to: &Path,
    expected: &Checksum,
) -> PluginResult<()> {
    copy_checked(ctx, from, to, Some(expected)).map(drop)
}

fn copy_checked(
    ctx: &Context,
    from: &Path,
    to: &Path,
    expected: Option<&Checksum>,
) -> PluginResult<Checksum> {
    let (mut source, total) = open_regular(from)?;
    let label = format!("copying {}", from.display());
    write_with(ctx, to, label, total, expected, |out| {
        pump(ctx, &mut source, from, out, to)
    })
}

/// Whether a restore must write `target`, by the rule every restore follows: never destroy data
/// that is not in the backup unless the operator said `--force`.
///
/// `Ok(false)`: `target` already holds exactly the `expected` bytes, there is nothing to do.
/// `Ok(true)`: `target` does not exist, or it differs and `--force` was given (a warning is
/// logged). An error: it differs and `--force` was not given (a permanent refusal that says how
/// to proceed), or it cannot be read, or it is not a regular file.
pub fn needs_restore(ctx: &Context, target: &Path, expected: &Checksum) -> PluginResult<bool> {
    // A dangling symlink counts as missing: the rename replaces the link, never its target.
    if fs::metadata(target).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        return Ok(true);
    }
    let found = checksum(ctx, target)?;
    if found == *expected {
        return Ok(false);
    }
    let shown = target.display();
    if !ctx.force() {
        return Err(PluginError::permanent(format!(
            "refusing to overwrite {shown}: it differs from the backup (sha256 {}, the backup \
             has {})",
            found.sha256, expected.sha256
        ))
        .with_detail("restore with --force to overwrite it"));
    }
    ctx.warn(format!(
        "overwriting {shown}, which differs from the backup (--force)"
    ));
    Ok(true)
}

/// A config error unless `path` (the config key `key`) is absolute.
pub fn require_absolute(key: &str, path: &Path) -> PluginResult<()> {
    if !path.is_absolute() {
        return Err(PluginError::config(format!(
            "`{key}` must be an absolute path, not {}",
            path.display()
        )));
    }
    Ok(())
}

/// A config error unless `path` (the config key `key`) is a place to write into: absolute, and a
/// folder if it exists at all (a missing one is created when needed).
pub fn require_destination(key: &str, path: &Path) -> PluginResult<()> {
    require_absolute(key, path)?;
    if path.exists() && !path.is_dir() {
        return Err(PluginError::config(format!(
            "`{key}` {} exists and is not a folder",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `path` atomically (see the module docs) with what `write` writes, and returns the
/// [`Checksum`] of those bytes. Missing folders above `path` are created.
///
/// A write that fails or is cancelled (the writer then fails with an error, and the result is
/// [`PluginError::cancelled`]) leaves `path` as it was.
pub fn write_atomically(
    ctx: &Context,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> PluginResult<()>,
) -> PluginResult<Checksum> {
    let label = format!("writing {}", path.display());
    write_with(ctx, path, label, None, None, |out| write(out))
}

/// Writes `path` atomically through `write`; with `expected`, only if the bytes have it.
fn write_with(
    ctx: &Context,
    path: &Path,
    label: String,
    total: Option<u64>,
    expected: Option<&Checksum>,
    write: impl FnOnce(&mut Tally<'_, BufWriter<&File>>) -> PluginResult<()>,
) -> PluginResult<Checksum> {
    if let Some(folder) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(folder).io_context("cannot create", folder)?;
    }
    let temp = TempFile::next_to(path)?;
    let mut out = Tally::new(
        BufWriter::with_capacity(CHUNK, &temp.file),
        ctx,
        label,
        total,
    );
    let written = write(&mut out).and_then(|()| out.flush().io_context("cannot write", &temp.path));
    if let Err(error) = written {
        return Err(if ctx.is_cancelled() {
            PluginError::cancelled()
        } else {
            error
        });
    }
    let (_, checksum) = out.finish();
    if let Some(expected) = expected.filter(|expected| **expected != checksum) {
        return Err(PluginError::permanent(format!(
            "checksum mismatch: the copy for {} has sha256 {} ({} bytes), the backup recorded {} \
             ({} bytes); {} was left as it was",
            path.display(),
            checksum.sha256,
            checksum.size,
            expected.sha256,
            expected.size,
            path.display()
        )));
    }
    temp.file.sync_all().io_context("cannot sync", &temp.path)?;
    temp.rename_to(path)?;
    Ok(checksum)
}

/// Opens `path` for reading if it is a regular file, with its size. Checked before opening (so a
/// FIFO never blocks the open) and again on the open file (so nothing was swapped in between).
fn open_regular(path: &Path) -> PluginResult<(File, Option<u64>)> {
    regular_file_size(path)?;
    let file = File::open(path).io_context("cannot open", path)?;
    let meta = file.metadata().io_context("cannot read", path)?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    Ok((file, Some(meta.len())))
}

fn not_regular(path: &Path) -> PluginError {
    PluginError::permanent(format!("{} is not a regular file", path.display()))
}

/// Moves every byte of `from` (the file at `path`) into `out` (bound for `to`), checking for
/// cancellation between chunks.
fn pump(
    ctx: &Context,
    from: &mut File,
    path: &Path,
    out: &mut Tally<'_, impl Write>,
    to: &Path,
) -> PluginResult<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        ctx.check_cancelled()?;
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PluginError::io("cannot read", path, &e)),
        };
        out.write_all(&buf[..n]).io_context("cannot write", to)?;
    }
}

/// A writer that counts and hashes what passes through, reports progress, and fails once the
/// action is cancelled.
struct Tally<'c, W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    ctx: &'c Context,
    label: String,
    total: Option<u64>,
}

impl<'c, W: Write> Tally<'c, W> {
    fn new(inner: W, ctx: &'c Context, label: String, total: Option<u64>) -> Self {
        Tally {
            inner,
            hasher: Sha256::new(),
            size: 0,
            ctx,
            label,
            total,
        }
    }

    fn finish(self) -> (W, Checksum) {
        let sha256 = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = self.size;
        (self.inner, Checksum { size, sha256 })
    }
}

impl<W: Write> Write for Tally<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ctx.is_cancelled() {
            return Err(io::Error::other("the action was cancelled"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        let total = self.total;
        self.ctx
            .progress(Progress::bytes(self.size, total, self.label.as_str()));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A temporary file next to a target, removed on drop unless renamed over the target.
struct TempFile {
    path: PathBuf,
    file: File,
    renamed: bool,
}

impl TempFile {
    /// Creates a fresh `.NAME.PID-N.partial` in `target`'s folder, never opening an existing one.
    fn next_to(target: &Path) -> PluginResult<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = target
            .file_name()
            .ok_or_else(|| PluginError::permanent(format!("{} names no file", target.display())))?
            .to_string_lossy();
        for _ in 0..TEMP_ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = target.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        renamed: false,
                    });
                }
                // Left by a process with the same id that was killed: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(PluginError::io("cannot create", &path, &e)),
            }
        }
        Err(PluginError::permanent(format!(
            "cannot create a temporary file next to {}: {TEMP_ATTEMPTS} names were taken",
            target.display()
        )))
    }

    /// Renames the (complete, synced) file over `target` and syncs the folder, so the new name
    /// survives a power cut.
    fn rename_to(mut self, target: &Path) -> PluginResult<()> {
        fs::rename(&self.path, target).io_context("cannot rename into", target)?;
        self.renamed = true;
        let folder = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(folder)
            .and_then(|dir| dir.sync_all())
            .io_context("cannot sync", folder)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;

    use serde_json::json;

    use super::*;
    use crate::abi::link::HostLink;
    use crate::abi::{ABI_VERSION, HostApi};
    use crate::{ErrorKind, Request};

    unsafe extern "C" fn no_log(_: *const c_void, _: u32, _: *const u8, _: usize) {}
    unsafe extern "C" fn no_progress(_: *const c_void, _: *const u8, _: usize) {}
    unsafe extern "C" fn never(_: *const c_void) -> u8 {
        0
    }
    unsafe extern "C" fn always(_: *const c_void) -> u8 {
        1
    }

    /// A context whose host says "cancelled" or never does.
    fn context(cancelled: bool) -> Context {
        context_with(cancelled, false)
    }

    /// A context for a restore, with or without `--force`.
    fn restoring(force: bool) -> Context {
        context_with(false, force)
    }

    fn context_with(cancelled: bool, force: bool) -> Context {
        let api = Box::leak(Box::new(HostApi {
            abi_version: ABI_VERSION,
            struct_size: size_of::<HostApi>() as u32,
            ctx: std::ptr::null(),
            log: no_log,
            progress: no_progress,
            is_cancelled: if cancelled { always } else { never },
        }));
        let request: Request = serde_json::from_value(json!({
            "action": "restore", "plan": "p", "run_id": "r", "step_id": "s", "config": {},
            "force": force,
        }))
        .unwrap();
        Context::new(request, HostLink::new(api))
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn copy_writes_the_bytes_and_returns_their_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&from, b"abc").unwrap();
        let checksum = copy(&context(false), &from, &to).unwrap();
        assert_eq!((checksum.size, checksum.sha256.as_str()), (3, ABC_SHA256));
        assert_eq!(fs::read(&to).unwrap(), b"abc");
        assert_eq!(names(dir.path()), ["a", "b"], "no temporary file is left");
        assert_eq!(checksum.to_string(), "3 bytes, sha256 ba7816bf8f01…");
        verify_checksum(&context(false), &to, &checksum).unwrap();
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to, victim) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("victim"),
        );
        fs::write(&from, b"abc").unwrap();
        fs::write(&victim, b"precious").unwrap();
        for n in 0..64 {
            let planted = dir
                .path()
                .join(format!(".b.{}-{n}.partial", std::process::id()));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        copy(&context(false), &from, &to).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&to).unwrap(), b"abc");
    }

    #[test]
    fn a_target_that_is_a_symlink_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to, victim) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("victim"),
        );
        fs::write(&from, b"abc").unwrap();
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &to).unwrap();
        copy(&context(false), &from, &to).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&to).unwrap().is_file());
        assert_eq!(fs::read(&to).unwrap(), b"abc");
    }

    #[test]
    fn a_cancelled_copy_leaves_the_target_as_it_was_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&from, b"abc").unwrap();
        fs::write(&to, b"the good old copy").unwrap();
        let err = copy(&context(true), &from, &to).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        assert_eq!(fs::read(&to).unwrap(), b"the good old copy");
        assert_eq!(names(dir.path()), ["a", "b"]);
    }

    #[test]
    fn a_failed_write_leaves_the_target_as_it_was_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("dump");
        fs::write(&to, b"the good old dump").unwrap();
        let err = write_atomically(&context(false), &to, |out| {
            out.write_all(b"half a dump").unwrap();
            Err(PluginError::permanent("the dump tool failed"))
        })
        .unwrap_err();
        assert_eq!(err.message, "the dump tool failed");
        assert_eq!(fs::read(&to).unwrap(), b"the good old dump");
        assert_eq!(names(dir.path()), ["dump"]);
    }

    #[test]
    fn write_atomically_returns_the_checksum_of_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("dump");
        let checksum = write_atomically(&context(false), &to, |out| {
            out.write_all(b"ab")
                .and_then(|()| out.write_all(b"c"))
                .io_context("cannot write", Path::new("dump"))
        })
        .unwrap();
        assert_eq!(checksum.sha256, ABC_SHA256);
        assert_eq!(fs::read(&to).unwrap(), b"abc");
    }

    #[test]
    fn a_changed_file_fails_verification_naming_both_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("copy");
        fs::write(&file, b"abd").unwrap();
        let recorded = Checksum {
            size: 3,
            sha256: ABC_SHA256.into(),
        };
        let err = verify_checksum(&context(false), &file, &recorded).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.starts_with("checksum mismatch: "), "{err}");
        assert!(err.message.contains(ABC_SHA256), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_that_says_it_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone.conf");
        let err = checksum(&context(false), &missing).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert_eq!(
            err.message,
            format!("cannot read {}: it does not exist", missing.display())
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = copy(&context(false), &fifo, &dir.path().join("copy")).unwrap_err();
        assert!(err.message.ends_with("is not a regular file"), "{err}");
        assert_eq!(regular_file_size(&fifo).unwrap_err(), err);
    }

    fn abc() -> Checksum {
        Checksum {
            size: 3,
            sha256: ABC_SHA256.into(),
        }
    }

    #[test]
    fn a_verified_copy_with_other_bytes_leaves_the_target_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&from, b"abd").unwrap();
        fs::write(&to, b"the good old file").unwrap();
        let err = copy_verified(&context(false), &from, &to, &abc()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.starts_with("checksum mismatch: "), "{err}");
        assert_eq!(fs::read(&to).unwrap(), b"the good old file");
        assert_eq!(names(dir.path()), ["a", "b"]);

        fs::write(&from, b"abc").unwrap();
        copy_verified(&context(false), &from, &to, &abc()).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"abc");
    }

    #[test]
    fn a_restore_over_a_different_file_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.conf");
        assert!(needs_restore(&restoring(false), &target, &abc()).unwrap());
        fs::write(&target, b"abc").unwrap();
        assert!(!needs_restore(&restoring(false), &target, &abc()).unwrap());
        fs::write(&target, b"changed since").unwrap();
        let err = needs_restore(&restoring(false), &target, &abc()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.starts_with("refusing to overwrite"), "{err}");
        assert!(needs_restore(&restoring(true), &target, &abc()).unwrap());
    }

    #[test]
    fn a_dangling_symlink_at_the_target_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (from, target, nowhere) = (
            dir.path().join("a"),
            dir.path().join("app.conf"),
            dir.path().join("nowhere"),
        );
        fs::write(&from, b"abc").unwrap();
        std::os::unix::fs::symlink(&nowhere, &target).unwrap();
        assert!(needs_restore(&restoring(false), &target, &abc()).unwrap());
        copy_verified(&context(false), &from, &target, &abc()).unwrap();
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        assert!(!nowhere.exists());
    }

    #[test]
    fn config_paths_must_be_absolute_and_destinations_folders() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = require_absolute("source", Path::new("app.conf")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert_eq!(
            err.message,
            "`source` must be an absolute path, not app.conf"
        );
        require_destination("destination", dir.path()).unwrap();
        require_destination("destination", &dir.path().join("new")).unwrap();
        let err = require_destination("destination", &file).unwrap_err();
        assert!(err.message.ends_with("exists and is not a folder"), "{err}");
    }
}
