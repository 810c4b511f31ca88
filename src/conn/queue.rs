//! Responses of one connection in request order while offloaded work is
//! outstanding or a body is being streamed: a response finished early
//! waits for the ones before it.

use std::collections::VecDeque;
use std::time::Instant;

use super::finish::Finishing;
use super::outgoing::Outgoing;
use crate::http::response::{Encoding, Fields};

/// The in-order queue of one connection. Empty whenever no offloaded work
/// is outstanding and no body streams; responses then go straight to the
/// output.
#[derive(Debug, Default)]
pub(crate) struct ResponseQueue {
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
enum Entry {
    /// Offloaded job `id`, not back yet, how its response is framed, when
    /// it is given up on (with a copy of the fields set before it was
    /// offloaded, for that answer), and its `on_finish` hooks.
    Waiting {
        id: u64,
        encoding: Encoding,
        deadline: Option<Instant>,
        carried: Fields,
        finish: Option<Box<Finishing>>,
    },
    /// An encoded response waiting for the ones before it; with `body`, its
    /// head, and the streamed body to follow it.
    Ready {
        bytes: Vec<u8>,
        keep_alive: bool,
        finish: Option<Box<Finishing>>,
        body: Option<Box<Outgoing>>,
    },
    /// A body being streamed (always the front entry): what follows waits
    /// for its end.
    Streaming(Box<Outgoing>),
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

    /// Holds the place of offloaded job `id`, until `deadline` if one.
    pub(crate) fn wait_for(
        &mut self,
        id: u64,
        encoding: Encoding,
        deadline: Option<Instant>,
        carried: Fields,
        finish: Option<Box<Finishing>>,
    ) {
        self.entries.push_back(Entry::Waiting { id, encoding, deadline, carried, finish });
    }

    /// Queues an encoded response behind the outstanding ones.
    pub(crate) fn push_ready(
        &mut self,
        bytes: Vec<u8>,
        keep_alive: bool,
        finish: Option<Box<Finishing>>,
    ) {
        debug_assert!(!self.is_empty(), "only responses behind offloaded work or a stream wait");
        self.entries.push_back(Entry::Ready { bytes, keep_alive, finish, body: None });
    }

    /// Queues a streamed body whose head is already on its way: it goes
    /// first.
    pub(crate) fn push_streaming(&mut self, body: Box<Outgoing>) {
        debug_assert!(self.is_empty(), "a body streams only once all before it is out");
        self.entries.push_back(Entry::Streaming(body));
    }

    /// Queues a response with a streamed body (its head `bytes`) behind the
    /// outstanding ones.
    pub(crate) fn push_ready_streamed(&mut self, bytes: Vec<u8>, body: Box<Outgoing>) {
        let keep_alive = body.keep_alive;
        self.entries.push_back(Entry::Ready { bytes, keep_alive, finish: None, body: Some(body) });
    }

    /// The body being streamed, if any.
    pub(crate) fn streaming(&mut self) -> Option<&mut Outgoing> {
        match self.entries.front_mut() {
            Some(Entry::Streaming(body)) => Some(body),
            _ => None,
        }
    }

    /// The streamed body is over: it leaves the queue.
    pub(crate) fn end_streaming(&mut self) -> Option<Box<Outgoing>> {
        match self.entries.front() {
            Some(Entry::Streaming(_)) => match self.entries.pop_front() {
                Some(Entry::Streaming(body)) => Some(body),
                _ => unreachable!("checked above"),
            },
            _ => None,
        }
    }

    /// Fills in the place of job `id` with what `encode` makes of its
    /// framing: the bytes and whether the connection stays open (`encode`
    /// also describes the response to its hooks, if any). False when no
    /// job `id` waits here: it belonged to an earlier connection with the
    /// same key, or it ran out of time.
    pub(crate) fn fill(
        &mut self,
        id: u64,
        encode: impl FnOnce(
            Encoding,
            &mut Option<Box<Finishing>>,
        ) -> (Vec<u8>, bool, Option<Box<Outgoing>>),
    ) -> bool {
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|entry| matches!(entry, Entry::Waiting { id: waiting, .. } if *waiting == id))
        else {
            return false;
        };
        let Entry::Waiting { encoding, finish, .. } = entry else { unreachable!("matched above") };
        let encoding = *encoding;
        let mut finish = finish.take();
        let (bytes, keep_alive, body) = encode(encoding, &mut finish);
        *entry = Entry::Ready { bytes, keep_alive, finish, body };
        true
    }

