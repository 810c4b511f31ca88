//! The end of an exchange, for [`Response::on_finish`] hooks: a response
//! is watched from its encoding until its last byte is written, or until
//! the connection closes first.
//!
//! Positions are counted in bytes over the life of a connection: a
//! response ends at `queued + out.len()` once encoded into the loop's
//! batch, and is finished once `sent` reaches that.

use std::time::Instant;

use crate::http::response::{body_on_the_wire, Encoding, Fields, FinishHook};
use crate::http::Finished;
use crate::Response;

/// A response whose hooks wait for its exchange to end.
pub(crate) struct Finishing {
    hooks: Vec<FinishHook>,
    /// When the loop read the request.
    started: Instant,
    status: u16,
    headers: Fields,
    body_bytes: u64,
    wire_bytes: u64,
}

impl std::fmt::Debug for Finishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finishing")
            .field("hooks", &self.hooks.len())
            .field("status", &self.status)
            .finish()
    }
}

impl Finishing {
    /// Hooks taken from a response, not described yet (offloaded work has
    /// not made its response). Out of the hot path: most responses have
    /// no hooks.
    #[cold]
    pub(crate) fn new(hooks: Vec<FinishHook>, started: Instant) -> Box<Finishing> {
        Box::new(Finishing {
            hooks,
            started,
            status: 0,
            headers: Vec::new(),
            body_bytes: 0,
            wire_bytes: 0,
        })
    }

    /// Adds hooks registered later (by offloaded work on its response).
    pub(crate) fn add_hooks(&mut self, hooks: Vec<FinishHook>) {
        self.hooks.extend(hooks);
    }

    /// Records what was encoded: `res`, framed by `enc`, took `wire_bytes`.
    #[cold]
    pub(crate) fn describe(&mut self, res: &Response, enc: Encoding, wire_bytes: usize) {
        self.status = res.status;
        self.headers = res.headers.clone();
        self.body_bytes = body_on_the_wire(res, enc).len() as u64;
        self.wire_bytes = wire_bytes as u64;
    }

    /// Adds a streamed body's bytes, sent after the head `describe` saw.
    pub(crate) fn add_body(&mut self, body_bytes: u64, wire_bytes: u64) {
        self.body_bytes += body_bytes;
        self.wire_bytes += wire_bytes;
    }

    /// Runs the hooks (a panicking hook is logged and skips only itself).
    pub(crate) fn fire(self, completed: bool) {
        let Finishing { hooks, started, status, headers, body_bytes, wire_bytes } = self;
        let finished = Finished {
            status,
            headers: &headers,
            body_bytes,
            wire_bytes,
            completed,
            duration: started.elapsed(),
        };
        for hook in hooks {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&finished))).is_err() {
                log::error!("an on_finish hook panicked (status={status}); the others still run");
            }
        }
    }
}

/// The responses of one connection still on their way out.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Bytes handed to `flush` over the connection's life.
    pub(crate) queued: u64,
    /// Bytes the kernel took.
    pub(crate) sent: u64,
    /// Watched responses in stream order, with where each ends.
    pending: Vec<(u64, Box<Finishing>)>,
}

impl Watch {
    /// A watch made while `unsent` bytes of earlier output wait to be
    /// written: they count as queued, before anything encoded from now on.
    pub(crate) fn starting_with(unsent: u64) -> Watch {
        Watch { queued: unsent, sent: 0, pending: Vec::new() }
    }

    /// Watches a response that ends `out_len` bytes into the batch being
    /// encoded.
    pub(crate) fn ends_at(&mut self, out_len: usize, finishing: Box<Finishing>) {
        self.pending.push((self.queued + out_len as u64, finishing));
    }

    /// Finishes every response the kernel has taken whole. Inlined: with
    /// nothing watched it is an add and a length check.
    #[inline]
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if !self.pending.is_empty() {
            self.finish_sent();
        }
    }

    #[cold]
    fn finish_sent(&mut self) {
        let done = self.pending.iter().take_while(|(end, _)| *end <= self.sent).count();
        for (_, finishing) in self.pending.drain(..done) {
            (*finishing).fire(true);
        }
    }

    /// The connection closes: what was not written is cut short.
    pub(crate) fn cut_short(&mut self) {
        for (_, finishing) in self.pending.drain(..) {
            (*finishing).fire(false);
        }
    }
}

impl Drop for Watch {
    /// The connection is gone: its hooks hear that the rest was cut short.
    fn drop(&mut self) {
        self.cut_short();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the hooks saw: status, completed, wire bytes.
    type Seen = Arc<Mutex<Vec<(u16, bool, u64)>>>;

    fn watched(log: &Seen, status: u16) -> Box<Finishing> {
        let log = log.clone();
        let hook: FinishHook = Box::new(move |f: &Finished<'_>| {
            log.lock().unwrap().push((f.status, f.completed, f.wire_bytes))
        });
        let mut finishing = Finishing::new(vec![hook], Instant::now());
        let mut res = Response::new();
        res.status(status).body_static(b"body");
        let enc = Encoding { head_request: false, keep_alive: true, http10: false };
        finishing.describe(&res, enc, 100);
        finishing
    }

    #[test]
    fn a_response_finishes_when_its_last_byte_is_sent_and_the_rest_is_cut_short() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut watch = Watch::default();
        watch.ends_at(100, watched(&log, 200));
        watch.ends_at(250, watched(&log, 404));
        watch.queued += 250;
        watch.sent(99);
        assert!(log.lock().unwrap().is_empty(), "one byte short");
        watch.sent(1);
        assert_eq!(*log.lock().unwrap(), [(200, true, 100)]);
        watch.sent(100);
        watch.cut_short();
        assert_eq!(*log.lock().unwrap(), [(200, true, 100), (404, false, 100)]);
    }
}
