//! The plugin's end of the [`HostApi`] table: how a running action reaches its host.

use super::wire::HostApi;
use crate::protocol::{Level, Progress};

/// How a plugin reaches its host while an action runs.
///
/// Copies nothing but the pointer, and reads the table only when the host's struct is at least
/// as large as the one this SDK knows, so a `HostApi` from an older host (a shorter struct) is
/// never read past its end.
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
    /// A link through the table the host passed to `invoke`.
    pub(crate) fn new(api: *const HostApi) -> Self {
        Self { api }
    }

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
