//! Handoff: a loop busy on one request past the threshold gives its core,
//! listener and idle connections to a fresh loop; the slow request still
//! completes, and no one else waits for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vigil::{Config, LoopState, Request, Response, ServerHandle};

use crate::util::{self, Client, Gate, OpenOnDrop};

/// `/slow` waits for the gate (`/slow-panic` then panics, `/offload` waits
/// for it on the offload pool); everything else
/// answers its path. `X-Instance` tells which service instance (so which
/// loop: the factory makes one per loop) answered: 0 is the first.
fn gated_server(config: Config, gate: &Gate) -> ServerHandle {
    let gate = gate.clone();
    let instances = Arc::new(AtomicU64::new(0));
    util::start(config, move |_slot| {
        let gate = gate.clone();
        let instance = instances.fetch_add(1, Ordering::Relaxed).to_string();
        move |req: &Request<'_>, res: &mut Response| {
            res.header("X-Instance", instance.clone());
            match req.path() {
                "/slow" => gate.wait(),
                "/slow-panic" => {
                    gate.wait();
                    panic!("after the handoff");
                }
                "/offload" => {
                    let gate = gate.clone();
                    res.offload(move |res| {
                        gate.wait();
                        res.body_static(b"/offload");
                    });
                    return;
                }
                _ => {}
            }
            res.body(req.path().as_bytes().to_vec());
        }
    })
}

fn config(loops: usize) -> Config {
    let mut config = util::config(loops);
    config.handoff_after = Duration::from_millis(10);
    config.stall_timeout = Duration::from_secs(30);
    config
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn handed_off(server: &ServerHandle) -> bool {
    util::eventually(Duration::from_secs(10), || server.snapshot().totals.handoffs >= 1)
}

fn instance(reply: &util::Reply) -> &str {
    reply.header("x-instance").expect("X-Instance")
}

#[test]
fn a_slow_request_does_not_stop_others_and_still_completes() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let addr = server.local_addr();
    // Connected and idle before the slow request: it must move, not wait.
    let mut idle = Client::new(addr);
    idle.send(&request("/before"));
    assert_eq!(instance(&idle.reply()), "0");

    let mut slow = Client::new(addr);
    slow.send(&request("/slow"));
    assert!(handed_off(&server), "the busy loop is handed off");
    // The only loop's thread is still inside the handler (the gate is
    // shut), so each of these answers comes from the loop that took over.
    idle.send(&request("/idle-after"));
    let reply = idle.reply();
    assert_eq!((reply.text().as_str(), instance(&reply)), ("/idle-after", "1"));
    let reply = util::get(addr, "/new").unwrap();
    assert_eq!((reply.text().as_str(), instance(&reply)), ("/new", "1"));
    let snapshot = server.snapshot();
    assert_eq!(snapshot.handed_off_alive, 1);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().open_connections == 2),
        "the moved one and the slow one (the third has closed)"
    );
    assert_eq!(snapshot.handed_off[0].state, LoopState::HandedOff);
    assert_eq!(snapshot.loops[0].generation, 1);

    gate.open();
    let reply = slow.reply();
    assert_eq!((reply.status, reply.text().as_str(), instance(&reply)), (200, "/slow", "0"));
    assert!(!reply.closes(), "the slow request's connection stays open");
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().handed_off_alive == 0));
    slow.send(&request("/after"));
    let reply = slow.reply();
    assert_eq!(
        (reply.text().as_str(), instance(&reply)),
        ("/after", "1"),
        "passed to the new loop"
    );
    let snapshot = server.snapshot();
    assert_eq!(snapshot.open_connections, 2, "nothing lost or counted twice");
    assert_eq!(snapshot.loops[0].open_connections, 2, "both on the current loop");
    assert_eq!(snapshot.totals.requests_after_handoff, 1, "the slow one, on the old thread");
    assert_eq!(snapshot.handoff_durations.count, 1);
    assert_eq!(snapshot.totals.replaced_stalled, 0);
    assert_eq!(snapshot.abandoned_alive, 0);
}

