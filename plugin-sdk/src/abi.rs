//! The stable C ABI between the host and a plugin.
//!
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`], an `extern "C" fn() -> *const
//! PluginDescriptor`. The descriptor starts with `abi_version` and `struct_size`; fields are only
//! ever appended, so a host reads exactly the fields that `struct_size` says are present. All
//! payloads are UTF-8 JSON in byte buffers, and whoever allocates a buffer frees it: a plugin's
//! answer is copied by the host and handed back to the plugin's `free_buffer`. No Rust type crosses
//! the boundary, so a plugin built with another `rustc` or other crate versions works.
//!
//! The host side calls in with a [`HostApi`] table (logging, progress, cancellation), which follows
//! the same rules. Every exported function of a plugin runs its body inside `catch_unwind`, so a
//! panicking plugin yields an error answer, never an unwind across the boundary.
//!
//! [`PluginRef`] is the host side: the runner and [`crate::testing::Harness`] both call plugins
//! through it, so a built-in plugin linked into the binary and a third-party library loaded from
//! disk take exactly the same path.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::protocol::{Description, Level, Progress, Request, Response};
use crate::{ErrorKind, PluginError};

/// The version of this ABI. A host refuses a plugin whose `abi_version` differs.
pub const ABI_VERSION: u32 = 1;

/// The name of the symbol a plugin library exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"backplan_plugin_entry\0";

/// The type of the exported entry function.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Status returned by `describe` and `invoke`: the out-buffer holds a JSON answer.
pub const STATUS_OK: i32 = 0;
/// Status: something failed so badly that no answer could be written; the buffer is empty.
pub const STATUS_NO_ANSWER: i32 = 1;

/// A byte buffer owned by the side that allocated it.
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// Start of the bytes (null when empty).
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocation size, needed by the owner to free it.
    pub cap: usize,
}

impl Buffer {
    /// An empty buffer that owns nothing.
    pub const fn empty() -> Self {
        Buffer {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Buffer {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }
}

/// What a plugin library exposes. Fields are only ever appended; `struct_size` tells how many
/// the plugin filled in.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// Must equal the host's [`ABI_VERSION`]; checked before any other field is read.
    pub abi_version: u32,
    /// `size_of::<PluginDescriptor>()` as the plugin saw it.
    pub struct_size: u32,
    /// The plugin's name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// The plugin's version, NUL-terminated UTF-8.
    pub version: *const c_char,
    /// Writes the plugin's [`Description`] as JSON into `out`.
    pub describe: unsafe extern "C" fn(out: *mut Buffer) -> i32,
    /// Runs one [`Request`] (JSON in `request[..len]`) and writes a [`Response`] as JSON into `out`.
    pub invoke: unsafe extern "C" fn(
        request: *const u8,
        len: usize,
        host: *const HostApi,
        out: *mut Buffer,
    ) -> i32,
    /// Frees a buffer this plugin wrote.
    pub free_buffer: unsafe extern "C" fn(buffer: Buffer),
}

// SAFETY: the descriptor is immutable after construction and points only at 'static data and
// functions, so sharing it between threads is sound.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: see `Sync` above.
unsafe impl Send for PluginDescriptor {}

/// The host's side: callbacks a plugin may call while an action runs. Fields are only appended.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// The host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<HostApi>()` as the host saw it.
    pub struct_size: u32,
    /// Opaque host state, passed back to every callback.
    pub ctx: *const c_void,
    /// A log record: level (see [`Level`]) and a UTF-8 message.
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, msg: *const u8, len: usize),
    /// A progress update: a [`Progress`] as JSON.
    pub progress: unsafe extern "C" fn(ctx: *const c_void, json: *const u8, len: usize),
    /// Non-zero when the action should stop (Ctrl-C, step timeout).
    pub is_cancelled: unsafe extern "C" fn(ctx: *const c_void) -> u8,
}

/// How a plugin reaches its host while an action runs.
///
/// Only used on the plugin side; copies the few fields it needs so that a `HostApi` from an older
/// host (a shorter struct) is never read past its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostLink {
    api: *const HostApi,
}

// SAFETY: the host guarantees the `HostApi` outlives the `invoke` call and that its callbacks may
// be called from any thread (the host implementation is `Sync`).
unsafe impl Send for HostLink {}
// SAFETY: as above.
unsafe impl Sync for HostLink {}

