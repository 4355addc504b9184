//! What a host uses to call a plugin: [`PluginRef`], a checked handle on a descriptor.
//!
//! backplan-core's runner and [`crate::testing::Harness`] both call plugins through it, so a
//! built-in plugin linked into the binary and a third-party library loaded from disk take exactly
//! the same path. It checks a descriptor before trusting it (ABI version first, then size, then
//! the name), copies every answer out of the plugin's buffer and hands the buffer back, and turns
//! the host's [`HostHooks`] into the C callbacks of a [`HostApi`] table.
//!
//! A plugin author never uses this module.

use std::ffi::{CStr, c_char, c_void};
use std::panic::catch_unwind;

use crate::abi::{ABI_VERSION, Buffer, HostApi, PluginDescriptor, STATUS_OK};
use crate::protocol::{Description, Level, Progress, Request, Response};

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

#[cfg(test)]
mod tests {
    //! The host's side against plugins that differ from this SDK: a newer plugin's description,
    //! through a hand-built descriptor as a library built with a newer SDK would export it.

    // `declare_plugin!` makes a `pub fn`, here inside a private module.
    #![allow(unreachable_pub)]

    use super::*;
    use crate::testing::Harness;
    use crate::{Action, Context, Plugin, PluginResult, StepOutput};

    /// A plugin as this SDK builds it; the descriptor below swaps in a newer SDK's `describe`.
    #[derive(Default)]
    struct Newer;

    impl Plugin for Newer {
        type Config = serde_json::Value;
        const NAME: &'static str = "newer";
        const SUMMARY: &'static str = "Built with a newer SDK.";
        const ACTIONS: &'static [Action] = &[Action::Check, Action::Backup];

        fn backup(&self, _ctx: &Context, _config: &serde_json::Value) -> PluginResult<StepOutput> {
            Ok(StepOutput::new("backed up"))
        }
    }

    crate::declare_plugin!(Newer);

    /// What a newer SDK's `describe` writes: an action, and a field, this SDK does not know.
    const NEWER_DESCRIPTION: &str = r#"{
        "name": "newer", "version": "9.0.0", "summary": "Built with a newer SDK.",
        "actions": ["check", "backup", "snapshot_tags", "verify"],
        "config_schema": true, "sdk_version": "9.0.0", "homepage": "https://example.invalid"
    }"#;

    unsafe extern "C" fn describe_as_newer(out: *mut Buffer) -> i32 {
        // SAFETY: the host passes a valid out-pointer; the buffer is freed by the SDK's
        // `free_buffer`, which takes back exactly such a `Vec`.
        unsafe { out.write(Buffer::from_vec(NEWER_DESCRIPTION.as_bytes().to_vec())) };
        STATUS_OK
    }

    fn newer_descriptor() -> &'static PluginDescriptor {
        static NEWER: std::sync::OnceLock<PluginDescriptor> = std::sync::OnceLock::new();
        NEWER.get_or_init(|| {
            let ours = plugin_descriptor();
            PluginDescriptor {
                abi_version: ours.abi_version,
                struct_size: ours.struct_size,
                name: ours.name,
                version: ours.version,
                describe: describe_as_newer,
                invoke: ours.invoke,
                free_buffer: ours.free_buffer,
            }
        })
    }

    #[test]
    fn a_plugin_describing_an_action_this_host_does_not_know_still_loads() {
        // SAFETY: a `&'static` descriptor lives for the rest of the process.
        let plugin = unsafe { PluginRef::from_raw(newer_descriptor()) }.expect("the ABI checks");
        let description = plugin.describe().expect("the description reads");
        assert_eq!(
            description.actions,
            [Action::Check, Action::Backup, Action::Verify],
            "the unknown action is left out, the known ones stay"
        );
        let harness = Harness::new(newer_descriptor());
        let out = harness.run(Action::Backup, serde_json::json!({})).unwrap();
        assert_eq!(out.summary, "backed up");
    }
}
