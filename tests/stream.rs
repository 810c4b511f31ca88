//! Streamed response bodies over real sockets: chunks as they are written,
//! backpressure from a client that does not read, `BrokenPipe` when the
//! client goes, order under pipelining, and the framings.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use vigil::{Request, Response};

use crate::util::{self, Client};

type Handler = Box<dyn FnMut(&Request<'_>, &mut Response)>;

/// What the producers of the test service report.
#[derive(Clone)]
struct Probe {
    /// Each producer's outcome: `Ok` or the error that stopped it.
    ended: Sender<io::Result<()>>,
    /// Lets a producer go on past its first chunk.
    go: Receiver<()>,
    /// A request to `/after` was handled.
    after: Sender<()>,
    /// Bytes the `/flood` producer got into the stream.
    flooded: Arc<AtomicU64>,
    /// The `/flood` producer is inside a write.
    in_write: Arc<AtomicBool>,
}

/// `/two`: "first", then (after the test's go) "second"; `/flood`: 64 MiB;
/// `/pool-panic`: a producer on the pool that panics after one chunk;
/// `/sized`: 10 bytes with a length; `/short`: a length of 10, 5 sent;
/// `/empty`: a 204 whose producer is told there is no body; `/after`:
/// a plain answer; `/pool`: "pooled" from the offload pool.
fn service(probe: Probe) -> impl Fn(usize) -> Handler + Send + Sync + 'static {
    move |_slot| {
        let probe = probe.clone();
        Box::new(move |req: &Request<'_>, res: &mut Response| {
            let probe = probe.clone();
            match req.path() {
                "/two" => {
                    let mut writer = res.header("Content-Type", "text/plain").stream();
                    std::thread::spawn(move || {
                        let result = (|| {
                            writer.write_all(b"first")?;
                            let _ = probe.go.recv();
                            writer.write_all(b"second")?;
                            writer.finish()
                        })();
                        let _ = probe.ended.send(result);
                    });
                }
                "/flood" => {
                    let mut writer = res.stream();
                    std::thread::spawn(move || {
                        let chunk = vec![b'x'; 64 * 1024];
                        let result = (|| {
                            for _ in 0..1024 {
                                probe.in_write.store(true, Relaxed);
                                writer.write_all(&chunk)?;
                                probe.in_write.store(false, Relaxed);
                                probe.flooded.fetch_add(chunk.len() as u64, Relaxed);
                            }
                            writer.finish()
                        })();
                        let _ = probe.ended.send(result);
                    });
                }
                "/pool-panic" => {
                    res.stream_with(|writer| {
                        writer.write_all(b"partial")?;
                        writer.flush()?;
                        panic!("the producer fails halfway");
                    });
                }
                "/pool" => {
                    res.stream_with(|writer| writer.write_all(b"pooled"));
                }
                "/sized" => {
                    let mut writer = res.stream_sized(10);
                    std::thread::spawn(move || {
                        let result = writer.write_all(b"0123456789").and_then(|()| writer.finish());
                        let _ = probe.ended.send(result);
                    });
                }
                "/short" => {
                    let mut writer = res.stream_sized(10);
                    std::thread::spawn(move || {
                        let result = writer.write_all(b"01234").and_then(|()| writer.finish());
                        let _ = probe.ended.send(result);
                    });
                }
                "/empty" => {
                    let mut writer = res.status(204).stream();
                    std::thread::spawn(move || {
                        let _ = probe.ended.send(writer.write_all(b"nobody reads this"));
                    });
                }
                "/after" => {
                    res.body_static(b"after");
                    let _ = probe.after.send(());
                }
                _ => {
                    res.status(404);
                }
            }
        })
    }
}

struct Harness {
    server: vigil::ServerHandle,
    ended: Receiver<io::Result<()>>,
    go: Sender<()>,
    after: Receiver<()>,
    flooded: Arc<AtomicU64>,
    in_write: Arc<AtomicBool>,
}

fn start(config: vigil::Config) -> Harness {
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    let (go, go_rx) = crossbeam_channel::unbounded();
    let (after_tx, after) = crossbeam_channel::unbounded();
    let flooded = Arc::new(AtomicU64::new(0));
    let in_write = Arc::new(AtomicBool::new(false));
    let probe = Probe {
        ended: ended_tx,
        go: go_rx,
        after: after_tx,
        flooded: flooded.clone(),
        in_write: in_write.clone(),
    };
    let server = util::start(config, service(probe));
    Harness { server, ended, go, after, flooded, in_write }
}

const WAIT: Duration = util::IO_TIMEOUT;