impl HostLink {
    fn api(&self) -> Option<&HostApi> {
        // SAFETY: `api` was handed to `invoke` by the host and is valid for the whole call; we
        // read only when the host's struct is at least as large as the one we know.
        let api = unsafe { self.api.as_ref()? };
        (api.struct_size as usize >= std::mem::size_of::<HostApi>()).then_some(api)
    }

    pub(crate) fn log(&self, level: Level, msg: &str) {
        if let Some(api) = self.api() {
            // SAFETY: the callback is the host's, valid for the call; the message is valid UTF-8
            // for `len` bytes.
            unsafe { (api.log)(api.ctx, level as u32, msg.as_ptr(), msg.len()) }
        }
    }

    pub(crate) fn progress(&self, progress: &Progress) {
        if let (Some(api), Ok(json)) = (self.api(), serde_json::to_vec(progress)) {
            // SAFETY: as for `log`.
            unsafe { (api.progress)(api.ctx, json.as_ptr(), json.len()) }
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        match self.api() {
            // SAFETY: as for `log`.
            Some(api) => unsafe { (api.is_cancelled)(api.ctx) != 0 },
            None => false,
        }
    }
}

/// Plugin-side glue used by [`crate::declare_plugin!`]. Not a public API.
#[doc(hidden)]
pub mod plugin_side {
    use super::*;
    use crate::{Context, Plugin};

    /// Serialises `answer` into `out`, reporting whether that worked.
    fn write_answer(out: *mut Buffer, answer: &impl serde::Serialize) -> i32 {
        match serde_json::to_vec(answer) {
            Ok(bytes) if !out.is_null() => {
                // SAFETY: the host passes a valid, writable out-pointer.
                unsafe { out.write(Buffer::from_vec(bytes)) };
                STATUS_OK
            }
            _ => STATUS_NO_ANSWER,
        }
    }

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a non-string panic payload".to_owned()
        }
    }

    /// The body of a plugin's exported `describe`.
    ///
    /// # Safety
    /// `out` must be valid for a write of one [`Buffer`].
    pub unsafe fn describe<P: Plugin>(version: &'static str, out: *mut Buffer) -> i32 {
        let described = catch_unwind(|| crate::describe::<P>(version));
        match described {
            Ok(description) => write_answer(out, &description),
            Err(_) => STATUS_NO_ANSWER,
        }
    }

    /// The body of a plugin's exported `invoke`.
    ///
    /// # Safety
    /// `request` must point at `len` readable bytes, `host` at a valid [`HostApi`] for the whole
    /// call, `out` must be valid for a write of one [`Buffer`].
    pub unsafe fn invoke<P: Plugin>(
        instance: fn() -> &'static P,
        request: *const u8,
        len: usize,
        host: *const HostApi,
        out: *mut Buffer,
    ) -> i32 {
        let link = HostLink { api: host };
        let answered = catch_unwind(AssertUnwindSafe(|| {
            let bytes = if request.is_null() {
                &[][..]
            } else {
                // SAFETY: the caller guarantees `len` readable bytes at `request`.
                unsafe { std::slice::from_raw_parts(request, len) }
            };
            let request: Request = match serde_json::from_slice(bytes) {
                Ok(request) => request,
                Err(e) => {
                    return Response::Error(PluginError::new(
                        ErrorKind::Internal,
                        format!("the host sent a request this plugin cannot read: {e}"),
                    ));
                }
            };
            let ctx = Context::new(request, link);
            match crate::run_action(instance(), &ctx) {
                Ok(output) => Response::Ok(output),
                Err(error) => Response::Error(error),
            }
        }));
        let response = answered.unwrap_or_else(|payload| {
            Response::Error(PluginError::new(
                ErrorKind::Internal,
                format!("the plugin panicked: {}", panic_message(&*payload)),
            ))
        });
        write_answer(out, &response)
    }

    /// The plugin's exported `free_buffer`.
    ///
    /// # Safety
    /// `buffer` must have been written by this plugin's `describe` or `invoke` and not freed yet.
    pub unsafe extern "C" fn free_buffer(buffer: Buffer) {
        if buffer.ptr.is_null() {
            return;
        }
        let _ = catch_unwind(|| {
            // SAFETY: the buffer came from `Buffer::from_vec` in this library, with this
            // allocator, and ownership returns here exactly once.
            drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
        });
    }

    /// A descriptor built on first use, holding the plugin's name and version as C strings.
    #[derive(Debug)]
    pub struct DescriptorCell {
        cell: std::sync::OnceLock<PluginDescriptor>,
    }

    impl DescriptorCell {
        /// An empty cell, for a `static`.
        pub const fn new() -> Self {
            Self {
                cell: std::sync::OnceLock::new(),
            }
        }

        /// The descriptor, built from the given parts on first use.
        pub fn get_or_init(
            &'static self,
            name: &'static str,
            version: &'static str,
            describe: unsafe extern "C" fn(*mut Buffer) -> i32,
            invoke: unsafe extern "C" fn(*const u8, usize, *const HostApi, *mut Buffer) -> i32,
        ) -> &'static PluginDescriptor {
            self.cell.get_or_init(|| PluginDescriptor {
                abi_version: ABI_VERSION,
                struct_size: std::mem::size_of::<PluginDescriptor>() as u32,
                name: leak_c_string(name),
                version: leak_c_string(version),
                describe,
                invoke,
                free_buffer,
            })
        }
    }

    impl Default for DescriptorCell {
        fn default() -> Self {
            Self::new()
        }
    }

    fn leak_c_string(s: &str) -> *const c_char {
        let c = std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default();
        Box::leak(c.into_boxed_c_str()).as_ptr()
    }
}

