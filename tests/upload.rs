//! Request bodies by route policy over real sockets: streamed uploads far
//! past the body limit, backpressure from a reader that does not read,
//! refusals before `100 Continue`, and what happens to a body nobody reads.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use vigil::app::App;
use vigil::{BodyPolicy, Request, Response};

use crate::util::{self, Client, Gate, OpenOnDrop};

/// FNV-1a, 64 bits: enough to tell a body arrived byte for byte.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Test body bytes: not all alike, so that a lost or repeated piece shows.
fn pattern(len: usize, from: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

#[derive(Clone)]
struct Probe {
    /// `/stream?wait` reads nothing until this opens.
    gate: Gate,
    /// Bytes the `/stream` readers have read.
    consumed: Arc<AtomicU64>,
    /// How each streaming handler's reading ended.
    outcomes: Sender<io::Result<u64>>,
    /// `/limited` handler calls.
    limited_calls: Arc<AtomicU64>,
}

/// Reads `body` to its end on the pool and answers "<bytes> <hash>", or the
/// error's kind with 400 (413 when over the limit).
fn read_on_pool(mut body: vigil::BodyReader, res: &mut Response, probe: Probe, wait: bool) {
    res.offload(move |res| {
        if wait {
            probe.gate.wait();
        }
        let mut hash = FNV_START;
        let mut total = 0u64;
        let mut buf = vec![0; 64 * 1024];
        let outcome = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok(total),
                Ok(n) => {
                    hash = fnv1a(hash, &buf[..n]);
                    total += n as u64;
                    probe.consumed.fetch_add(n as u64, Relaxed);
                }
                Err(err) => break Err(err),
            }
        };
        match &outcome {
            Ok(total) => res.body(format!("{total} {hash:016x}")),
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => {
                res.status(413).body(format!("{:?}", err.kind()))
            }
            Err(err) => res.status(400).body(format!("{:?}", err.kind())),
        };
        let _ = probe.outcomes.send(outcome);
    });
}

fn app(probe: Probe) -> vigil::app::AppFactory<()> {
    let streaming = probe.clone();
    let limited = probe.clone();
    App::new()
        .post("/stream", move |req: &Request<'_>, res: &mut Response| {
            let body = req.body_reader().expect("a streamed body has a reader");
            read_on_pool(body, res, streaming.clone(), req.query_param("wait").is_some());
        })
        .with_body(BodyPolicy::Stream(u64::MAX))
        .post("/limited", move |req: &Request<'_>, res: &mut Response| {
            limited.limited_calls.fetch_add(1, Relaxed);
            let body = req.body_reader().expect("a streamed body has a reader");
            read_on_pool(body, res, limited.clone(), false);
        })
        .with_body(BodyPolicy::Stream(1000))
        .post("/ignore", |_req: &Request<'_>, res: &mut Response| {
            res.status(401).body_static(b"no");
        })
        .with_body(BodyPolicy::Stream(u64::MAX))
        .post("/buffered", |req: &Request<'_>, res: &mut Response| {
            assert!(req.body_reader().is_none(), "a buffered body has no reader");
            let body = req.body();
            res.body(format!("{} {:016x}", body.len(), fnv1a(FNV_START, body)));
        })
        .post("/small", |req: &Request<'_>, res: &mut Response| {
            res.body(req.body().to_vec());
        })
        .with_body(BodyPolicy::Buffer(10))
        .post("/refuse", |_req: &Request<'_>, res: &mut Response| {
            res.body_static(b"no body here");
        })
        .with_body(BodyPolicy::Refuse)
        .get("/after", |_req: &Request<'_>, res: &mut Response| {
            res.body_static(b"after");
        })
        .build()
        .expect("routes are valid")
}

struct Harness {
    server: vigil::ServerHandle,
    probe: Probe,
    outcomes: Receiver<io::Result<u64>>,
    _open: OpenOnDrop,
}

fn start() -> Harness {
    let (outcomes_tx, outcomes) = crossbeam_channel::unbounded();
    let probe = Probe {
        gate: Gate::default(),
        consumed: Arc::new(AtomicU64::new(0)),
        outcomes: outcomes_tx,
        limited_calls: Arc::new(AtomicU64::new(0)),
    };
    // One loop: whatever an upload does to it, the others see.
    let mut config = util::config(1);
    config.limits.max_body_bytes = 1 << 20;
    let server = util::start(config, app(probe.clone()));
    let open = OpenOnDrop(probe.gate.clone());
    Harness { server, probe, outcomes, _open: open }
}

