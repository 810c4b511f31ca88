//! Per-loop jemalloc arenas: figures per loop, and recycling over the limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vigil::{Request, Response};

use crate::util::{self, Client};

/// `/alloc?mb=N` keeps N MiB alive in the loop's service.
fn hoarder(slot: usize) -> impl FnMut(&Request<'_>, &mut Response) {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    move |req, res| {
        if req.path() == "/alloc" {
            let mb: usize = req.query_param("mb").and_then(|v| v.parse().ok()).unwrap_or(1);
            hoard.push(vec![1u8; mb << 20]);
        }
        res.header("X-Slot", slot.to_string());
    }
}

fn slot_of(reply: &util::Reply) -> usize {
    reply.header("x-slot").unwrap().parse().unwrap()
}

#[test]
fn a_loop_holding_64_mib_shows_it_in_its_own_arena() {
    let mut config = util::config(2);
    config.mem_interval = Duration::from_millis(20);
    // Filling the hoard takes longer than a handoff threshold; it must stay
    // in the loop whose arena is watched.
    config.handoff_after = Duration::ZERO;
    let server = util::start(config, hoarder);
    let allocated = |slot: usize| server.snapshot().loops[slot].memory.map(|m| m.allocated);
    assert!(util::eventually(Duration::from_secs(10), || allocated(0).is_some()
        && allocated(1).is_some()));
    let mut client = Client::new(server.local_addr());
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let slot = slot_of(&client.reply());
    let other = 1 - slot;
    let (base, other_base) = (allocated(slot).unwrap(), allocated(other).unwrap());
    client.send(b"GET /alloc?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    assert!(
        util::eventually(Duration::from_secs(10), || allocated(slot).unwrap() >= base + (64 << 20)),
        "loop {slot} shows the 64 MiB"
    );
    let other_now = allocated(other).unwrap();
    assert!(
        other_now.abs_diff(other_base) < 4 << 20,
        "loop {other} moved {other_base} -> {other_now}"
    );
}

#[test]
fn crossing_the_limit_recycles_the_loop_without_losing_a_request() {
    let mut config = util::config(2);
    config.mem_interval = Duration::from_millis(20);
    // Filling the hoard takes longer than a handoff threshold; it must stay
    // in the loop whose arena is watched.
    config.handoff_after = Duration::ZERO;
    config.mem_limit = Some(32 << 20);
    let server = util::start(config, hoarder);
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, completed) = (stop.clone(), failures.clone(), completed.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                    match client.reply_to("GET") {
                        Ok(reply) if reply.status == 200 => {
                            completed.fetch_add(1, Ordering::Relaxed);
                            if reply.closes() {
                                client = Client::new(addr);
                            }
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            client = Client::new(addr);
                        }
                    }
                }
            })
        })
        .collect();
    assert!(util::eventually(Duration::from_secs(10), || completed.load(Ordering::Relaxed) > 100));
    let reply = util::get(addr, "/alloc?mb=48").unwrap();
    let slot = slot_of(&reply);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[slot].generation == 1),
        "loop {slot} recycled"
    );
    let at_recycle = completed.load(Ordering::Relaxed);
    assert!(util::eventually(Duration::from_secs(10), || completed.load(Ordering::Relaxed)
        > at_recycle + 100));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed across the recycle");
    assert_eq!(server.snapshot().totals.recycled, 1);
}

#[test]
fn far_over_the_limit_a_loop_is_handed_off_and_reads_no_new_request() {
    let mut config = util::config(1);
    config.mem_interval = Duration::from_millis(20);
    config.handoff_after = Duration::ZERO;
    config.mem_limit = Some(16 << 20);
    let server = util::start(config, hoarder);
    let mut kept = Client::new(server.local_addr());
    kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(kept.reply().status, 200);
    // Three times the limit: a drain would go on reading this client's
    // next requests (each could add as much again).
    let reply = util::get(server.local_addr(), "/alloc?mb=48").unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[0].generation == 1),
        "replaced"
    );
    kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = kept.reply();
    assert_eq!(reply.status, 200);
    assert!(!reply.closes(), "moved to the fresh loop, not drained with Connection: close");
    let snapshot = server.snapshot();
    assert_eq!((snapshot.totals.recycled, snapshot.totals.handoffs), (1, 0));
}