/// Why a plugin could not be called or did not answer properly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbiError {
    /// The entry symbol returned null.
    #[error("the plugin's entry function returned no descriptor")]
    NullDescriptor,
    /// The plugin speaks another ABI version.
    #[error("the plugin uses ABI version {found}, this backplan speaks ABI version {expected}")]
    WrongAbiVersion {
        /// The plugin's version.
        found: u32,
        /// The host's version.
        expected: u32,
    },
    /// The descriptor is shorter than ABI version 1 requires.
    #[error("the plugin's descriptor is {found} bytes, at least {expected} are required")]
    DescriptorTooSmall {
        /// The plugin's `struct_size`.
        found: u32,
        /// The size this host needs.
        expected: u32,
    },
    /// The plugin wrote no answer (status {0}).
    #[error("the plugin gave no answer (status {0})")]
    NoAnswer(i32),
    /// The plugin's answer is not the JSON the protocol requires.
    #[error("the plugin's answer is not valid protocol JSON: {0}")]
    InvalidAnswer(String),
    /// The plugin's name is not valid UTF-8.
    #[error("the plugin's name or version is not valid UTF-8")]
    InvalidName,
}

/// What the host does when a plugin logs, reports progress or asks whether to stop.
pub trait HostHooks: Sync {
    /// A log record from the plugin.
    fn log(&self, level: Level, message: &str);
    /// A progress update from the plugin.
    fn progress(&self, progress: Progress);
    /// Whether the plugin should stop.
    fn is_cancelled(&self) -> bool;
}

/// A checked handle on a plugin descriptor: the host side of the ABI.
#[derive(Debug, Clone, Copy)]
pub struct PluginRef {
    descriptor: &'static PluginDescriptor,
    name: &'static str,
    version: &'static str,
}

