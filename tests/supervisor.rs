//! The supervisor: stalled loops are replaced, dead loops respawned, and
//! abandoned threads counted back when their handler returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use vigil::{LoopState, Request, Response, Service};

use crate::util::{self, Client};

/// Answers with its slot; `/spin` spins until the test releases it, and
/// `/hold` keeps its loop busy until the test lets go.
struct Spinner {
    slot: usize,
    release: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    entered: Sender<usize>,
}

impl Service for Spinner {
    fn call(&mut self, req: &Request<'_>, res: &mut Response) {
        let flag = match req.path() {
            "/spin" => &self.release,
            "/hold" => &self.hold,
            _ => &self.release,
        };
        if req.path() == "/spin" || req.path() == "/hold" {
            let _ = self.entered.send(self.slot);
            while !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
        res.header("X-Slot", self.slot.to_string());
    }
}

/// Releases the spinning handler even when an assertion fails, so that no
/// thread spins past its test.
struct ReleaseOnDrop(Arc<AtomicBool>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn slot_of(client: &mut Client) -> usize {
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client.reply().header("x-slot").expect("X-Slot").parse().unwrap()
}

#[test]
fn a_stalled_loop_is_replaced_and_its_thread_reclaimed() {
    let stall_timeout = Duration::from_millis(300);
    let check_interval = Duration::from_millis(20);
    let mut config = util::config(2);
    config.stall_timeout = stall_timeout;
    config.check_interval = Some(check_interval);
    let release = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    let _release_guard = (ReleaseOnDrop(release.clone()), ReleaseOnDrop(hold.clone()));
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let factory = {
        let (release, hold) = (release.clone(), hold.clone());
        move |slot| Spinner {
            slot,
            release: release.clone(),
            hold: hold.clone(),
            entered: entered_tx.clone(),
        }
    };
    let server = util::start(config, factory);
    let addr = server.local_addr();

    // Two keep-alive connections on the same loop: one will stall it, the
    // other is an idle bystander.
    let mut clients: Vec<(usize, Client)> = Vec::new();
    let (spinner, bystander) = loop {
        let mut client = Client::new(addr);
        let slot = slot_of(&mut client);
        if let Some(index) = clients.iter().position(|(s, _)| *s == slot) {
            break (client, clients.swap_remove(index).1);
        }
        clients.push((slot, client));
        assert!(clients.len() < 64, "connections never shared a loop");
    };
    let (mut spinner, mut bystander) = (spinner, bystander);
    let stalled_slot = slot_of(&mut spinner);
    spinner.send(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(entered.recv_timeout(util::IO_TIMEOUT).unwrap(), stalled_slot);
    let stalled_at = Instant::now();
    // A request on the bystander while its loop is stuck: it waits in the
    // kernel, and must not be lost.
    bystander.send(b"GET /during-the-stall HTTP/1.1\r\nHost: x\r\n\r\n");

    // New connections keep being served during the stall.
    for _ in 0..20 {
        let reply = util::get(addr, "/").expect("served during the stall");
        assert_eq!(reply.status, 200);
    }

    // The connection of the stuck request is closed at once...
    assert!(spinner.is_closed(), "the stalled request's connection is closed");
    let detected_after = stalled_at.elapsed();
    // Detection bound from the design: timeout + 2 intervals; the rest is
    // scheduling slack for a loaded test machine.
    assert!(
        detected_after <= stall_timeout + 2 * check_interval + Duration::from_secs(1),
        "replaced after {detected_after:?}"
    );

    // ...while the idle bystander moved to the replacement, which answers
    // the request it sent during the stall, and the next one.
    let reply = bystander.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-slot"), Some(stalled_slot.to_string().as_str()));
    assert_eq!(slot_of(&mut bystander), stalled_slot);

    let snapshot = server.snapshot();
    assert_eq!(snapshot.totals.replaced_stalled, 1);
    assert_eq!(snapshot.abandoned_alive, 1);
    let replacement = &snapshot.loops[stalled_slot];
    assert_eq!((replacement.generation, replacement.state), (1, LoopState::Serving));

    // The replacement serves. Keep the other loop busy so that it is not
    // waiting for connections; the next one must then go to the replacement.
    let mut other = loop {
        let mut client = Client::new(addr);
        if slot_of(&mut client) != stalled_slot {
            break client;
        }
    };
    other.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(entered.recv_timeout(util::IO_TIMEOUT).unwrap(), 1 - stalled_slot);
    let reply = util::get(addr, "/").expect("the replacement answers");
    hold.store(true, Ordering::Relaxed);
    assert_eq!(reply.header("x-slot"), Some(stalled_slot.to_string().as_str()));
    assert_eq!(other.reply().status, 200);

    // Released, the abandoned thread returns, sees it was abandoned, exits.
    release.store(true, Ordering::Relaxed);
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().reclaimed == 1));
    assert_eq!(server.snapshot().abandoned_alive, 0);
}

#[test]
fn a_server_whose_loop_cannot_start_does_not_start() {
    // It would say it serves (to systemd, or to the process it replaces)
    // with a slot that does not.
    let factory = |slot: usize| {
        if slot == 1 {
            panic!("factory fails for slot 1");
        }
        |_req: &Request<'_>, res: &mut Response| {
            res.body_static(b"ok");
        }
    };
    let err = vigil::Server::new(factory).config(util::config(2)).start().unwrap_err();
    assert!(err.to_string().contains("loop 1 did not start"), "{err}");
}

