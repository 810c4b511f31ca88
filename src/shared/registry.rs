//! The sockets of a loop's connections, shared with the supervisor so that
//! it can move them to another loop when it hands the loop off or gives it
//! up, and the inbox through which connections come back to a loop.
//!
//! # Atomic ordering
//! A connection is served by exactly one thread at a time. Who may touch it
//! is decided by its [`SharedSocket`]'s claim word, changed only by atomic
//! read-modify-writes:
//!
//! - the loop takes `HELD` with a `swap` before it reads, writes or closes
//!   the socket (`claim`), and stores `IDLE` or leaves it `HELD` after
//!   (`release`, with `Release` ordering: a connection the supervisor sees
//!   idle has no state in the loop);
//! - the supervisor moves a connection with a `compare_exchange` from
//!   `IDLE` to `MOVED` (`Acquire`), under the registry lock, and only then
//!   duplicates the fd for the loop that takes it over;
//! - a loop whose `swap` returns `MOVED` writes `MOVED` back and forgets the
//!   connection without a syscall on it beyond leaving its epoll set.
//!
//! So the loop and the supervisor can never both believe they own a
//! connection, however a handler's return races with a handoff. The lock
//! only makes a takeover atomic with respect to the registry's own state
//! (no insert into a registry being taken over, no delivery into an inbox
//! being emptied); the claim word needs no lock.

use crate::sys::RawSocket;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::peers::PeerTicket;

const IDLE: u8 = 0;
const HELD: u8 = 1;
const MOVED: u8 = 2;

/// A connection's socket, owned jointly by its loop and the loop's
/// [`FdRegistry`]: the fd closes only when both have let go, so a socket
/// the supervisor finds in the registry is always open and always this
/// connection's (never a number the kernel reused).
#[derive(Debug)]
pub(crate) struct SharedSocket {
    pub(crate) stream: TcpStream,
    /// `IDLE`: no state outside the kernel (no buffered input or output, no
    /// offloaded work, not being served), so it can move to another loop and
    /// lose nothing. `HELD`: the loop is serving it or holds state for it.
    /// `MOVED`: the supervisor gave it to another loop.
    claim: AtomicU8,
    /// Came from another loop as a duplicate: other fds (a stuck thread's)
    /// may keep the socket open after this loop closes its own, so closing
    /// must shut it down for the client to see the end.
    pub(crate) adopted: bool,
    /// Its place in its client address's count, when that is capped.
    pub(crate) ticket: Option<Arc<PeerTicket>>,
    /// The client's address, looked up once when first asked for (an
    /// access log asks on every request: a `getpeername` each time cost
    /// more than the rest of the line).
    /// Boxed: 16 bytes a connection rather than 40, for what only an
    /// access log asks.
    peer: std::sync::OnceLock<Box<Option<std::net::SocketAddr>>>,
}

/// A connection on its way from one loop to another: its socket and its
/// place in its address's count.
#[derive(Debug)]
pub(crate) struct Conveyed {
    pub(crate) stream: TcpStream,
    pub(crate) ticket: Option<Arc<PeerTicket>>,
}

impl SharedSocket {
    /// A new connection: idle (nothing read yet) until its loop claims it
    /// to read, so a handoff before that moves it.
    pub(crate) fn new(
        stream: TcpStream,
        adopted: bool,
        ticket: Option<Arc<PeerTicket>>,
    ) -> SharedSocket {
        SharedSocket {
            stream,
            claim: AtomicU8::new(IDLE),
            adopted,
            ticket,
            peer: std::sync::OnceLock::new(),
        }
    }

