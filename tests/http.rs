//! HTTP/1.1 on the wire: keep-alive, pipelining, bodies, and bad input.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::{self, Client};

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = util::start(util::config(2), util::hello());
    let mut client = Client::new(server.local_addr());
    for _ in 0..50 {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "Hello World\n");
        assert!(!reply.closes());
        assert_eq!(reply.header("content-length"), Some("12"));
        assert_eq!(reply.header("server"), Some("vigil"));
        let date = reply.header("date").expect("Date header");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
    }
}

#[test]
fn pipelined_requests_split_at_every_offset_are_answered_in_order() {
    let server = util::start(util::config(1), |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(req.path().as_bytes().to_vec());
        }
    });
    let requests = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        GET /three HTTP/1.1\r\nHost: x\r\n\r\n";
    for split in 1..requests.len() {
        let mut client = Client::new(server.local_addr());
        client.stream.set_nodelay(true).unwrap();
        client.send(&requests[..split]);
        client.stream.flush().unwrap();
        client.send(&requests[split..]);
        for path in ["/one", "/two", "/three"] {
            let reply = client.reply();
            assert_eq!((reply.status, reply.text().as_str()), (200, path), "split at {split}");
        }
    }
}

#[test]
fn content_length_and_chunked_bodies_reach_the_service() {
    let server = util::start(util::config(1), |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(req.body().to_vec());
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(client.reply().text(), "hello world");
    client.send(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: dropped\r\n\r\n",
    );
    assert_eq!(client.reply().text(), "hello world");
    // A body bigger than the loop's read buffer, in many writes.
    let big = vec![b'x'; 300 * 1024];
    client.send(
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes(),
    );
    for part in big.chunks(7000) {
        client.send(part);
    }
    assert_eq!(client.reply().body, big);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = util::start(util::config(1), |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(req.body().to_vec());
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = client.reply();
    assert_eq!(interim.status, 100, "100 Continue comes before the body is sent");
    client.send(b"data");
    let reply = client.reply();
    assert_eq!((reply.status, reply.text().as_str()), (200, "data"));
}

#[test]
fn head_gets_headers_without_a_body() {
    let server = util::start(util::config(1), util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = client.reply_to("HEAD").unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("12"));
    assert!(head.body.is_empty());
    // The next response starts right after the HEAD response's headers.
    assert_eq!(client.reply().text(), "Hello World\n");
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked_for() {
    let server = util::start(util::config(1), util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"GET / HTTP/1.0\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.status, 200);
    assert!(client.is_closed(), "HTTP/1.0 without keep-alive closes");

    let mut client = Client::new(server.local_addr());
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("keep-alive"), "an HTTP/1.0 client is told");
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.reply().status, 200);
}

#[test]
fn connection_close_stops_processing_what_follows() {
    let server = util::start(util::config(1), |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(req.path().as_bytes().to_vec());
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.text(), "/a");
    assert!(reply.closes());
    assert!(client.is_closed(), "/b must not be answered");
}

#[test]
fn a_panicking_handler_gets_500_and_the_loop_goes_on() {
    let mut config = util::config(1);
    // Printing a panic's backtrace can take longer than a handoff threshold,
    // and a handoff would give the slot a new loop: not what is tested here.
    config.handoff_after = std::time::Duration::ZERO;
    let server = util::start(config, |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            if req.path() == "/panic" {
                panic!("on purpose");
            }
            res.body_static(b"fine");
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 500);
    assert_eq!(client.reply().text(), "fine", "same connection, same loop, still serving");
    let snapshot = server.snapshot();
    assert_eq!(snapshot.loops[0].counters.handler_panics, 1);
    assert_eq!(snapshot.loops[0].generation, 0, "a handler panic does not replace the loop");
}

/// Bad requests, the status each must get, and (by the test below) a
/// closed connection and a server that still serves others.
const BAD_REQUESTS: &[(&str, &[u8], u16)] = &[
    ("both Content-Length and Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("conflicting Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("Content-Length list that disagrees", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("hex Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("overflowing Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    ("gzip before chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("identity coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size over the body limit", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 413),
    ("chunk data longer than its size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size line with bare LF", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n", 400),
    ("whitespace before colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-Name : v\r\n\r\n", 400),
    ("control character in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n", 400),
    ("missing Host in HTTP/1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("bare LF inside the head", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    ("space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk with GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("missing version", b"GET /\r\nHost: x\r\n\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    ("HTTP/2.0 in an HTTP/1 head", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    ("unknown expectation", b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
    ("body over the limit", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
    ("the largest Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n", 413),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\nA: 1\r\n\r\n", 431),
];

/// Limits small enough for the table above: 1 KiB heads, 8 headers.
fn strict_config() -> vigil::Config {
    let mut config = util::config(1);
    config.limits = vigil::Limits { max_head_bytes: 1024, max_headers: 8, max_body_bytes: 1 << 20 };
    config
}

#[test]
fn bad_requests_get_their_status_and_a_close_and_harm_nobody_else() {
    let server = util::start(strict_config(), util::hello());
    let addr = server.local_addr();
    // A keep-alive bystander on the same (only) loop.
    let mut bystander = Client::new(addr);
    let long_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let generated: [(&str, &[u8], u16); 2] = [
        ("head over the limit", long_header.as_bytes(), 431),
        ("target over the limit", long_target.as_bytes(), 414),
    ];
    let mut failures = Vec::new();
    for (name, request, status) in BAD_REQUESTS.iter().chain(&generated) {
        let mut client = Client::new(addr);
        client.send(request);
        match client.reply_to("GET") {
            Ok(reply) if reply.status == *status && reply.closes() && client.is_closed() => {}
            Ok(reply) => failures.push(format!(
                "{name}: got {} (close header {}, closed {}), want {status}",
                reply.status,
                reply.closes(),
                client.is_closed()
            )),
            Err(err) => failures.push(format!("{name}: no reply ({err}), want {status}")),
        }
        bystander.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(bystander.reply().status, 200, "bystander after {name}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad requests mishandled:\n{}",
        failures.len(),
        BAD_REQUESTS.len(),
        failures.join("\n")
    );
    // Each was refused before the service ran (which saw only the
    // bystander's requests, one per bad request), by the loop the server
    // started with, and every refused connection is closed.
    let refused = (BAD_REQUESTS.len() + generated.len()) as u64;
    assert!(util::eventually(util::IO_TIMEOUT, || {
        let snapshot = server.snapshot();
        snapshot.totals.requests == refused && snapshot.open_connections == 1
    }));
    let only = &server.snapshot().loops[0];
    assert_eq!(
        (only.counters.rejected, only.generation, only.counters.handler_panics),
        (refused, 0, 0)
    );
}

#[test]
fn an_unknown_transfer_coding_gets_501_and_a_close() {
    let server = util::start(util::config(1), |_| {
        |req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(req.path().as_bytes().to_vec());
        }
    });
    let mut client = Client::new(server.local_addr());
    // The "body" looks like a pipelined request: were it decoded, skipped
    // or parsed as the next request, /smuggled would be answered.
    client.send(
        b"POST /gzipped HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let reply = client.reply();
    assert_eq!(reply.status, 501, "{}", reply.text());
    assert!(reply.text().starts_with("501 Not Implemented"), "{}", reply.text());
    assert!(reply.closes(), "the 501 says Connection: close");
    assert!(client.is_closed(), "nothing follows the 501");
}

#[test]
fn a_request_cut_short_by_the_client_gets_400() {
    let server = util::start(util::config(1), util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = client.reply();
    assert_eq!(reply.status, 400);
    assert!(client.is_closed());
}

#[test]
fn a_slow_request_head_gets_408() {
    let mut config = util::config(1);
    config.header_timeout = Duration::from_millis(200);
    let server = util::start(config, util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let reply = client.reply();
    assert_eq!(reply.status, 408);
    assert!(client.is_closed());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let mut config = util::config(1);
    config.keep_alive_timeout = Duration::from_millis(200);
    let server = util::start(config, util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    // The read blocks until the server closes (or the 10 s client timeout).
    let mut byte = [0u8; 1];
    assert_eq!(client.stream.read(&mut byte).unwrap(), 0, "closed without a response");
}

#[test]
fn connections_over_the_limit_get_503() {
    let mut config = util::config(1);
    config.max_connections = 2;
    let server = util::start(config, util::hello());
    let addr = server.local_addr();
    let mut first = Client::new(addr);
    let mut second = Client::new(addr);
    for client in [&mut first, &mut second] {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(client.reply().status, 200);
    }
    let mut third = Client::new(addr);
    assert_eq!(third.reply().status, 503);
    drop(first);
    assert!(util::eventually(Duration::from_secs(5), || server.snapshot().open_connections < 2));
    let mut fourth = Client::new(addr);
    fourth.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(fourth.reply().status, 200);
}

#[test]
fn a_response_with_a_forbidden_header_becomes_500() {
    let server = util::start(util::config(1), |_| {
        |_req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.header("X-Injected", "a\r\nSet-Cookie: evil=1");
        }
    });
    let reply = util::get(server.local_addr(), "/").unwrap();
    assert_eq!(reply.status, 500);
    assert!(reply.header("set-cookie").is_none());
}

#[test]
fn connect_is_refused_501_unless_the_service_takes_it() {
    let called = Arc::new(AtomicUsize::new(0));
    let server = util::start(util::config(1), {
        let called = called.clone();
        move |_| {
            let called = called.clone();
            move |_req: &vigil::Request<'_>, res: &mut vigil::Response| {
                called.fetch_add(1, Ordering::Relaxed);
                res.body_static(b"tunnel?");
            }
        }
    });
    let mut client = Client::new(server.local_addr());
    client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    let reply = client.reply();
    assert_eq!(reply.status, 501, "a 2xx would tell the client a tunnel is open");
    assert!(client.is_closed());
    assert_eq!(called.load(Ordering::Relaxed), 0, "the service never saw it");

    let mut config = util::config(1);
    config.allow_connect = true;
    let server = util::start(config, util::hello());
    let mut client = Client::new(server.local_addr());
    client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(client.reply().status, 200, "a service that tunnels gets it");
}

#[test]
fn a_closing_response_followed_by_pipelined_requests_is_not_reset() {
    let server = util::start(util::config(1), util::hello());
    let mut stream = util::connect(server.local_addr());
    let mut requests = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3000 {
        requests.extend_from_slice(b"GET /more HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    stream.write_all(&requests).unwrap();
    let mut received = Vec::new();
    // A reset here (ECONNRESET) is what lingering prevents.
    stream.read_to_end(&mut received).expect("the server closes cleanly, after its answer");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "nothing answered after the closing response");
}

#[test]
fn a_body_trickling_in_below_the_minimum_rate_gets_408() {
    let mut config = util::config(1);
    config.header_timeout = Duration::from_millis(300);
    config.min_receive_rate = 100;
    let server = util::start(config, util::hello());
    let mut stream = util::connect(server.local_addr());
    stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n").unwrap();
    let mut writer = stream.try_clone().unwrap();
    // A byte every 20 ms: 50 B/s, under the 100 B/s asked for, but often
    // enough that a timeout between reads would never fire.
    let trickle = std::thread::spawn(move || {
        for _ in 0..1000 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            // sleep-ok: paces the slow client; nothing waits on it.
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut client = Client::from_stream(stream);
    let reply = client.reply_to("POST").expect("an answer before the client gives up");
    assert_eq!(reply.status, 408);
    drop(client);
    trickle.join().unwrap();
}

#[test]
fn connections_per_client_address_are_capped_and_given_back() {
    let mut config = util::config(1);
    config.max_connections_per_ip = 2;
    let server = util::start(config, util::hello());
    let addr = server.local_addr();
    let open = |client: &mut Client| {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        client.reply()
    };
    let mut first = Client::new(addr);
    let mut second = Client::new(addr);
    assert_eq!((open(&mut first).status, open(&mut second).status), (200, 200));
    let mut third = Client::new(addr);
    assert_eq!(third.reply().status, 503, "refused at accept, for this address");
    drop(first);
    assert!(
        util::eventually(Duration::from_secs(10), || {
            let mut again = Client::new(addr);
            again.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            again.reply_to("GET").is_ok_and(|reply| reply.status == 200)
        }),
        "a closed connection gives its place back"
    );
}

#[test]
fn a_partial_request_holds_only_its_bytes() {
    let mut config = util::config(1);
    config.mem_interval = Duration::from_millis(20);
    let server = util::start(config, util::hello());
    let allocated = || server.snapshot().loops[0].memory.map_or(0, |m| m.allocated);
    assert!(util::eventually(Duration::from_secs(10), || allocated() > 0));
    let before = allocated();
    let clients: Vec<std::net::TcpStream> = (0..500)
        .map(|_| {
            let mut stream = util::connect(server.local_addr());
            stream.write_all(b"GET").unwrap();
            stream
        })
        .collect();
    for mut stream in &clients {
        // A second piece: the read that used to grow a 16 KiB buffer.
        stream.write_all(b" /").unwrap();
    }
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().open_connections == 500));
    // Let the loop have read the second pieces: one more request on a
    // fresh connection is answered after them (the loop reads in order).
    assert_eq!(util::get(server.local_addr(), "/").unwrap().status, 200);
    assert!(
        util::eventually(Duration::from_secs(10), || {
            let per_connection = allocated().saturating_sub(before) / 500;
            per_connection < 2048
        }),
        "{} bytes per partial request",
        allocated().saturating_sub(before) / 500
    );
    drop(clients);
}

#[test]
fn a_client_that_does_not_read_large_responses_is_closed_at_its_deadline() {
    let mut config = util::config(1);
    config.header_timeout = Duration::from_millis(300);
    config.keep_alive_timeout = Duration::from_millis(300);
    let server = util::start(config, |_| {
        |_req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body(vec![b'x'; 1 << 20]);
        }
    });
    let mut stream = util::connect(server.local_addr());
    // Twenty responses of 1 MiB, more than the socket buffers hold, then
    // the start of another request; and the client never reads. The
    // server must not keep it open answering 408s nobody reads.
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.extend_from_slice(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    requests.extend_from_slice(b"GET /big HT");
    stream.write_all(&requests).unwrap();
    // Served: the first response is on its way (the loop counts requests
    // once per wake-up).
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().totals.requests >= 1));
    assert_eq!(server.snapshot().open_connections, 1);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().open_connections == 0),
        "closed at its deadline"
    );
    drop(stream);
}

#[test]
fn a_new_connections_head_deadline_counts_from_accept() {
    let mut config = util::config(1);
    config.header_timeout = Duration::from_millis(400);
    let server = util::start(config, util::hello());
    let addr = server.local_addr();
    let (order_tx, order) = crossbeam_channel::unbounded();
    let watch = |name: &'static str, stream: std::net::TcpStream| {
        let order_tx = order_tx.clone();
        std::thread::spawn(move || {
            let mut client = Client::from_stream(stream);
            let status = client.reply_to("GET").map(|reply| reply.status).ok();
            let _ = order_tx.send((name, status));
        })
    };
    // `early` connects first and sends one byte at 0.9 of the header
    // timeout; `late` connects half a timeout later and sends nothing.
    let mut early = util::connect(addr);
    // sleep-ok: paces the slow clients; the assertion is on the order of
    // what the server does, not on a time.
    std::thread::sleep(Duration::from_millis(200));
    let late = util::connect(addr);
    // sleep-ok: the same pacing, up to 0.9 of the timeout.
    std::thread::sleep(Duration::from_millis(160));
    early.write_all(b"G").unwrap();
    let watchers = [watch("early", early.try_clone().unwrap()), watch("late", late)];
    // Counted from accept, `early` is due at 1.0 timeout, before `late`
    // (1.5); counted from its first byte it would be due at 1.9.
    let first = order.recv_timeout(util::IO_TIMEOUT).unwrap();
    assert_eq!(first, ("early", Some(408)), "the head's time started at accept");
    let second = order.recv_timeout(util::IO_TIMEOUT).unwrap();
    assert_eq!(second.0, "late");
    for watcher in watchers {
        watcher.join().unwrap();
    }
}