const WAIT: std::time::Duration = util::IO_TIMEOUT;
const FIFTY_MIB: usize = 50 << 20;

/// The reply text an upload of `body` gets from `/stream` or `/buffered`.
fn expected(body: &[u8]) -> String {
    format!("{} {:016x}", body.len(), fnv1a(FNV_START, body))
}

/// Writes `body` on its own thread, in pieces, as a chunked body when
/// `chunked` (with a trailer): the server reads while the client sends.
fn send_body(stream: &TcpStream, body: Arc<Vec<u8>>, chunked: bool) -> thread::JoinHandle<()> {
    let mut stream = stream.try_clone().unwrap();
    thread::spawn(move || {
        // Odd sizes, so that chunk and read boundaries fall anywhere.
        for piece in body.chunks(777_777) {
            if chunked {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
                stream.write_all(piece).unwrap();
                stream.write_all(b"\r\n").unwrap();
            } else {
                stream.write_all(piece).unwrap();
            }
        }
        if chunked {
            stream.write_all(b"0\r\nX-Checksum: none\r\n\r\n").unwrap();
        }
    })
}

#[test]
fn fifty_mib_streams_past_the_body_limit_and_a_buffered_route_refuses_it_before_100_continue() {
    let h = start();
    let addr = h.server.local_addr();
    let body = Arc::new(pattern(FIFTY_MIB, 0));
    for chunked in [false, true] {
        let mut client = Client::new(addr);
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {FIFTY_MIB}")
        };
        client.send(
            format!(
                "POST /stream HTTP/1.1\r\nHost: t\r\n{framing}\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        );
        // The client sends nothing before it is told to go on.
        let interim = client.reply();
        assert_eq!(interim.status, 100, "{interim:?}");
        let sender = send_body(&client.stream, body.clone(), chunked);
        let reply = client.reply();
        sender.join().unwrap();
        assert_eq!((reply.status, reply.text()), (200, expected(&body)), "chunked: {chunked}");
        assert!(!reply.closes(), "chunked: {chunked}");
        assert_eq!(h.outcomes.recv_timeout(WAIT).unwrap().unwrap(), FIFTY_MIB as u64);
        // The connection goes on after the body.
        client.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(client.reply().text(), "after");
    }

    // The same body to a buffered route: 413 instead of 100 Continue.
    let mut client = Client::new(addr);
    client.send(
        format!(
            "POST /buffered HTTP/1.1\r\nHost: t\r\nContent-Length: {FIFTY_MIB}\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let reply = client.reply();
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.closes());
    assert!(client.is_closed());

    // Under the limit, the buffered route has the whole body in memory.
    let small = pattern(100_000, 3);
    let mut client = Client::new(addr);
    client.send(
        format!("POST /buffered HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", small.len())
            .as_bytes(),
    );
    client.send(&small);
    assert_eq!(client.reply().text(), expected(&small));
}

#[test]
fn a_reader_that_does_not_read_holds_the_client_back_and_the_loop_serves_others() {
    let h = start();
    let addr = h.server.local_addr();
    const TOTAL: usize = 64 << 20;
    let mut client = Client::new(addr);
    client.send(
        format!("POST /stream?wait HTTP/1.1\r\nHost: t\r\nContent-Length: {TOTAL}\r\n\r\n")
            .as_bytes(),
    );
    let written = Arc::new(AtomicU64::new(0));
    let in_write = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut stream, written, in_write) =
            (client.stream.try_clone().unwrap(), written.clone(), in_write.clone());
        stream.set_write_timeout(None).unwrap();
        thread::spawn(move || {
            for piece in pattern(TOTAL, 0).chunks(64 * 1024) {
                in_write.store(true, Relaxed);
                stream.write_all(piece).unwrap();
                in_write.store(false, Relaxed);
                written.fetch_add(piece.len() as u64, Relaxed);
            }
        })
    };
    // The client stalls inside a write once the queue and the kernel's
    // buffers are full, and stays stalled while the one loop answers
    // others: three requests between two looks at the count.
    let mut last = u64::MAX;
    assert!(util::eventually(WAIT, || {
        for _ in 0..3 {
            assert_eq!(util::get(addr, "/after").unwrap().text(), "after");
        }
        let now = written.load(Relaxed);
        let stalled = in_write.load(Relaxed) && now == last;
        last = now;
        stalled
    }));
    // The kernel's buffers on both sides hold most of what was taken.
    let accepted = written.load(Relaxed);
    assert!(accepted < 32 << 20, "{accepted} bytes taken for a reader that reads nothing");
    assert_eq!(h.probe.consumed.load(Relaxed), 0);
    // The reader starts: the loop goes back to the socket, and the whole
    // body arrives intact.
    h.probe.gate.open();
    writer.join().unwrap();
    assert_eq!(client.reply().text(), expected(&pattern(TOTAL, 0)));
}