    /// The client's address (`None` if it was gone when first asked).
    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        **self.peer.get_or_init(|| Box::new(self.stream.peer_addr().ok()))
    }

    /// The socket for reads and writes (see [`RawSocket`]). The fd lives
    /// as long as `stream`, which `self` owns.
    pub(crate) fn raw(&self) -> RawSocket {
        RawSocket(std::os::fd::AsRawFd::as_raw_fd(&self.stream))
    }

    /// The connection has ended: its address's count goes down.
    pub(crate) fn give_back_ticket(&self) {
        if let Some(ticket) = &self.ticket {
            ticket.give_back();
        }
    }

    /// Takes the connection for the calling loop; false when it was moved,
    /// and then the loop must forget it.
    #[inline]
    pub(crate) fn claim(&self) -> bool {
        if self.claim.swap(HELD, Ordering::Acquire) == MOVED {
            self.claim.store(MOVED, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends a claim: `clean` connections may be moved from now on.
    #[inline]
    pub(crate) fn release(&self, clean: bool) {
        self.claim.store(if clean { IDLE } else { HELD }, Ordering::Release);
    }

    pub(crate) fn is_moved(&self) -> bool {
        self.claim.load(Ordering::Relaxed) == MOVED
    }

    /// Takes an idle connection away from its loop (supervisor side).
    fn try_move(&self) -> bool {
        self.claim.compare_exchange(IDLE, MOVED, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
}

/// What the supervisor has done with a loop's registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The loop accepts and adopts connections.
    Open,
    /// Its idle connections moved to a fresh loop; it keeps the rest.
    HandedOff,
    /// Given up: every connection was moved or shut down.
    Closed,
}

/// The sockets of one loop's connections, indexed by connection token, and
/// the loop's inbox of connections handed to it by another loop.
#[derive(Debug)]
pub(crate) struct FdRegistry {
    entries: Vec<Option<Arc<SharedSocket>>>,
    inbox: Vec<Conveyed>,
    stage: Stage,
    /// A draining loop takes no more connections from other loops.
    refuse_deliveries: bool,
}

impl Default for FdRegistry {
    fn default() -> Self {
        FdRegistry {
            entries: Vec::new(),
            inbox: Vec::new(),
            stage: Stage::Open,
            refuse_deliveries: false,
        }
    }
}

/// The idle connections of a loop handed off, as duplicates.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    pub(crate) streams: Vec<Conveyed>,
    /// How many were the loop's own (the rest were in its inbox, and so on
    /// no loop's count).
    pub(crate) from_loop: usize,
}

/// The sockets of a loop given up on, as duplicates the supervisor owns.
#[derive(Debug, Default)]
pub(crate) struct TakenOver {
    /// Idle connections, for another loop to serve.
    pub(crate) clean: Vec<Conveyed>,
    /// Connections with state the stuck loop holds: to be shut down.
    pub(crate) stuck: Vec<TcpStream>,
}

impl FdRegistry {
    /// Records connection `token`; false once the loop was given up on
    /// (then the caller drops the connection).
    pub(crate) fn insert(&mut self, token: usize, socket: Arc<SharedSocket>) -> bool {
        if self.stage == Stage::Closed {
            return false;
        }
        if self.entries.len() <= token {
            self.entries.resize_with(token + 1, || None);
        }
        self.entries[token] = Some(socket);
        true
    }

    pub(crate) fn remove(&mut self, token: usize) {
        if let Some(entry) = self.entries.get_mut(token) {
            *entry = None;
        }
    }

    /// True once the supervisor has given the loop up.
    pub(crate) fn is_closed(&self) -> bool {
        self.stage == Stage::Closed
    }

    /// Hands `stream` to this loop, if it still takes connections.
    pub(crate) fn deliver(&mut self, stream: Conveyed) -> Result<(), Conveyed> {
        if self.stage != Stage::Open || self.refuse_deliveries {
            return Err(stream);
        }
        self.inbox.push(stream);
        Ok(())
    }

    /// The loop is about to drain (or has died): deliveries from now on go
    /// elsewhere; returns what was delivered before, for the caller to
    /// serve or pass on.
    pub(crate) fn close_inbox(&mut self) -> Vec<Conveyed> {
        self.refuse_deliveries = true;
        std::mem::take(&mut self.inbox)
    }

    /// The connections delivered since the last call.
    pub(crate) fn take_inbox(&mut self) -> Vec<Conveyed> {
        std::mem::take(&mut self.inbox)
    }

    /// Moves every idle connection (and the inbox) out, as duplicates for a
    /// fresh loop; the loop keeps the connections it holds.
    pub(crate) fn hand_off(&mut self) -> Moved {
        debug_assert_eq!(self.stage, Stage::Open, "a loop is handed off once");
        self.stage = Stage::HandedOff;
        let mut moved = Moved { streams: std::mem::take(&mut self.inbox), from_loop: 0 };
        for entry in &mut self.entries {
            let Some(socket) = entry else { continue };
            // The duplicate first: a connection that cannot be duplicated
            // (out of fds) stays where it is rather than be lost.
            let Ok(copy) = socket.stream.try_clone() else { continue };
            if !socket.try_move() {
                continue;
            }
            moved.from_loop += 1;
            moved.streams.push(Conveyed { stream: copy, ticket: socket.ticket.clone() });
            *entry = None;
        }
        moved
    }

    /// Takes every connection: idle ones (and the inbox) as duplicates for
    /// another loop, the rest as duplicates to shut down. Marks the
    /// registry closed.
    pub(crate) fn take_over(&mut self) -> TakenOver {
        debug_assert_ne!(self.stage, Stage::Closed, "a loop is given up once");
        self.stage = Stage::Closed;
        let mut taken = TakenOver { clean: std::mem::take(&mut self.inbox), stuck: Vec::new() };
        for socket in self.entries.drain(..).flatten() {
            let clean = socket.try_move();
            match socket.stream.try_clone() {
                Ok(copy) if clean => {
                    taken.clean.push(Conveyed { stream: copy, ticket: socket.ticket.clone() })
                }
                Ok(copy) => {
                    // Shut down by the supervisor: it ends here, although
                    // the stuck thread still holds it.
                    socket.give_back_ticket();
                    taken.stuck.push(copy);
                }
                Err(err) => log::warn!("cannot duplicate a connection's socket: {err}"),
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn socket(listener: &TcpListener, clients: &mut Vec<TcpStream>) -> Arc<SharedSocket> {
        clients.push(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        Arc::new(SharedSocket::new(listener.accept().unwrap().0, false, None))
    }

    #[test]
    fn a_held_connection_is_never_moved() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let socket = socket(&listener, &mut clients);
        assert!(socket.claim(), "the loop takes it to read");
        assert!(!socket.try_move(), "held while claimed");
        socket.release(true);
        assert!(socket.claim(), "the loop takes it back first");
        assert!(!socket.try_move());
        socket.release(true);
        assert!(socket.try_move());
        assert!(!socket.claim(), "a moved connection cannot be claimed");
        assert!(socket.is_moved(), "and stays moved");
    }

    #[test]
    fn hand_off_moves_idle_connections_and_the_inbox_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let mut registry = FdRegistry::default();
        let idle = socket(&listener, &mut clients);
        idle.release(true);
        let held = socket(&listener, &mut clients);
        assert!(held.claim(), "being read");
        assert!(registry.insert(0, idle.clone()));
        assert!(registry.insert(1, held.clone()));
        let delivered = socket(&listener, &mut clients);
        let conveyed =
            |s: &SharedSocket| Conveyed { stream: s.stream.try_clone().unwrap(), ticket: None };
        registry.deliver(conveyed(&delivered)).unwrap();
        let moved = registry.hand_off();
        assert_eq!(
            (moved.streams.len(), moved.from_loop),
            (2, 1),
            "the idle one and the delivered one"
        );
        assert!(idle.is_moved() && !held.is_moved());
        assert!(registry.deliver(conveyed(&delivered)).is_err());
        assert!(!registry.is_closed(), "a handed-off loop keeps its held connections");
        let taken = registry.take_over();
        assert_eq!((taken.clean.len(), taken.stuck.len()), (0, 1));
        assert!(registry.is_closed());
        assert!(!registry.insert(2, idle), "nothing is registered after a takeover");
    }

    #[test]
    fn take_over_sorts_by_claim() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let mut registry = FdRegistry::default();
        for token in 0..3 {
            let socket = socket(&listener, &mut clients);
            socket.release(token != 1);
            registry.insert(token, socket);
        }
        registry.remove(2);
        let taken = registry.take_over();
        assert_eq!((taken.clean.len(), taken.stuck.len()), (1, 1));
    }
}
