//! How a loop takes connections from the listener every loop shares: in
//! bounded batches, re-arming its place in the kernel's wait queue, and
//! standing aside for a moment when it holds more than its share.

use mio::Poll;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::shared::{LoopShared, ServerShared};
use crate::sys::{self, sort_io_error, IoVerdict};

/// Accepts after which a loop moves itself to the back of the listener's
/// wait queue (as nginx does every 16). With `EPOLLEXCLUSIVE` the kernel
/// wakes the first waiting epoll instance in the order they were added, so
/// without this the first loop takes nearly every connection whenever it
/// is waiting. It is also the most a loop accepts per wake-up: the listener
/// is level-triggered, so what is left wakes a loop again, the other one
/// first, and a burst of connections is shared.
pub(super) const ACCEPTS_PER_REARM: u32 = 16;

/// A loop holding more than its share of connections stops accepting for
/// this long. Re-arming alone leaves spreads like 20/45 over two loops when
/// 64 clients connect at once; a pause of a few wake-ups evens them out.
const BALANCE_PAUSE: Duration = Duration::from_millis(20);

/// How long a loop keeps accepting without pausing after a pause in which
/// no other loop accepted anything.
const BALANCE_SUSPEND: Duration = Duration::from_secs(1);

/// Below this many connections a loop takes what comes: an uneven spread of
/// a few connections costs nothing.
const BALANCE_MIN_CONNECTIONS: usize = 8;

/// How long accepting pauses when the process is out of file descriptors,
/// instead of spinning on a listener that stays readable.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_millis(100);

/// More than a quarter over an even share of the `total` open connections
/// of `loops` loops (and enough of them for the difference to matter).
pub(super) fn holds_more_than_its_share(loops: usize, mine: usize, total: usize) -> bool {
    loops > 1 && mine >= BALANCE_MIN_CONNECTIONS && mine * 4 * loops > total * 5
}

/// After a balancing pause: whether to stop balancing for a while. When
/// nobody accepted while this loop stood aside, the others are stuck (or
/// there was nothing to accept); standing aside again would only delay new
/// clients until a stalled loop is replaced.
pub(super) fn suspend_balancing(accepted_before_pause: Option<u64>, accepted_now: u64) -> bool {
    accepted_before_pause == Some(accepted_now)
}

/// One loop's accept state.
#[derive(Debug, Default)]
pub(super) struct Acceptor {
    /// The listener is in this loop's epoll set.
    listening: bool,
    /// Accepts since the listener was last (re-)added.
    accepts_since_rearm: u32,
    /// The server's accept count when this loop paused to balance.
    accepted_before_pause: Option<u64>,
    /// No balancing pauses until then.
    balance_suspended_until: Option<Instant>,
    /// Not accepting until then (balancing, or out of fds).
    paused_until: Option<Instant>,
}

impl Acceptor {
    /// Adds the shared listener to the loop's epoll set `epoll`.
    ///
    /// `EPOLLEXCLUSIVE`: without it every loop waiting in `epoll_wait` is
    /// woken for each new connection and all but one find nothing (the
    /// thundering herd). With it the kernel wakes one *waiting* loop; a
    /// loop that is busy, or stalled in a handler, is not waiting and so
    /// takes no new connections, which is what keeps a stall local.
    pub(super) fn listen(&mut self, poll: &Poll, server: &ServerShared) -> io::Result<()> {
        sys::epoll_add_exclusive(poll, &server.listener, super::LISTENER.0 as u64)?;
        self.listening = true;
        self.accepts_since_rearm = 0;
        Ok(())
    }

    pub(super) fn stop_listening(
        &mut self,
        poll: &Poll,
        server: &ServerShared,
        shared: &LoopShared,
    ) {
        if self.listening {
            if let Err(err) = sys::epoll_delete(poll, &server.listener) {
                log::warn!("loop {} could not leave the listener: {err}", shared.name());
            }
            self.listening = false;
        }
    }

    /// The next time the loop must wake up to resume accepting.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Accepts up to the re-arm limit into `into`; true when it stopped at
    /// the limit (the backlog may hold more).
    pub(super) fn accept_batch(
        &mut self,
        poll: &Poll,
        server: &ServerShared,
        shared: &LoopShared,
        now: Instant,
        into: &mut Vec<TcpStream>,
    ) -> bool {
        if !self.listening {
            return false;
        }
        while self.accepts_since_rearm < ACCEPTS_PER_REARM {
            match sys::accept(&server.listener) {
                Ok(stream) => {
                    into.push(stream);
                    self.accepts_since_rearm += 1;
                }
                Err(err) => match sort_io_error(&err) {
                    IoVerdict::Wait => return false,
                    IoVerdict::Retry | IoVerdict::PeerGone => continue,
                    IoVerdict::OutOfFds => {
                        log::warn!(
                            "loop {} out of file descriptors, pausing accept for {:?}: {err}",
                            shared.name(),
                            OUT_OF_FDS_PAUSE
                        );
                        self.stop_listening(poll, server, shared);
                        self.paused_until = Some(now + OUT_OF_FDS_PAUSE);
                        break;
                    }
                    IoVerdict::Fatal => {
                        log::error!("loop {} accept failed: {err}", shared.name());
                        break;
                    }
                },
            }
        }
        self.accepts_since_rearm >= ACCEPTS_PER_REARM
    }