#[test]
fn pipelined_requests_behind_a_slow_one_keep_their_order() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let mut client = Client::new(server.local_addr());
    let mut pipeline = request("/slow");
    pipeline.extend(request("/second"));
    pipeline.extend(request("/third"));
    client.send(&pipeline);
    assert!(handed_off(&server));
    assert_eq!(util::get(server.local_addr(), "/meanwhile").unwrap().text(), "/meanwhile");
    gate.open();
    for path in ["/slow", "/second", "/third"] {
        assert_eq!(client.reply().text(), path);
    }
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().handed_off_alive == 0));
    client.send(&request("/fourth"));
    let reply = client.reply();
    assert_eq!((reply.text().as_str(), instance(&reply)), ("/fourth", "1"));
}

#[test]
fn a_handed_off_request_that_panics_gets_its_500() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let mut client = Client::new(server.local_addr());
    client.send(&request("/slow-panic"));
    assert!(handed_off(&server));
    gate.open();
    assert_eq!(client.reply().status, 500);
    client.send(&request("/next"));
    assert_eq!(client.reply().text(), "/next");
    assert_eq!(server.snapshot().totals.handler_panics, 1);
}

#[test]
fn a_handed_off_request_past_the_stall_timeout_is_abandoned() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let mut config = config(1);
    config.stall_timeout = Duration::from_millis(300);
    let server = gated_server(config, &gate);
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().abandoned_alive == 1),
        "abandoned at the stall timeout"
    );
    assert!(slow.is_closed(), "its client sees a close");
    let snapshot = server.snapshot();
    assert_eq!((snapshot.handed_off_alive, snapshot.totals.replaced_stalled), (0, 1));
    assert_eq!(util::get(server.local_addr(), "/alive").unwrap().text(), "/alive");
    gate.open();
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().reclaimed == 1));
}

#[test]
fn a_handoff_under_load_loses_no_request() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    // One loop: every client is on the loop that is handed off.
    let server = gated_server(config(1), &gate);
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
            thread::spawn(move || {
                let mut client = Client::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    client.send(&request("/load"));
                    sent.fetch_add(1, Ordering::Relaxed);
                    assert_eq!(client.reply().text(), "/load");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut slow = Client::new(addr);
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    // Every client keeps being answered while the slow request is pending.
    let at_handoff = answered.load(Ordering::Relaxed);
    assert!(util::eventually(Duration::from_secs(10), || answered.load(Ordering::Relaxed)
        > at_handoff + 1000));
    gate.open();
    assert_eq!(slow.reply().text(), "/slow");
    let at_release = answered.load(Ordering::Relaxed);
    assert!(util::eventually(Duration::from_secs(10), || answered.load(Ordering::Relaxed)
        > at_release + 1000));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("no client saw a failure");
    }
    assert_eq!(sent.load(Ordering::Relaxed), answered.load(Ordering::Relaxed));
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().handed_off_alive == 0));
}

#[test]
fn a_moved_connection_closed_by_the_new_loop_closes_for_its_client() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let mut config = config(1);
    config.keep_alive_timeout = Duration::from_millis(200);
    config.header_timeout = Duration::from_millis(200);
    let server = gated_server(config, &gate);
    let mut idle = Client::new(server.local_addr());
    idle.send(&request("/before"));
    assert_eq!(instance(&idle.reply()), "0");
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    // The old thread still holds its own fd of the moved connection (it is
    // inside the handler): the new loop's idle timeout must still end the
    // connection for the client.
    assert!(idle.is_closed(), "the client sees the close while the old thread is stuck");
    assert_eq!(server.snapshot().handed_off_alive, 1, "the gate is still shut");
    gate.open();
    assert_eq!(slow.reply().text(), "/slow");
}

#[test]
fn offloaded_work_pending_at_a_handoff_is_answered_in_order() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let mut offloaded = Client::new(server.local_addr());
    let mut pipeline = request("/offload");
    pipeline.extend(request("/behind"));
    offloaded.send(&pipeline);
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().offload.running == 1));
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    // The connection waiting for its offloaded response stayed with the
    // old thread (it holds state); it answers once the work is back.
    gate.open();
    assert_eq!(offloaded.reply().text(), "/offload");
    assert_eq!(offloaded.reply().text(), "/behind", "in request order");
    assert_eq!(slow.reply().text(), "/slow");
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().handed_off_alive == 0));
    offloaded.send(&request("/after"));
    let reply = offloaded.reply();
    assert_eq!((reply.text().as_str(), instance(&reply)), ("/after", "1"), "then passed on");
}

