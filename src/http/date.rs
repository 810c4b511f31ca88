//! The `Date` header, formatted once a second per loop (each loop owns its
//! cache, so there is nothing to share and no race).

use std::time::SystemTime;

/// IMF-fixdate of the current second, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
#[derive(Debug)]
pub(crate) struct DateCache {
    secs: u64,
    text: [u8; 29],
}

impl DateCache {
    pub(crate) fn new() -> DateCache {
        let mut cache = DateCache { secs: u64::MAX, text: [b' '; 29] };
        cache.refresh(SystemTime::now());
        cache
    }

    /// Re-formats when `now` is in a later second than the cached text.
    pub(crate) fn refresh(&mut self, now: SystemTime) {
        let _ = now;
        todo!()
    }

    /// The 29 bytes of the current date.
    pub(crate) fn bytes(&self) -> &[u8; 29] {
        &self.text
    }
}