impl PluginRef {
    /// Checks a descriptor: the ABI version first, then its size, then the name.
    ///
    /// # Safety
    /// `descriptor` must be null or point at memory that stays valid for the rest of the process
    /// (a statically linked plugin, or a library that is never unloaded) and begins with the
    /// `abi_version` and `struct_size` fields.
    pub unsafe fn from_raw(descriptor: *const PluginDescriptor) -> Result<Self, AbiError> {
        if descriptor.is_null() {
            return Err(AbiError::NullDescriptor);
        }
        // Read the two leading u32 fields alone before trusting anything else in the struct.
        // SAFETY: the caller guarantees the first two fields are readable.
        let (abi_version, struct_size) = unsafe {
            let head = descriptor.cast::<u32>();
            (head.read_unaligned(), head.add(1).read_unaligned())
        };
        if abi_version != ABI_VERSION {
            return Err(AbiError::WrongAbiVersion {
                found: abi_version,
                expected: ABI_VERSION,
            });
        }
        let needed = std::mem::size_of::<PluginDescriptor>() as u32;
        if struct_size < needed {
            return Err(AbiError::DescriptorTooSmall {
                found: struct_size,
                expected: needed,
            });
        }
        // SAFETY: version and size checked; the caller guarantees the lifetime.
        let descriptor: &'static PluginDescriptor = unsafe { &*descriptor };
        let text = |p: *const c_char| -> Result<&'static str, AbiError> {
            if p.is_null() {
                return Err(AbiError::InvalidName);
            }
            // SAFETY: the ABI requires NUL-terminated strings that live as long as the plugin.
            unsafe { CStr::from_ptr(p) }
                .to_str()
                .map_err(|_| AbiError::InvalidName)
        };
        Ok(PluginRef {
            descriptor,
            name: text(descriptor.name)?,
            version: text(descriptor.version)?,
        })
    }

    /// The plugin's name, as its descriptor gives it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The plugin's version, as its descriptor gives it.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// Takes the plugin's answer out of `out`, copying it and freeing the plugin's buffer.
    fn take_answer(&self, status: i32, out: Buffer) -> Result<Vec<u8>, AbiError> {
        let bytes = if out.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `len` bytes at `ptr`; we copy before freeing.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec()
        };
        // SAFETY: the buffer came from this plugin and is returned to it exactly once.
        unsafe { (self.descriptor.free_buffer)(out) };
        if status != STATUS_OK {
            return Err(AbiError::NoAnswer(status));
        }
        Ok(bytes)
    }

    /// Asks the plugin to describe itself.
    pub fn describe(&self) -> Result<Description, AbiError> {
        let mut out = Buffer::empty();
        // SAFETY: `out` is a valid out-pointer; the descriptor was checked in `from_raw`.
        let status = unsafe { (self.descriptor.describe)(&mut out) };
        let bytes = self.take_answer(status, out)?;
        serde_json::from_slice(&bytes).map_err(|e| AbiError::InvalidAnswer(e.to_string()))
    }

    /// Runs one action. Blocks until the plugin returns; call it from a blocking thread.
    pub fn invoke(&self, request: &Request, hooks: &dyn HostHooks) -> Result<Response, AbiError> {
        let request = serde_json::to_vec(request)
            .map_err(|e| AbiError::InvalidAnswer(format!("request not serialisable: {e}")))?;
        let hooks_ref: &dyn HostHooks = hooks;
        let api = HostApi {
            abi_version: ABI_VERSION,
            struct_size: std::mem::size_of::<HostApi>() as u32,
            ctx: (&raw const hooks_ref).cast(),
            log: host_log,
            progress: host_progress,
            is_cancelled: host_is_cancelled,
        };
        let mut out = Buffer::empty();
        // SAFETY: all pointers are valid for the duration of the call; `api` and `hooks_ref`
        // live on this stack frame until `invoke` returns.
        let status =
            unsafe { (self.descriptor.invoke)(request.as_ptr(), request.len(), &api, &mut out) };
        let bytes = self.take_answer(status, out)?;
        serde_json::from_slice(&bytes).map_err(|e| AbiError::InvalidAnswer(e.to_string()))
    }
}

/// Recovers the hooks from a [`HostApi::ctx`].
///
/// # Safety
/// `ctx` must be the pointer set up by [`PluginRef::invoke`], still on its stack frame.
unsafe fn hooks<'a>(ctx: *const c_void) -> &'a dyn HostHooks {
    // SAFETY: per the function's contract `ctx` points at a live `&dyn HostHooks`.
    unsafe { *ctx.cast::<&dyn HostHooks>() }
}

unsafe extern "C" fn host_log(ctx: *const c_void, level: u32, msg: *const u8, len: usize) {
    let _ = catch_unwind(|| {
        // SAFETY: the plugin passes `len` readable bytes; `ctx` is ours.
        let bytes = unsafe { std::slice::from_raw_parts(msg, len) };
        let message = String::from_utf8_lossy(bytes);
        // SAFETY: `ctx` was set up by `PluginRef::invoke`.
        unsafe { hooks(ctx) }.log(Level::from_u32(level), &message);
    });
}

unsafe extern "C" fn host_progress(ctx: *const c_void, json: *const u8, len: usize) {
    let _ = catch_unwind(|| {
        // SAFETY: the plugin passes `len` readable bytes; `ctx` is ours.
        let bytes = unsafe { std::slice::from_raw_parts(json, len) };
        if let Ok(progress) = serde_json::from_slice::<Progress>(bytes) {
            // SAFETY: `ctx` was set up by `PluginRef::invoke`.
            unsafe { hooks(ctx) }.progress(progress);
        }
    });
}

unsafe extern "C" fn host_is_cancelled(ctx: *const c_void) -> u8 {
    // SAFETY: `ctx` was set up by `PluginRef::invoke`.
    catch_unwind(|| unsafe { hooks(ctx) }.is_cancelled() as u8).unwrap_or(1)
}
