//! Responses of one connection in request order while offloaded work is
//! outstanding: a response finished early waits for the ones before it.

use std::collections::VecDeque;

use crate::http::response::Encoding;

/// The in-order queue of one connection. Empty whenever no offloaded work
/// is outstanding; responses then go straight to the output.
#[derive(Debug, Default)]
pub(crate) struct ResponseQueue {
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
enum Entry {
    /// Offloaded job `id`, not back yet, and how its response is framed.
    Waiting { id: u64, encoding: Encoding },
    /// An encoded response waiting for the ones before it.
    Ready { bytes: Vec<u8>, keep_alive: bool },
}

/// What [`ResponseQueue::release`] let out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// Responses (maybe none) went out; the connection stays open.
    KeepOpen,
    /// A response that closes the connection went out; what came after it
    /// was dropped (nothing follows a closing response).
    Close,
}

impl ResponseQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Holds the place of offloaded job `id`.
    pub(crate) fn wait_for(&mut self, id: u64, encoding: Encoding) {
        self.entries.push_back(Entry::Waiting { id, encoding });
    }

    /// Queues an encoded response behind the outstanding ones.
    pub(crate) fn push_ready(&mut self, bytes: Vec<u8>, keep_alive: bool) {
        debug_assert!(!self.is_empty(), "only responses behind offloaded work wait");
        self.entries.push_back(Entry::Ready { bytes, keep_alive });
    }

    /// Fills in the place of job `id` with what `encode` makes of its
    /// framing: the bytes and whether the connection stays open. False
    /// when no job `id` waits here (it belonged to an earlier connection
    /// with the same key).
    pub(crate) fn fill(
        &mut self,
        id: u64,
        encode: impl FnOnce(Encoding) -> (Vec<u8>, bool),
    ) -> bool {
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| matches!(entry, Entry::Waiting { id: waiting, .. } if *waiting == id))
        else {
            return false;
        };
        let Entry::Waiting { encoding, .. } = *entry else { unreachable!("matched above") };
        let (bytes, keep_alive) = encode(encoding);
        *entry = Entry::Ready { bytes, keep_alive };
        true
    }

    /// Appends to `out` every ready response no longer behind a waiting one.
    pub(crate) fn release(&mut self, out: &mut Vec<u8>) -> Released {
        while matches!(self.entries.front(), Some(Entry::Ready { .. })) {
            let Some(Entry::Ready { bytes, keep_alive }) = self.entries.pop_front() else {
                unreachable!("checked above")
            };
            out.extend_from_slice(&bytes);
            if !keep_alive {
                self.entries.clear();
                return Released::Close;
            }
        }
        Released::KeepOpen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Encoding = Encoding { head_request: false, keep_alive: true, http10: false };

    fn fill(queue: &mut ResponseQueue, id: u64, body: &str, keep_alive: bool) -> bool {
        queue.fill(id, |_| (body.as_bytes().to_vec(), keep_alive))
    }

    #[test]
    fn responses_leave_in_request_order() {
        let mut queue = ResponseQueue::default();
        let mut out = Vec::new();
        queue.wait_for(1, KEEP);
        queue.push_ready(b"B".to_vec(), true);
        queue.wait_for(2, KEEP);
        assert_eq!(queue.release(&mut out), Released::KeepOpen);
        assert!(out.is_empty(), "nothing may pass the first outstanding job");
        assert!(fill(&mut queue, 2, "C", true));
        assert_eq!(queue.release(&mut out), Released::KeepOpen);
        assert!(out.is_empty(), "job 2 is ready but still behind job 1");
        assert!(fill(&mut queue, 1, "A", true));
        assert_eq!(queue.release(&mut out), Released::KeepOpen);
        assert_eq!(out, b"ABC");
        assert!(queue.is_empty());
    }

    #[test]
    fn a_closing_response_drops_what_follows() {
        let mut queue = ResponseQueue::default();
        let mut out = Vec::new();
        queue.wait_for(7, KEEP);
        queue.push_ready(b"later".to_vec(), true);
        assert!(fill(&mut queue, 7, "last", false));
        assert_eq!(queue.release(&mut out), Released::Close);
        assert_eq!(out, b"last");
        assert!(queue.is_empty());
    }

    #[test]
    fn an_unknown_job_is_ignored() {
        let mut queue = ResponseQueue::default();
        queue.wait_for(1, KEEP);
        assert!(!fill(&mut queue, 9, "stray", true));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn the_encoder_sees_the_jobs_framing() {
        let mut queue = ResponseQueue::default();
        let head = Encoding { head_request: true, keep_alive: false, http10: true };
        queue.wait_for(3, head);
        let mut seen = None;
        assert!(queue.fill(3, |encoding| {
            seen = Some(encoding);
            (Vec::new(), true)
        }));
        assert_eq!(seen, Some(head));
    }
}
