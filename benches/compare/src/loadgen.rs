//! A small closed-loop load generator: `conns` threads, one connection each,
//! one request in flight per connection.
//!
//! wrk reports totals only; this one also counts completed and failed
//! requests in fixed time buckets (to draw throughput over time while loops
//! are being replaced), counts every failure by kind, and can close the
//! connection after each response from the client side (may_minihttp ignores
//! `Connection: close`, so a server-side close cannot be relied on to measure
//! one request per connection on every peer).
//!
//! # Implementation notes
//! Blocking sockets on one thread per connection: simple, and at 32-64
//! connections the context switches cost the generator's core, not the
//! server's, which is the one measured.

use crate::Sample;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub struct LoadSpec {
    pub addr: SocketAddr,
    pub conns: usize,
    pub duration: Duration,
    /// false: send `Connection: close` and close after every response.
    pub keep_alive: bool,
    /// A request with no complete response after this long counts as a
    /// timeout and its connection is dropped (wrk's default is 2 s too).
    pub timeout: Duration,
    pub bucket: Duration,
    /// CPUs the generator threads may run on; `None` leaves them unpinned.
    pub cpus: Option<Vec<usize>>,
}

pub struct LoadOut {
    pub sample: Sample,
    /// Responses with a 2xx status per bucket.
    pub ok: Vec<u64>,
    /// Failed requests (connect/read/write error, timeout, non-2xx) per bucket.
    pub failed: Vec<u64>,
}

#[derive(Default)]
struct ThreadOut {
    latencies_us: Vec<u32>,
    err_connect: u64,
    err_read: u64,
    err_write: u64,
    err_timeout: u64,
    non2xx: u64,
}

/// Runs the load and returns when every thread has stopped.
pub fn run(spec: &LoadSpec) -> LoadOut {
    let nbuckets = (spec.duration.as_nanos() / spec.bucket.as_nanos()) as usize + 1;
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..nbuckets).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..nbuckets).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let deadline = started + spec.duration;
    let handles: Vec<_> = (0..spec.conns)
        .map(|_| {
            let (ok, failed) = (ok.clone(), failed.clone());
            let (addr, keep_alive, timeout, bucket) =
                (spec.addr, spec.keep_alive, spec.timeout, spec.bucket);
            let cpus = spec.cpus.clone();
            thread::spawn(move || {
                if let Some(cpus) = cpus {
                    crate::pin_current_thread(&cpus);
                }
                let slot = |at: Instant| {
                    let i = (at.duration_since(started).as_nanos() / bucket.as_nanos()) as usize;
                    i.min(nbuckets - 1)
                };
                let count = |v: &Vec<AtomicU64>, at: Instant| {
                    // Relaxed: the counters are only read after every thread
                    // is joined, which orders them.
                    v[slot(at)].fetch_add(1, Ordering::Relaxed);
                };
                client(addr, keep_alive, timeout, deadline, |good, at| {
                    count(if good { &ok } else { &failed }, at)
                })
            })
        })
        .collect();
    let outs: Vec<ThreadOut> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    let secs = started.elapsed().as_secs_f64().min(spec.duration.as_secs_f64());
    let mut lat: Vec<u32> = Vec::new();
    let mut s = Sample::default();
    for o in outs {
        lat.extend_from_slice(&o.latencies_us);
        s.err_connect += o.err_connect;
        s.err_read += o.err_read;
        s.err_write += o.err_write;
        s.err_timeout += o.err_timeout;
        s.non2xx += o.non2xx;
    }
    // Like wrk, requests counts completed responses (any status) and the rate
    // is over the whole run.
    s.requests = lat.len() as u64;
    s.secs = secs;
    s.rps = s.requests as f64 / secs;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i])
    };
    s.p50_us = pct(0.50);
    s.p75_us = pct(0.75);
    s.p90_us = pct(0.90);
    s.p99_us = pct(0.99);
    s.max_us = lat.last().map_or(0.0, |&v| f64::from(v));
    s.avg_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64
    };
    let take = |v: &Arc<Vec<AtomicU64>>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    LoadOut { sample: s, ok: take(&ok), failed: take(&failed) }
}

/// One connection's request loop until `deadline`; `on(ok, when)` is told
/// of every completed or failed request.
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    timeout: Duration,
    deadline: Instant,
    mut on: impl FnMut(bool, Instant),
) -> ThreadOut {
    let request: &[u8] = if keep_alive {
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    };
    let mut out = ThreadOut::default();
    let mut buf = vec![0u8; 4096];
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::ZERO;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    backoff = Duration::ZERO;
                    conn.insert(s)
                }
                Err(_) => {
                    out.err_connect += 1;
                    on(false, Instant::now());
                    // A refused connect returns at once: back off (1 ms
                    // doubling to 64 ms, as a real client would) so a server
                    // with no listener does not turn this into a spin that
                    // steals the CPU it needs to come back, nor into
                    // thousands of "errors" per second.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(1), Duration::from_millis(64));
                    thread::sleep(backoff);
                    continue;
                }
            },
        };
        // Wait no longer than the deadline: a request still in flight then is
        // not counted, as in wrk.
        let wait = timeout.min(deadline.saturating_duration_since(now) + Duration::from_millis(5));
        let _ = stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        let t0 = Instant::now();
        if stream.write_all(request).is_err() {
            out.err_write += 1;
            on(false, Instant::now());
            conn = None;
            continue;
        }
        match read_response(stream, &mut buf) {
            Ok((status, server_closes)) => {
                let done = Instant::now();
                let us = done.duration_since(t0).as_micros().min(u128::from(u32::MAX)) as u32;
                out.latencies_us.push(us);
                if (200..300).contains(&status) {
                    on(true, done);
                } else {
                    out.non2xx += 1;
                    on(false, done);
                }
                if !keep_alive || server_closes {
                    conn = None;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let at = Instant::now();
                if at < deadline {
                    out.err_timeout += 1;
                    on(false, at);
                }
                conn = None;
            }
            Err(_) => {
                out.err_read += 1;
                on(false, Instant::now());
                conn = None;
            }
        }
    }
    out
}

/// Reads one response; returns its status and whether the server said it
/// will close. Bodies are framed by Content-Length (every peer sends one).
fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<(u16, bool)> {
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response too large"));
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        let Some(head_end) = find(&buf[..len], b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let header = |name: &str| {
            head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let body = header("content-length:").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        let closes = header("connection:").is_some_and(|v| v == "close");
        if len >= head_end + 4 + body {
            return Ok((status, closes));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
