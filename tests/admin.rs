//! The admin plane and signals.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vigil::{Request, Response};

use crate::cli::Vigil;
use crate::util::{self, Client};

/// One request to the admin plane; (status, body).
fn admin(addr: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String) {
    let mut stream = util::connect(addr);
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n{extra}\r\n")
        .unwrap();
    let mut client = Client::from_stream(stream);
    let reply = client.reply();
    (reply.status, reply.text())
}

fn with_admin(mut config: vigil::Config) -> vigil::Config {
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[test]
fn metrics_parse_and_count_requests() {
    let server = util::start(with_admin(util::config(2)), util::hello());
    for _ in 0..5 {
        assert_eq!(util::get(server.local_addr(), "/").unwrap().status, 200);
    }
    // Loops publish their counts once per wake-up, just after answering.
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().totals.requests == 5));
    let admin_addr = server.admin_addr().unwrap();
    let (status, body) = admin(admin_addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let requests: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "vigil_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("counter expected, got {other:?}"),
        })
        .sum();
    assert_eq!(requests, 5.0);
    assert_eq!(
        scrape.samples.iter().filter(|s| s.metric == "vigil_requests_total").count(),
        2,
        "one series per loop"
    );
    for family in [
        "vigil_replacements_total",
        "vigil_loop_state",
        "vigil_abandoned_threads",
        "vigil_arena_allocated_bytes",
    ] {
        assert!(scrape.docs.contains_key(family), "HELP for {family}");
    }
}

#[test]
fn loops_json_health_and_unknown_routes() {
    let server = util::start(with_admin(util::config(2)), util::hello());
    let addr = server.admin_addr().unwrap();
    let (status, body) = admin(addr, "GET", "/loops", "");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["loops"].as_array().unwrap().len(), 2);
    assert_eq!(json["loops"][1]["slot"], 1);
    assert_eq!(json["loops"][0]["state"], "serving");
    assert_eq!(admin(addr, "GET", "/healthz", "").0, 200);
    assert_eq!(admin(addr, "GET", "/readyz", "").0, 200);
    assert_eq!(admin(addr, "GET", "/nope", "").0, 404);
    assert_eq!(admin(addr, "POST", "/metrics", "").0, 405);
    assert_eq!(admin(addr, "GET", "/loops/0/recycle", "").0, 405);
    assert_eq!(admin(addr, "POST", "/loops/9/recycle", "").0, 404);
    assert_eq!(admin(addr, "POST", "/loops/1/recycle", "").0, 202);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[1].generation == 1)
    );
}

#[test]
fn the_admin_token_is_required_when_set() {
    let mut config = with_admin(util::config(1));
    config.admin_token = Some("s3cret-token-0123456789".into());
    let server = util::start(config, util::hello());
    let addr = server.admin_addr().unwrap();
    assert_eq!(admin(addr, "POST", "/loops/0/recycle", "").0, 403);
    assert_eq!(
        admin(addr, "POST", "/loops/0/recycle", "Authorization: Bearer wrong-token-0123456789\r\n")
            .0,
        403
    );
    assert_eq!(
        admin(
            addr,
            "POST",
            "/loops/0/recycle",
            "Authorization: Bearer s3cret-token-0123456789\r\n"
        )
        .0,
        202
    );
    assert_eq!(
        admin(
            addr,
            "POST",
            "/loops/0/recycle",
            "Authorization: bEaReR s3cret-token-0123456789\r\n"
        )
        .0,
        202,
        "the scheme is case-insensitive (RFC 9110 11.1)"
    );
    assert_eq!(admin(addr, "GET", "/healthz", "").0, 200, "reads need no token");
}

