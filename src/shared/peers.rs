//! Connections per client address, for `--max-connections-per-ip`.
//!
//! Each admitted connection holds a [`PeerTicket`]; it goes with the
//! connection wherever it moves (handoff, takeover, inbox) and is given back
//! once, when the connection ends: by the loop that closes it, by the
//! supervisor for one it shuts down, or when the last holder drops it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// Open connections per client address, capped.
#[derive(Debug)]
pub(crate) struct PeerCounts {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place in its address's count.
#[derive(Debug)]
pub(crate) struct PeerTicket {
    ip: IpAddr,
    counts: Arc<PeerCounts>,
    given_back: AtomicBool,
}

impl PeerCounts {
    pub(crate) fn new(cap: usize) -> Arc<PeerCounts> {
        Arc::new(PeerCounts { cap, open: Mutex::new(HashMap::new()) })
    }

    /// A ticket for one more connection from `ip`; `None` at the cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<PeerTicket>> {
        let mut open = lock(&self.open);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Arc::new(PeerTicket { ip, counts: self.clone(), given_back: AtomicBool::new(false) }))
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        lock(&self.open).get(&ip).copied().unwrap_or(0)
    }
}

impl PeerTicket {
    /// The connection has ended: its address may open another. Once only,
    /// whoever calls it.
    pub(crate) fn give_back(&self) {
        if self.given_back.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut open = lock(&self.counts.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Drop for PeerTicket {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_cap_tickets_and_each_comes_back_once() {
        let counts = PeerCounts::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.admit(ip).unwrap();
        let second = counts.admit(ip).unwrap();
        assert!(counts.admit(ip).is_none(), "at the cap");
        assert!(counts.admit(other).is_some(), "per address");
        first.give_back();
        first.give_back();
        assert_eq!(counts.open(ip), 1, "given back once");
        let moved = second.clone();
        drop(second);
        assert_eq!(counts.open(ip), 1, "another holder keeps it");
        drop(moved);
        drop(first);
        assert_eq!(counts.open(ip), 0);
    }
}
