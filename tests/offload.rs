//! The offload pool: order on a connection, back-pressure, panics, and
//! loops that keep serving while offloaded work runs.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use vigil::{Request, Response};

use crate::util::{self, Client};

type Handler = Box<dyn FnMut(&Request<'_>, &mut Response)>;

/// A service whose `/job` offloads work that waits for the test's go,
/// after telling the test it started.
fn gated(
    started: Sender<()>,
    go: Receiver<()>,
) -> impl Fn(usize) -> Handler + Send + Sync + 'static {
    move |_slot| {
        let (started, go) = (started.clone(), go.clone());
        Box::new(move |req: &Request<'_>, res: &mut Response| match req.path() {
            "/job" => {
                let (started, go) = (started.clone(), go.clone());
                res.offload(move |res| {
                    let _ = started.send(());
                    let _ = go.recv();
                    res.body_static(b"job done");
                });
            }
            "/boom" => {
                res.offload(|_res| panic!("offloaded work fails"));
            }
            path => {
                res.body(path.as_bytes().to_vec());
            }
        })
    }
}

#[test]
fn pipelined_responses_stay_in_order_behind_slow_offloaded_work() {
    // The offloaded job finishes only after the two later requests were
    // handled on the loop, so their responses are ready first.
    let (handled_tx, handled) = crossbeam_channel::unbounded::<()>();
    let server = util::start(util::config(1), move |_slot| {
        let (handled_tx, handled) = (handled_tx.clone(), handled.clone());
        move |req: &Request<'_>, res: &mut Response| {
            if req.path() == "/slow" {
                let handled = handled.clone();
                res.offload(move |res| {
                    for _ in 0..2 {
                        handled.recv().unwrap();
                    }
                    res.body_static(b"/slow");
                });
            } else {
                res.body(req.path().as_bytes().to_vec());
                handled_tx.send(()).unwrap();
            }
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    for expected in ["/slow", "/b", "/c"] {
        assert_eq!(client.reply().text(), expected);
    }
}

#[test]
fn a_full_queue_answers_503_and_a_panic_500_and_the_pool_goes_on() {
    let mut config = util::config(1);
    config.offload_threads = 1;
    config.offload_queue = 1;
    let (started_tx, started) = crossbeam_channel::unbounded();
    let (go_tx, go) = crossbeam_channel::unbounded();
    let server = util::start(config, gated(started_tx, go));
    let addr = server.local_addr();
    let mut running = Client::new(addr);
    running.send(b"GET /job HTTP/1.1\r\nHost: x\r\n\r\n");
    started.recv_timeout(util::IO_TIMEOUT).unwrap();
    let mut queued = Client::new(addr);
    queued.send(b"GET /job HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().offload.queued == 1));
    let refused = util::get(addr, "/job").unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    go_tx.send(()).unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(running.reply().text(), "job done");
    assert_eq!(queued.reply().text(), "job done");
    let boom = util::get(addr, "/boom").unwrap();
    assert_eq!(boom.status, 500);
    go_tx.send(()).unwrap();
    assert_eq!(util::get(addr, "/job").unwrap().text(), "job done", "the pool still serves");
    let offload = server.snapshot().offload;
    assert_eq!((offload.rejected, offload.panicked, offload.completed), (1, 1, 4));
}

#[test]
fn the_loop_keeps_serving_while_offloaded_work_runs() {
    let mut config = util::config(1);
    config.offload_threads = 4;
    // Offloaded work longer than the stall timeout does not stall the loop.
    config.stall_timeout = Duration::from_millis(50);
    config.check_interval = Some(Duration::from_millis(10));
    let (started_tx, started) = crossbeam_channel::unbounded();
    let (go_tx, go) = crossbeam_channel::unbounded();
    let server = Arc::new(util::start(config, gated(started_tx, go)));
    let addr = server.local_addr();
    let mut jobs: Vec<Client> = (0..20)
        .map(|_| {
            let mut client = Client::new(addr);
            client.send(b"GET /job HTTP/1.1\r\nHost: x\r\n\r\n");
            client
        })
        .collect();
    for _ in 0..4 {
        started.recv_timeout(util::IO_TIMEOUT).unwrap();
    }
    // All 20 are outstanding (4 running, 16 queued) and `/` is answered
    // by the same, only, loop.
    assert!(util::eventually(Duration::from_secs(10), || {
        let offload = server.snapshot().offload;
        offload.running + offload.queued == 20
    }));
    for _ in 0..10 {
        assert_eq!(util::get(addr, "/").unwrap().text(), "/");
    }
    let outstanding = server.snapshot().offload;
    assert_eq!(outstanding.running + outstanding.queued, 20, "answered while the work ran");
    // Past several stall timeouts with work running: no stall.
    let uptime = server.snapshot().uptime_seconds;
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().uptime_seconds
        > uptime + 0.3));
    assert_eq!(server.snapshot().totals.replaced_stalled, 0);
    for _ in 0..20 {
        go_tx.send(()).unwrap();
    }
    for client in &mut jobs {
        assert_eq!(client.reply().text(), "job done");
    }
}

#[test]
fn a_client_gone_before_its_work_ends_is_forgotten_quietly() {
    let (started_tx, started) = crossbeam_channel::unbounded();
    let (go_tx, go) = crossbeam_channel::unbounded();
    let server = util::start(util::config(1), gated(started_tx, go));
    let addr = server.local_addr();
    let mut leaving = Client::new(addr);
    leaving.send(b"GET /job HTTP/1.1\r\nHost: x\r\n\r\n");
    started.recv_timeout(util::IO_TIMEOUT).unwrap();
    drop(leaving);
    go_tx.send(()).unwrap();
    assert!(util::eventually(Duration::from_secs(10), || {
        let snapshot = server.snapshot();
        snapshot.offload.completed == 1 && snapshot.open_connections == 0
    }));
    assert_eq!(util::get(addr, "/still").unwrap().text(), "/still");
}