#[test]
fn a_chunk_arrives_before_the_producer_has_finished() {
    let h = start(util::config(1));
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n");
    // The producer waits for `go` after its first chunk: the chunk must
    // already be here.
    let so_far = client.read_until(b"first").unwrap().to_vec();
    let head = String::from_utf8_lossy(&so_far);
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("Content-Length"), "{head}");
    h.go.send(()).unwrap();
    let reply = client.reply();
    assert_eq!(reply.text(), "firstsecond");
    assert!(h.ended.recv_timeout(WAIT).unwrap().is_ok());
    // The connection stays usable after a chunked body.
    client.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.reply().text(), "after");
}

#[test]
fn a_client_that_never_reads_blocks_the_producer_not_the_loop() {
    let h = start(util::config(1));
    let addr = h.server.local_addr();
    let mut stalled = Client::new(addr);
    stalled.send(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    // The producer blocks once the queue, the connection's output and
    // the kernel's buffers are full.
    assert!(util::eventually(WAIT, || h.in_write.load(Relaxed)
        && h.flooded.load(Relaxed) > 0
        && h.ended.is_empty()));
    // Meanwhile the one loop serves others.
    for _ in 0..3 {
        assert_eq!(util::get(addr, "/after").unwrap().text(), "after");
    }
    let flooded = h.flooded.load(Relaxed);
    assert!(flooded < 32 << 20, "{flooded} bytes accepted from a producer nobody reads");
    assert!(h.ended.is_empty(), "the producer is still blocked, not finished");
    // The client goes: the producer's write fails and frees its thread.
    drop(stalled);
    let err = h.ended.recv_timeout(WAIT).unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn later_responses_on_the_connection_wait_behind_the_stream() {
    let h = start(util::config(1));
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    // `/after` is answered while the stream is half done.
    h.after.recv_timeout(WAIT).unwrap();
    h.go.send(()).unwrap();
    assert_eq!(client.reply().text(), "firstsecond");
    assert_eq!(client.reply().text(), "after");
}

#[test]
fn an_http10_stream_ends_at_the_close() {
    let h = start(util::config(1));
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /two HTTP/1.0\r\n\r\n");
    h.go.send(()).unwrap();
    let all = String::from_utf8(client.read_to_close().unwrap()).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Connection: close"), "{head}");
    assert!(!head.contains("Transfer-Encoding") && !head.contains("Content-Length"), "{head}");
    assert_eq!(body, "firstsecond");
}

#[test]
fn head_and_204_send_the_head_only_and_the_producer_hears_broken_pipe() {
    let h = start(util::config(1));
    let mut client = Client::new(h.server.local_addr());
    client.send(b"HEAD /two HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = client.reply_to("HEAD").unwrap();
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"), "as for GET");
    h.go.send(()).unwrap();
    let err = h.ended.recv_timeout(WAIT).unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

    client.send(b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.reply().status, 204);
    let err = h.ended.recv_timeout(WAIT).unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    // Nothing stray followed either head.
    client.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.reply().text(), "after");
}

#[test]
fn a_producer_that_panics_on_the_pool_cuts_the_response_and_the_pool_goes_on() {
    let mut config = util::config(1);
    config.offload_threads = 1;
    let h = start(config);
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /pool-panic HTTP/1.1\r\nHost: t\r\n\r\n");
    let all = client.read_to_close().unwrap();
    let (head, body) = all.split_at(util::body_start(&all));
    assert!(String::from_utf8_lossy(head).contains("Transfer-Encoding: chunked"));
    assert!(util::parse_chunked(body).unwrap().is_none(), "no final chunk: {body:?}");
    assert!(body.windows(7).any(|w| w == b"partial"));
    // The pool's one thread is free again.
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /pool HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.reply().text(), "pooled");
}

#[test]
fn a_sized_stream_has_a_content_length_and_one_that_falls_short_is_cut() {
    let h = start(util::config(1));
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.header("content-length"), Some("10"));
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.text(), "0123456789");
    assert!(h.ended.recv_timeout(WAIT).unwrap().is_ok());

    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n");
    let all = client.read_to_close().unwrap();
    let body = &all[util::body_start(&all)..];
    assert_eq!(body, b"01234", "closed after the 5 bytes there were");
}

#[test]
fn a_stream_with_nothing_to_send_for_its_idle_timeout_is_cut() {
    let mut config = util::config(1);
    config.stream_idle_timeout = Duration::from_millis(200);
    let h = start(config);
    let mut client = Client::new(h.server.local_addr());
    client.send(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n");
    client.read_until(b"first").unwrap();
    // The producer waits for a go that does not come: the loop gives up.
    let rest = client.read_to_close().unwrap();
    assert!(util::parse_chunked(&rest[util::body_start(&rest)..]).unwrap().is_none());
    h.go.send(()).unwrap();
    let err = h.ended.recv_timeout(WAIT).unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}