#[test]
fn a_loop_that_dies_is_respawned() {
    // The factory panics the second time it builds slot 0's service: the
    // rebuild after a handler panic, which runs outside the handler and so
    // kills the loop thread.
    let builds = Arc::new(AtomicUsize::new(0));
    let factory = {
        let builds = builds.clone();
        move |_slot: usize| {
            if builds.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("factory fails once");
            }
            |req: &Request<'_>, res: &mut Response| {
                if req.path() == "/panic" {
                    panic!("handler panics");
                }
                res.body_static(b"ok");
            }
        }
    };
    let mut config = util::config(1);
    config.check_interval = Some(Duration::from_millis(10));
    let server = util::start(config, factory);
    let addr = server.local_addr();
    let mut client = Client::new(addr);
    client.send(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        client.reply_to("GET").is_err() || client.is_closed(),
        "the dying loop drops its connection"
    );
    assert!(util::eventually(Duration::from_secs(10), || {
        let snapshot = server.snapshot();
        let replacement = &snapshot.loops[0];
        snapshot.totals.replaced_died == 1
            && (replacement.generation, replacement.state) == (1, LoopState::Serving)
    }));
    assert_eq!(util::get(addr, "/").unwrap().text(), "ok");
}

#[test]
fn graceful_recycle_loses_nothing() {
    let server = util::start(util::config(1), util::hello());
    let addr = server.local_addr();
    let mut client = Client::new(addr);
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    server.recycle(0).unwrap();
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[0].generation == 1)
    );
    // The idle keep-alive connection from before stays with the draining
    // loop, which gives it a grace (500 ms) for a request its client may
    // already be sending: one sent now is answered, not lost.
    client.send(b"GET /after-the-recycle HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = client.reply_to("GET").expect("the draining loop answers");
    assert_eq!(reply.status, 200);
    // Then the connection ends: at once after `Connection: close`, or at
    // the end of the grace if the request reached the loop before it
    // began to drain.
    assert!(client.is_closed(), "the draining loop closes the connection");
    assert_eq!(util::get(addr, "/").unwrap().status, 200, "the new generation serves");
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().open_connections == 0));
    assert_eq!(server.snapshot().totals.recycled, 1);
    assert!(server.recycle(7).is_err());
}

#[test]
fn a_shutdown_delay_keeps_serving_while_not_ready() {
    let mut config = util::config(1);
    config.shutdown_delay = Duration::from_secs(60);
    let server = util::start(config, util::hello());
    let addr = server.local_addr();
    let mut before = Client::new(addr);
    before.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!before.reply().closes());
    server.shutdown();
    assert!(util::eventually(Duration::from_secs(10), || !server.is_ready()), "not ready at once");
    // Within the delay: new clients are accepted and served, and nobody is
    // told to close yet.
    let reply = util::get(addr, "/").unwrap();
    assert_eq!((reply.status, reply.closes()), (200, false));
    before.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!before.reply().closes());
    assert_eq!(server.snapshot().loops[0].state, LoopState::Serving);
    server.stop();
}