    /// The earliest time a waiting job or the streamed body runs out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Waiting { deadline, .. } => *deadline,
                Entry::Streaming(body) => Some(body.deadline),
                Entry::Ready { .. } => None,
            })
            .min()
    }

    /// Fills in every job whose deadline passed by `now` with what
    /// `encode` makes (a 503); true if any did.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        mut encode: impl FnMut(Encoding, Fields, &mut Option<Box<Finishing>>) -> (Vec<u8>, bool),
    ) -> bool {
        let mut expired = false;
        for entry in &mut self.entries {
            if let Entry::Waiting { encoding, deadline: Some(deadline), carried, finish, .. } =
                entry
            {
                if *deadline <= now {
                    let encoding = *encoding;
                    let mut finish = finish.take();
                    let carried = std::mem::take(carried);
                    let (bytes, keep_alive) = encode(encoding, carried, &mut finish);
                    *entry = Entry::Ready { bytes, keep_alive, finish, body: None };
                    expired = true;
                }
            }
        }
        expired
    }

    /// Appends to `out` every ready response no longer behind a waiting
    /// one or a stream; `watch` gets each one's hooks with `out`'s length
    /// after it. A response with a streamed body stops it after its head:
    /// the body streams from then on, until `stream_deadline` unless it
    /// makes progress.
    pub(crate) fn release(
        &mut self,
        out: &mut Vec<u8>,
        stream_deadline: Instant,
        mut watch: impl FnMut(usize, Box<Finishing>),
    ) -> Released {
        while matches!(self.entries.front(), Some(Entry::Ready { .. })) {
            let Some(Entry::Ready { bytes, keep_alive, finish, body }) = self.entries.pop_front()
            else {
                unreachable!("checked above")
            };
            out.extend_from_slice(&bytes);
            if let Some(mut body) = body {
                // Its hooks wait for the end of the body, not of the head.
                if finish.is_some() {
                    body.finish = finish;
                }
                body.deadline = stream_deadline;
                self.entries.push_front(Entry::Streaming(body));
                return Released::KeepOpen;
            }
            if let Some(finish) = finish {
                watch(out.len(), finish);
            }
            if !keep_alive {
                // Nothing after a closing response is sent.
                self.cut_short();
                return Released::Close;
            }
        }
        Released::KeepOpen
    }

    /// The connection closes with responses still waiting: they are cut
    /// short.
    pub(crate) fn cut_short(&mut self) {
        for entry in self.entries.drain(..) {
            let (finish, body) = match entry {
                Entry::Waiting { finish, .. } => (finish, None),
                Entry::Ready { finish, body, .. } => (finish, body),
                Entry::Streaming(body) => (None, Some(body)),
            };
            // Dropping a body tells its producer: its writes fail from now.
            for finish in finish.into_iter().chain(body.and_then(|mut body| body.take_finish())) {
                (*finish).fire(false);
            }
        }
    }
}

impl Drop for ResponseQueue {
    fn drop(&mut self) {
        self.cut_short();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Encoding = Encoding { head_request: false, keep_alive: true, http10: false };

    fn fill(queue: &mut ResponseQueue, id: u64, body: &str, keep_alive: bool) -> bool {
        queue.fill(id, |_, _| (body.as_bytes().to_vec(), keep_alive, None))
    }

    fn release(queue: &mut ResponseQueue, out: &mut Vec<u8>) -> Released {
        queue.release(out, Instant::now(), |_, _| {})
    }

    #[test]
    fn responses_leave_in_request_order() {
        let mut queue = ResponseQueue::default();
        let mut out = Vec::new();
        queue.wait_for(1, KEEP, None, Vec::new(), None);
        queue.push_ready(b"B".to_vec(), true, None);
        queue.wait_for(2, KEEP, None, Vec::new(), None);
        assert_eq!(release(&mut queue, &mut out), Released::KeepOpen);
        assert!(out.is_empty(), "nothing may pass the first outstanding job");
        assert!(fill(&mut queue, 2, "C", true));
        assert_eq!(release(&mut queue, &mut out), Released::KeepOpen);
        assert!(out.is_empty(), "job 2 is ready but still behind job 1");
        assert!(fill(&mut queue, 1, "A", true));
        assert_eq!(release(&mut queue, &mut out), Released::KeepOpen);
        assert_eq!(out, b"ABC");
        assert!(queue.is_empty());
    }

    #[test]
    fn a_closing_response_drops_what_follows() {
        let mut queue = ResponseQueue::default();
        let mut out = Vec::new();
        queue.wait_for(7, KEEP, None, Vec::new(), None);
        queue.push_ready(b"later".to_vec(), true, None);
        assert!(fill(&mut queue, 7, "last", false));
        assert_eq!(release(&mut queue, &mut out), Released::Close);
        assert_eq!(out, b"last");
        assert!(queue.is_empty());
    }

    #[test]
    fn an_unknown_job_is_ignored() {
        let mut queue = ResponseQueue::default();
        queue.wait_for(1, KEEP, None, Vec::new(), None);
        assert!(!fill(&mut queue, 9, "stray", true));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn the_encoder_sees_the_jobs_framing() {
        let mut queue = ResponseQueue::default();
        let head = Encoding { head_request: true, keep_alive: false, http10: true };
        queue.wait_for(3, head, None, Vec::new(), None);
        let mut seen = None;
        assert!(queue.fill(3, |encoding, _| {
            seen = Some(encoding);
            (Vec::new(), true, None)
        }));
        assert_eq!(seen, Some(head));
    }

    #[test]
    fn a_job_past_its_deadline_is_answered_and_its_late_result_ignored() {
        let mut queue = ResponseQueue::default();
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(5);
        queue.wait_for(1, KEEP, Some(later), Vec::new(), None);
        queue.wait_for(2, KEEP, Some(now), Vec::new(), None);
        assert_eq!(queue.next_deadline(), Some(now));
        assert!(queue.expire(now, |_, _, _| (b"503".to_vec(), true)));
        assert_eq!(queue.next_deadline(), Some(later), "only job 2 ran out");
        assert!(!fill(&mut queue, 2, "late", true), "its result has no place any more");
        assert!(fill(&mut queue, 1, "A", true));
        let mut out = Vec::new();
        assert_eq!(release(&mut queue, &mut out), Released::KeepOpen);
        assert_eq!(out, b"A503");
    }
}