#[test]
fn an_admin_plane_on_all_addresses_treats_mapped_ipv4_loopback_as_loopback() {
    let mut config = util::config(1);
    // `[::]` takes IPv4 clients too, as ::ffff:127.0.0.1.
    config.admin = Some("[::]:0".parse().unwrap());
    let server = util::start(config, util::hello());
    let port = server.admin_addr().unwrap().port();
    let ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(admin(ipv4, "POST", "/loops/0/recycle", "").0, 202, "loopback may change state");
}

/// Reads until the admin plane closes the connection; what it sent.
fn read_to_close(stream: &mut std::net::TcpStream) -> String {
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        // A reset after the answer still ends the connection.
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the admin plane did not close the connection: {err}"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn a_request_hidden_in_an_admin_body_is_refused_not_run() {
    let server = util::start(with_admin(util::config(2)), util::hello());
    let addr = server.admin_addr().unwrap();
    let hidden = "POST /loops/recycle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    let mut stream = util::connect(addr);
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    )
    .unwrap();
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "nothing after the refusal: {answer:?}");
    // Commands reach the supervisor in order: once this recycle of slot 0
    // is done, a smuggled recycle of every loop would be done too.
    assert_eq!(admin(addr, "POST", "/loops/0/recycle", "").0, 202);
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().loops[0].generation == 1)
    );
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().totals.recycled == 1));
    assert_eq!(server.snapshot().loops[1].generation, 0, "slot 1 was never recycled");
}

