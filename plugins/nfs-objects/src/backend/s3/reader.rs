//! Reading an object as a stream, one ranged GET at a time.
//!
//! Manifests are read sequentially and can be large for trees of millions of files; fetching
//! them in `WINDOW`-sized ranges keeps memory flat whatever their size.

use std::io::{self, Read};
use std::sync::Arc;

use tokio::runtime::Handle;

use super::Inner;

/// Bytes fetched per request.
const WINDOW: u64 = 4 << 20;

/// A `Read` over object `name` of known `size`.
pub(super) struct RangeReader {
    inner: Arc<Inner>,
    runtime: Handle,
    name: String,
    size: u64,
    position: u64,
    buffer: Vec<u8>,
    consumed: usize,
}

impl RangeReader {
    pub(super) fn new(inner: Arc<Inner>, runtime: Handle, name: &str, size: u64) -> Self {
        Self {
            inner,
            runtime,
            name: name.to_owned(),
            size,
            position: 0,
            buffer: Vec::new(),
            consumed: 0,
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.buffer.len() {
            if self.position >= self.size {
                return Ok(0);
            }
            let length = WINDOW.min(self.size - self.position);
            self.buffer = self
                .runtime
                .block_on(self.inner.get_range(&self.name, self.position, length))
                .map_err(io::Error::other)?;
            self.position += length;
            self.consumed = 0;
        }
        let n = out.len().min(self.buffer.len() - self.consumed);
        out[..n].copy_from_slice(&self.buffer[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}