#[test]
fn pipelined_requests_after_a_streamed_body_are_answered_in_order() {
    let h = start();
    let mut client = Client::new(h.server.local_addr());
    let body = pattern(300_000, 1);
    let mut requests =
        format!("POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    requests.extend_from_slice(&body);
    requests.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    requests.extend_from_slice(b"POST /stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    requests.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    let sender = send_body(&client.stream, Arc::new(requests), false);
    assert_eq!(client.reply().text(), expected(&body));
    assert_eq!(client.reply().text(), "after");
    assert_eq!(client.reply().text(), expected(b"hello"));
    assert_eq!(client.reply().text(), "after");
    sender.join().unwrap();
}

#[test]
fn refused_and_oversized_bodies_get_413_before_the_body_is_read() {
    let h = start();
    let addr = h.server.local_addr();
    let refused = [
        "POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
        "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
        "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        "POST /limited HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n",
    ];
    for request in refused {
        let mut client = Client::new(addr);
        client.send(request.as_bytes());
        let reply = client.reply();
        assert_eq!(reply.status, 413, "{request:?}: {reply:?}");
        assert!(client.is_closed(), "{request:?}");
    }
    assert_eq!(h.probe.limited_calls.load(Relaxed), 0, "refused before the handler ran");
    // Within the limits the same routes answer.
    let mut client = Client::new(addr);
    client.send(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789");
    assert_eq!(client.reply().text(), "0123456789");
    client.send(b"POST /refuse HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.reply().text(), "no body here");
    // A chunked body that outgrows a streaming route's limit fails its
    // reader, whose handler answers.
    let mut client = Client::new(addr);
    let chunk = "a".repeat(600);
    client.send(
        format!("POST /limited HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n")
            .as_bytes(),
    );
    let reply = client.reply();
    assert_eq!((reply.status, reply.text().as_str()), (413, "InvalidInput"));
    assert_eq!(
        h.outcomes.recv_timeout(WAIT).unwrap().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(client.is_closed(), "the rest of that body is not read");
}

#[test]
fn a_handler_that_leaves_the_body_unread_answers_and_the_connection_closes() {
    let h = start();
    let addr = h.server.local_addr();
    let mut client = Client::new(addr);
    client.send(b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n");
    client.send(&pattern(100_000, 0));
    let reply = client.reply();
    assert_eq!((reply.status, reply.text().as_str()), (401, "no"));
    assert_eq!(reply.header("connection"), Some("close"), "the response says it closes");
    assert!(client.is_closed(), "the body is not read: nothing can follow it");
    assert_eq!(util::get(addr, "/after").unwrap().text(), "after");
}

#[test]
fn a_client_that_goes_away_mid_body_fails_the_reader() {
    let h = start();
    let mut client = Client::new(h.server.local_addr());
    client.send(b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    client.send(&pattern(1000, 0));
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let err = h.outcomes.recv_timeout(WAIT).unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    // The handler's answer to it still goes out to the half-closed client.
    let reply = client.reply();
    assert_eq!((reply.status, reply.text().as_str()), (400, "UnexpectedEof"));

    // Gone for good (the connection reset): the reader is failed too.
    let mut client = Client::new(h.server.local_addr());
    client.send(
        b"POST /stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    );
    drop(client);
    let err = h.outcomes.recv_timeout(WAIT).unwrap().unwrap_err();
    assert!(
        matches!(err.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionAborted),
        "{err}"
    );
}
