//! The sockets of a loop's connections, shared with the supervisor so that
//! it can take them over when it gives the loop up.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// A connection's socket, owned jointly by its loop and the loop's
/// [`FdRegistry`]: the fd closes only when both have let go, so a socket
/// the supervisor finds in the registry is always open and always this
/// connection's (never a number the kernel reused).
#[derive(Debug)]
pub(crate) struct SharedSocket {
    pub(crate) stream: TcpStream,
    /// Whether the connection has no state outside the kernel: no buffered
    /// input or output, no offloaded work, not being served. Such a
    /// connection can move to another loop and lose nothing. Set by its
    /// loop with a relaxed store; read by the supervisor only once the loop
    /// is stuck, when it no longer changes.
    clean: AtomicBool,
}

impl SharedSocket {
    pub(crate) fn new(stream: TcpStream) -> SharedSocket {
        SharedSocket { stream, clean: AtomicBool::new(false) }
    }

    #[inline]
    pub(crate) fn set_clean(&self, clean: bool) {
        self.clean.store(clean, Relaxed);
    }

    fn is_clean(&self) -> bool {
        self.clean.load(Relaxed)
    }
}

/// The sockets of one loop's connections, indexed by connection token.
#[derive(Debug, Default)]
pub(crate) struct FdRegistry {
    entries: Vec<Option<Arc<SharedSocket>>>,
    /// Set by the supervisor once it has taken the connections over; the
    /// loop registers no connection after that.
    closed: bool,
}

/// The sockets of a loop given up on, as duplicates the supervisor owns.
#[derive(Debug, Default)]
pub(crate) struct TakenOver {
    /// Idle connections, for the replacement loop to serve.
    pub(crate) clean: Vec<TcpStream>,
    /// Connections with state the stuck loop holds: to be shut down.
    pub(crate) stuck: Vec<TcpStream>,
}

impl FdRegistry {
    pub(crate) fn insert(&mut self, token: usize, socket: Arc<SharedSocket>) {
        if self.entries.len() <= token {
            self.entries.resize_with(token + 1, || None);
        }
        self.entries[token] = Some(socket);
    }

    pub(crate) fn remove(&mut self, token: usize) {
        if let Some(entry) = self.entries.get_mut(token) {
            *entry = None;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Duplicates every registered socket, sorted into clean and stuck
    /// ones, and marks the registry closed. The duplicates keep the sockets
    /// open whatever the abandoned loop does with its own fds later.
    pub(crate) fn take_over(&mut self) -> TakenOver {
        debug_assert!(!self.closed, "a loop is taken over once");
        self.closed = true;
        let mut taken = TakenOver::default();
        for socket in self.entries.drain(..).flatten() {
            match socket.stream.try_clone() {
                Ok(copy) if socket.is_clean() => taken.clean.push(copy),
                Ok(copy) => taken.stuck.push(copy),
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

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn take_over_sorts_by_the_clean_flag_and_closes_the_registry() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut registry = FdRegistry::default();
        let mut clients = Vec::new();
        for token in 0..3 {
            let (client, server) = pair(&listener);
            clients.push(client);
            let socket = Arc::new(SharedSocket::new(server));
            socket.set_clean(token != 1);
            registry.insert(token, socket);
        }
        registry.remove(2);
        let taken = registry.take_over();
        assert!(registry.is_closed());
        assert_eq!((taken.clean.len(), taken.stuck.len()), (1, 1));
    }
}
