//! The plugin side of the ABI, as [`declare_plugin!`](crate::declare_plugin) expands it.
//!
//! Not a public API: everything here is `#[doc(hidden)]` and may change in any release. It is the
//! body of the functions a plugin exports — `describe`, `invoke`, `free_buffer` — and the cell
//! that holds the plugin's descriptor. Each body runs inside `catch_unwind`, reads the host's
//! JSON, dispatches to the [`Plugin`]'s action and writes the JSON answer into a buffer the host
//! hands back to `free_buffer`.

use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::link::HostLink;
use crate::abi::{ABI_VERSION, Buffer, HostApi, PluginDescriptor, STATUS_NO_ANSWER, STATUS_OK};
use crate::protocol::{Action, Description, Request, Response, StepOutput};
use crate::{Context, ErrorKind, Plugin, PluginError, PluginResult, SDK_VERSION};

/// What `declare_plugin!` implements, on a marker type of its own inside the declaring crate's
/// `plugin_descriptor` (so a crate may declare a plugin type of another crate, as the `cdylib`
/// build of a built-in does): the plugin type, and where its one instance, its version and its
/// descriptor live (statics of the declaring crate, so one per declaration).
pub trait Declared: 'static {
    /// The declared plugin.
    type Plugin: Plugin;
    /// The declaring crate's version.
    const VERSION: &'static str;
    /// The plugin, built on first use.
    fn instance() -> &'static Self::Plugin;
    /// The cell holding the plugin's descriptor.
    fn descriptor_cell() -> &'static DescriptorCell;
}

/// The descriptor of the plugin `D` declares, built on first use.
pub fn descriptor<D: Declared>() -> &'static PluginDescriptor {
    D::descriptor_cell().get_or_init(
        D::Plugin::NAME,
        D::VERSION,
        describe_entry::<D>,
        invoke_entry::<D>,
    )
}

/// The exported `describe` of the plugin `D` declares.
unsafe extern "C" fn describe_entry<D: Declared>(out: *mut Buffer) -> i32 {
    // SAFETY: the host upholds the ABI contract for `out`.
    unsafe { describe::<D::Plugin>(D::VERSION, out) }
}

/// The exported `invoke` of the plugin `D` declares.
unsafe extern "C" fn invoke_entry<D: Declared>(
    request: *const u8,
    len: usize,
    host: *const HostApi,
    out: *mut Buffer,
) -> i32 {
    // SAFETY: the host upholds the ABI contract for every pointer.
    unsafe { invoke::<D::Plugin>(D::instance, request, len, host, out) }
}

/// Builds the [`Description`] of plugin `P`.
fn description_of<P: Plugin>(version: &str) -> Description {
    let schema = schemars::schema_for!(P::Config);
    Description {
        name: P::NAME.to_owned(),
        version: version.to_owned(),
        summary: P::SUMMARY.to_owned(),
        docs: P::DOCS.to_owned(),
        actions: P::ACTIONS.to_vec(),
        config_schema: serde_json::to_value(schema).unwrap_or_default(),
        sdk_version: SDK_VERSION.to_owned(),
    }
}

/// Deserialises the config and dispatches the request to the plugin's action.
fn run_action<P: Plugin>(plugin: &P, ctx: &Context) -> PluginResult<StepOutput> {
    let request = ctx.request();
    if request.action == Action::Unknown {
        return Err(PluginError::new(
            ErrorKind::Unsupported,
            format!(
                "the host asked for an action this plugin's SDK ({SDK_VERSION}) does not know; \
                 the plugin is older than the host"
            ),
        ));
    }
    let config: P::Config = serde_json::from_value(request.config.clone()).map_err(|e| {
        PluginError::config(format!("step `{}`: invalid config: {e}", request.step_id))
    })?;
    let always = [Action::Check, Action::Permissions];
    if !always.contains(&request.action) && !P::ACTIONS.contains(&request.action) {
        return Err(PluginError::unsupported(request.action));
    }
    match request.action {
        Action::Permissions => {
            Ok(StepOutput::new("permissions").record(plugin.permissions_in(ctx, &config)))
        }
        Action::Check => plugin.check(ctx, &config),
        Action::Backup => plugin.backup(ctx, &config),
        Action::Verify => plugin.verify(ctx, &config),
        Action::Restore => plugin.restore(ctx, &config),
        Action::Prune => plugin.prune(ctx, &config),
        Action::Teardown => plugin.teardown(ctx, &config),
        Action::Discover => plugin.discover(ctx, &config),
        Action::Keys => plugin.keys(ctx, &config),
        Action::Unknown => Err(PluginError::unsupported(request.action)),
    }
}

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
unsafe fn describe<P: Plugin>(version: &'static str, out: *mut Buffer) -> i32 {
    match catch_unwind(|| description_of::<P>(version)) {
        Ok(description) => write_answer(out, &description),
        Err(_) => STATUS_NO_ANSWER,
    }
}

/// The body of a plugin's exported `invoke`.
///
/// # Safety
/// `request` must point at `len` readable bytes, `host` at a valid [`HostApi`] for the whole
/// call, `out` must be valid for a write of one [`Buffer`].
unsafe fn invoke<P: Plugin>(
    instance: fn() -> &'static P,
    request: *const u8,
    len: usize,
    host: *const HostApi,
    out: *mut Buffer,
) -> i32 {
    let link = HostLink::new(host);
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
        match run_action(instance(), &ctx).and_then(StepOutput::encoded) {
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
unsafe extern "C" fn free_buffer(buffer: Buffer) {
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
    fn get_or_init(
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

#[cfg(test)]
mod tests {
    //! The dispatch, through the real ABI: what a plugin answers when something cannot work.

    // `declare_plugin!` makes a `pub fn`, here inside a private module.
    #![allow(unreachable_pub)]

    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use crate::testing::Harness;
    use crate::{Action, Context, ErrorKind, Plugin, PluginResult, StepOutput};

    /// Backs up a record naming a path that is not UTF-8, which JSON cannot hold.
    #[derive(Default)]
    struct Unencodable;

    impl Plugin for Unencodable {
        type Config = serde_json::Value;
        const NAME: &'static str = "unencodable";
        const SUMMARY: &'static str = "Returns a record JSON cannot hold.";
        const ACTIONS: &'static [Action] = &[Action::Check, Action::Backup];

        fn backup(&self, _ctx: &Context, _config: &serde_json::Value) -> PluginResult<StepOutput> {
            let copy = PathBuf::from(OsStr::from_bytes(b"/backups/caf\xe9.conf"));
            Ok(StepOutput::new("backed up")
                .record(serde_json::json!({}))
                .record(copy))
        }
    }

    crate::declare_plugin!(Unencodable);

    #[test]
    fn a_record_that_cannot_be_encoded_fails_the_step_instead_of_storing_null() {
        let harness = Harness::new(plugin_descriptor());
        let err = harness
            .run(Action::Backup, serde_json::json!({}))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(
            err.message
                .starts_with("the record cannot be encoded as JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_request_for_an_action_this_plugin_does_not_know_is_answered_unsupported() {
        let harness = Harness::new(plugin_descriptor());
        let mut request = harness.request(Action::Backup, serde_json::json!({}));
        let mut json = serde_json::to_value(&request).unwrap();
        json["action"] = "snapshot_tags".into();
        request = serde_json::from_value(json).expect("a newer host's request still reads");
        assert_eq!(request.action, Action::Unknown);
        let err = harness.run_request(&request).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("does not know"), "{err}");
    }
}
