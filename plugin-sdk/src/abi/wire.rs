//! The `#[repr(C)]` types and constants both sides of the boundary agree on.
//!
//! Nothing here does anything: these are the shapes of the bytes the host and a plugin hand each
//! other. Every struct starts with `abi_version` and `struct_size`, and fields are only ever
//! appended, so a reader checks `struct_size` before it reads a field it knows about.

use std::ffi::{c_char, c_void};

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

    /// Hands the bytes' allocation over to the buffer; the plugin's `free_buffer` takes it back.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
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
    /// Writes the plugin's [`Description`](crate::Description) as JSON into `out`.
    pub describe: unsafe extern "C" fn(out: *mut Buffer) -> i32,
    /// Runs one [`Request`](crate::Request) (JSON in `request[..len]`) and writes a
    /// [`Response`](crate::Response) as JSON into `out`.
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
    /// A log record: level (see [`Level`](crate::Level)) and a UTF-8 message.
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, msg: *const u8, len: usize),
    /// A progress update: a [`Progress`](crate::Progress) as JSON.
    pub progress: unsafe extern "C" fn(ctx: *const c_void, json: *const u8, len: usize),
    /// Non-zero when the action should stop (Ctrl-C, step timeout).
    pub is_cancelled: unsafe extern "C" fn(ctx: *const c_void) -> u8,
}