#[test]
fn a_shutdown_finishes_a_handed_off_request() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    server.shutdown();
    assert!(util::eventually(Duration::from_secs(10), || !server.is_ready()));
    gate.open();
    let reply = slow.reply();
    assert_eq!((reply.status, reply.closes()), (200, true), "answered, and told the server goes");
    assert_eq!(server.wait(), vigil::Outcome::Stopped);
}

#[test]
fn a_connections_place_in_its_address_count_moves_with_it() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let mut config = config(1);
    config.max_connections_per_ip = 2;
    let server = gated_server(config, &gate);
    let addr = server.local_addr();
    let mut idle = Client::new(addr);
    idle.send(&request("/before"));
    assert_eq!(idle.reply().status, 200);
    let mut slow = Client::new(addr);
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    // The moved connection still holds its place: a third is refused.
    assert_eq!(Client::new(addr).reply().status, 503);
    gate.open();
    assert_eq!(slow.reply().text(), "/slow");
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().handed_off_alive == 0));
    drop(idle);
    drop(slow);
    assert!(
        util::eventually(Duration::from_secs(10), || {
            // Two at once: a place lost in the move would leave one.
            let (mut a, mut b) = (Client::new(addr), Client::new(addr));
            a.send(&request("/a"));
            b.send(&request("/b"));
            a.reply_to("GET").is_ok_and(|reply| reply.status == 200)
                && b.reply_to("GET").is_ok_and(|reply| reply.status == 200)
        }),
        "both places given back once their connections ended"
    );
}

#[test]
fn a_run_of_commands_does_not_put_off_the_supervisors_checks() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let mut config = config(1);
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    let server = gated_server(config, &gate);
    // One after another, each answered before the next: each wakes the
    // supervisor early, and none may move its next check later (each once
    // did, by a check interval: 2,000 of them, 20 s). One recycle is
    // carried out, the rest are merged into it.
    let mut admin = Client::new(server.admin_addr().unwrap());
    for _ in 0..2000 {
        admin.send(b"POST /loops/0/recycle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(admin.reply().status, 202);
    }
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[0].generation == 1)
    );
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server), "the busy loop is handed off on time after the commands");
    gate.open();
    assert_eq!(slow.reply().text(), "/slow");
}

#[test]
fn a_recycled_loop_stuck_in_a_handler_is_given_up() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let mut config = config(1);
    config.handoff_after = Duration::ZERO;
    config.stall_timeout = Duration::from_millis(300);
    let server = gated_server(config, &gate);
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(util::eventually(Duration::from_secs(10), || gate.reached() == 1));
    // Recycled while its handler is stuck: it cannot drain, so the
    // supervisor must still give it up at the stall timeout.
    server.recycle(0).unwrap();
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().abandoned_alive == 1),
        "the stuck recycled loop is given up"
    );
    assert!(slow.is_closed(), "its client sees a close");
    assert_eq!(util::get(server.local_addr(), "/alive").unwrap().text(), "/alive");
    gate.open();
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().reclaimed == 1));
}

#[test]
fn a_handed_off_thread_shows_the_handler_it_is_in() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let server = gated_server(config(1), &gate);
    let mut slow = Client::new(server.local_addr());
    slow.send(&request("/slow"));
    assert!(handed_off(&server));
    // Captured for /loops without the supervisor waiting for it.
    let shown = util::eventually(Duration::from_secs(10), || {
        server.control().symbolize_stacks();
        server.snapshot().handed_off.first().and_then(|l| l.stack.clone()).is_some()
    });
    assert!(shown, "the handed-off thread's stack is in the snapshot");
    let stack = server.snapshot().handed_off[0].stack.clone().unwrap();
    assert!(stack.summary(4).contains("Gate::wait"), "{stack:#?}");
    // On demand, by slot and generation: the same thread, still there.
    let control = server.control();
    let again = control.stack(0, Some(0)).expect("the handed-off loop");
    assert!(again.summary(4).contains("Gate::wait"), "{again:#?}");
    // The slot's current loop waits for events in its own loop.
    let current = control.stack(0, None).expect("the current loop");
    assert!(
        current
            .frames
            .iter()
            .any(|f| f.function.as_deref().is_some_and(|f| f.contains("vigil::event_loop"))),
        "{current:#?}"
    );
    assert_eq!(control.stack(7, None).unwrap_err(), vigil::forensics::StackError::UnknownLoop);
    gate.open();
    assert_eq!(slow.reply().status, 200);
}