    /// After a batch, with `mine` connections open on this loop: stand
    /// aside if it holds more than its share, re-arm if due, and nudge the
    /// next loop when the backlog may hold more.
    ///
    /// A burst of connections raises the listener's readiness many times
    /// while the first loop woken has not yet left `epoll_wait`; the kernel
    /// counts each as waking that loop, so the others are never woken. The
    /// nudge (a `mio::Waker`, about once per 16 connections of a burst)
    /// makes the next loop accept too.
    pub(super) fn share(
        &mut self,
        poll: &Poll,
        server: &ServerShared,
        shared: &LoopShared,
        now: Instant,
        mine: usize,
        backlog_left: bool,
    ) {
        let balancing_allowed = self.balance_suspended_until.map_or(true, |until| now >= until);
        let total = server.open_connections.load(Relaxed);
        if balancing_allowed && holds_more_than_its_share(server.config.loops, mine, total) {
            // Leave new connections to the others for a moment (the
            // listener is level-triggered: the next waiting loop gets them).
            self.stop_listening(poll, server, shared);
            self.paused_until = Some(now + BALANCE_PAUSE);
            self.accepted_before_pause = Some(server.accepted_total.load(Relaxed));
            server.nudge_next_loop(shared.slot);
            return;
        }
        if self.listening && self.accepts_since_rearm >= ACCEPTS_PER_REARM {
            // To the back of the listener's wait queue.
            self.stop_listening(poll, server, shared);
            if let Err(err) = self.listen(poll, server) {
                log::error!("loop {} could not re-arm the listener: {err}", shared.name());
            }
        }
        if backlog_left {
            server.nudge_next_loop(shared.slot);
        }
    }

    /// Listens again once a pause is over (unless the loop is draining).
    pub(super) fn resume_if_due(
        &mut self,
        poll: &Poll,
        server: &ServerShared,
        shared: &LoopShared,
        now: Instant,
        draining: bool,
    ) {
        if !self.paused_until.is_some_and(|until| now >= until) {
            return;
        }
        self.paused_until = None;
        let accepted_now = server.accepted_total.load(Relaxed);
        if suspend_balancing(self.accepted_before_pause.take(), accepted_now) {
            self.balance_suspended_until = Some(now + BALANCE_SUSPEND);
        }
        if !draining {
            if let Err(err) = self.listen(poll, server) {
                log::error!("loop {} could not resume accepting: {err}", shared.name());
            }
        }
    }

    /// Whether the listener is in the loop's epoll set.
    pub(super) fn is_listening(&self) -> bool {
        self.listening
    }

    /// Starts a fresh batch (the shutdown empties the backlog batch by batch).
    pub(super) fn new_batch(&mut self) {
        self.accepts_since_rearm = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_share_is_within_a_quarter_of_even() {
        // Two loops, 40 connections: an even share is 20, the bound 25.
        assert!(!holds_more_than_its_share(2, 25, 40));
        assert!(holds_more_than_its_share(2, 26, 40));
        // Four loops, 100 connections: 25 each, up to 31.25 allowed.
        assert!(!holds_more_than_its_share(4, 31, 100));
        assert!(holds_more_than_its_share(4, 32, 100));
    }

    #[test]
    fn few_connections_or_one_loop_never_pause() {
        assert!(!holds_more_than_its_share(
            2,
            BALANCE_MIN_CONNECTIONS - 1,
            BALANCE_MIN_CONNECTIONS
        ));
        assert!(holds_more_than_its_share(2, BALANCE_MIN_CONNECTIONS, BALANCE_MIN_CONNECTIONS));
        assert!(!holds_more_than_its_share(1, 1000, 1000));
    }

    #[test]
    fn balancing_is_suspended_only_when_nobody_else_accepted() {
        assert!(suspend_balancing(Some(10), 10));
        assert!(!suspend_balancing(Some(10), 11));
        assert!(!suspend_balancing(None, 10), "no pause was for balancing");
    }
}