#[test]
fn an_endless_admin_head_is_cut_at_the_limit() {
    let server = util::start(with_admin(util::config(1)), util::hello());
    let mut stream = util::connect(server.admin_addr().unwrap());
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n").unwrap();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    // 64 KiB, eight times the limit, and never a blank line.
    for _ in 0..64 {
        if stream.write_all(filler.as_bytes()).is_err() {
            break; // closed on us already
        }
    }
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

#[test]
fn admin_connections_are_capped_and_the_plane_serves_on() {
    let server = util::start(with_admin(util::config(1)), util::hello());
    let addr = server.admin_addr().unwrap();
    // Each proves it is registered by being answered once, then stays idle.
    let mut held: Vec<Client> = (0..64)
        .map(|_| {
            let mut client = Client::new(addr);
            client.send(b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(client.reply().status, 200);
            client
        })
        .collect();
    let mut over = util::connect(addr);
    let answer = read_to_close(&mut over);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    held.truncate(0);
    assert!(
        util::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(addr)
            .ok()
            .map(|stream| {
                let mut client = Client::from_stream(stream);
                client.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
                client.reply_to("GET").is_ok_and(|reply| reply.status == 200)
            })
            .unwrap_or(false)),
        "served again once the others left"
    );
}

#[test]
fn a_silent_admin_client_is_closed() {
    let server = util::start(with_admin(util::config(1)), util::hello());
    let mut stream = util::connect(server.admin_addr().unwrap());
    stream.write_all(b"GET /metr").unwrap();
    // Closed at the request deadline (5 s), well before the client's own
    // read timeout: no bytes, no hang.
    assert_eq!(read_to_close(&mut stream), "");
}

#[test]
fn the_admin_plane_answers_while_every_loop_is_stuck_and_health_flips() {
    let release = Arc::new(AtomicBool::new(false));
    let mut config = with_admin(util::config(1));
    config.stall_timeout = Duration::from_millis(100);
    config.check_interval = Some(Duration::from_millis(10));
    config.max_abandoned = 1;
    config.shutdown_timeout = Duration::from_secs(30);
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let server = util::start(config, {
        let release = release.clone();
        move |_| {
            let (release, entered) = (release.clone(), entered_tx.clone());
            move |_req: &Request<'_>, _res: &mut Response| {
                let _ = entered.send(());
                while !release.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        }
    });
    let addr = server.admin_addr().unwrap();
    assert_eq!(admin(addr, "GET", "/healthz", "").0, 200);
    let mut stuck = Client::new(server.local_addr());
    stuck.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    entered.recv_timeout(util::IO_TIMEOUT).unwrap();
    // The only loop is stuck: the admin plane still answers, and once the
    // loop is abandoned the budget (1) is used up, so health is 503.
    assert!(
        util::eventually(Duration::from_secs(10), || admin(addr, "GET", "/healthz", "").0 == 503)
    );
    release.store(true, Ordering::Relaxed);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut vigil = Vigil::spawn(&["--loops", "2", "--demo", "--shutdown-timeout", "5s"]);
    let (addr, child) = (vigil.addr, &mut vigil.child);
    let mut slow = Client::new(addr);
    // Sent before the signal: whether its loop has read it yet or not, it
    // must be answered, and with `Connection: close`.
    slow.send(b"GET /block?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let reply = slow.reply();
    assert_eq!(reply.status, 200, "the in-flight request completes");
    assert!(reply.closes(), "and its response closes the connection: {reply:?}");
    let exited = util::eventually(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    assert!(exited, "vigil exits after draining");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = vigil.rest_of_log();
    assert!(log.iter().any(|l| l.contains("requests=")), "a shutdown summary is logged");
    let mut refused = std::net::TcpStream::connect(addr);
    if let Ok(stream) = refused.as_mut() {
        let mut byte = [0u8; 1];
        assert!(matches!(stream.read(&mut byte), Ok(0) | Err(_)), "nobody serves after exit");
    }
}

#[test]
fn sighup_recycles_every_loop_and_a_second_sigterm_stops_at_once() {
    let mut vigil = Vigil::spawn(&[
        "--loops",
        "2",
        "--demo",
        "--admin",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "30s",
    ]);
    let (addr, admin_addr) = (vigil.addr, vigil.admin.expect("the admin plane's address"));
    let child = &mut vigil.child;
    let generations = || -> Option<Vec<u64>> {
        let (status, body) = admin(admin_addr, "GET", "/loops", "");
        let json: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        json["loops"].as_array()?.iter().map(|l| l["generation"].as_u64()).collect()
    };
    assert!(util::eventually(Duration::from_secs(10), || generations().is_some()));
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    assert!(
        util::eventually(Duration::from_secs(10), || generations() == Some(vec![1, 1])),
        "every loop recycled once"
    );
    assert_eq!(util::get(addr, "/").unwrap().status, 200, "served after the rolling restart");

    // A request that would hold a loop for 20 s: the first SIGTERM waits
    // for it (shutdown timeout 30 s), the second one does not.
    let mut slow = Client::new(addr);
    slow.send(b"GET /block?ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(util::eventually(Duration::from_secs(10), || admin(admin_addr, "GET", "/readyz", "")
        .0
        == 503));
    assert!(child.try_wait().unwrap().is_none(), "still draining the slow request");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let exited = util::eventually(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    assert!(exited, "the second SIGTERM stops at once, long before the 20 s request ends");
    let log = vigil.rest_of_log();
    assert!(log.iter().any(|l| l.contains("stopping now")), "{}", log.join("\n"));
}

#[test]
fn a_flood_of_recycle_requests_recycles_each_loop_about_once_a_second() {
    let server = util::start(with_admin(util::config(1)), util::hello());
    let addr = server.admin_addr().unwrap();
    let started = std::time::Instant::now();
    let mut client = Client::new(addr);
    for _ in 0..300 {
        client.send(b"POST /loops/recycle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(client.reply().status, 202);
    }
    assert!(
        util::eventually(Duration::from_secs(10), || server.snapshot().totals.recycled >= 1),
        "the first request recycles"
    );
    // One recycle per second at most (the supervisor takes the queued
    // requests within milliseconds of the last): without the merge it
    // would be 300.
    let seconds = started.elapsed().as_secs();
    let recycled = server.snapshot().totals.recycled;
    assert!(recycled <= seconds + 2, "{recycled} recycles in {seconds} s of requests");
    assert_eq!(util::get(server.local_addr(), "/").unwrap().status, 200);
}
