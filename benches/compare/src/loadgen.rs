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
//! It can also mix a slow request into the load (`SlowMix`): one request in N
//! on each connection goes to another path, chosen by a per-connection counter
//! rather than at random, so every server gets the same sequence; the slow and
//! the fast requests are timed and counted apart, so the fast requests'
//! percentiles are not those of the mix.
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
    /// Send this slow request now and then; `None`: every request is `GET /`.
    pub slow: Option<SlowMix>,
}

/// Every `every`-th request of each connection is `GET path`, the others
/// `GET /`. Connection `c` of `conns` starts its count `c * every / conns`
/// requests in, so the slow requests of different connections are spread
/// over the run instead of being sent all at once, and the proportion stays
/// one in `every`.
#[derive(Clone, Debug)]
pub struct SlowMix {
    pub every: u64,
    pub path: String,
}

pub struct LoadOut {
    /// Every request; with a slow mix, the fast requests (`GET /`) only.
    /// Connect errors are counted here (no request was sent yet).
    pub sample: Sample,
    /// With a slow mix: the slow requests alone.
    pub slow: Option<Sample>,
    /// Responses with a 2xx status per bucket.
    pub ok: Vec<u64>,
    /// Failed requests (connect/read/write error, timeout, non-2xx) per bucket.
    pub failed: Vec<u64>,
}

/// What one thread saw of one kind of request (fast or slow).
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    err_connect: u64,
    err_read: u64,
    err_write: u64,
    err_timeout: u64,
    non2xx: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.err_connect += o.err_connect;
        self.err_read += o.err_read;
        self.err_write += o.err_write;
        self.err_timeout += o.err_timeout;
        self.non2xx += o.non2xx;
    }

    /// The totals and exact percentiles of these requests over `secs`.
    fn sample(mut self, secs: f64) -> Sample {
        let lat = &mut self.latencies_us;
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            f64::from(lat[i])
        };
        // Like wrk, requests counts completed responses (any status) and the
        // rate is over the whole run.
        let requests = lat.len() as u64;
        Sample {
            requests,
            secs,
            rps: requests as f64 / secs,
            avg_us: if lat.is_empty() {
                0.0
            } else {
                lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64
            },
            p50_us: pct(0.50),
            p75_us: pct(0.75),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            max_us: lat.last().map_or(0.0, |&v| f64::from(v)),
            err_connect: self.err_connect,
            err_read: self.err_read,
            err_write: self.err_write,
            err_timeout: self.err_timeout,
            non2xx: self.non2xx,
        }
    }
}

/// One thread's fast and slow requests.
#[derive(Default)]
struct ThreadOut {
    fast: Tally,
    slow: Tally,
}

/// Runs the load and returns when every thread has stopped.
pub fn run(spec: &LoadSpec) -> LoadOut {
    let nbuckets = (spec.duration.as_nanos() / spec.bucket.as_nanos()) as usize + 1;
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..nbuckets).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..nbuckets).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let deadline = started + spec.duration;
    let handles: Vec<_> = (0..spec.conns)
        .map(|c| {
            let (ok, failed) = (ok.clone(), failed.clone());
            let (addr, keep_alive, timeout, bucket) =
                (spec.addr, spec.keep_alive, spec.timeout, spec.bucket);
            let cpus = spec.cpus.clone();
            let mix = spec.slow.as_ref().map(|m| {
                let every = m.every.max(1);
                let offset = c as u64 * every / spec.conns as u64;
                (every, offset, request(&m.path, keep_alive))
            });
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
                client(addr, keep_alive, timeout, deadline, mix, |good, at| {
                    count(if good { &ok } else { &failed }, at)
                })
            })
        })
        .collect();
    let outs: Vec<ThreadOut> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    let secs = started.elapsed().as_secs_f64().min(spec.duration.as_secs_f64());
    let (mut fast, mut slow) = (Tally::default(), Tally::default());
    for o in outs {
        fast.add(o.fast);
        slow.add(o.slow);
    }
    let take = |v: &Arc<Vec<AtomicU64>>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    LoadOut {
        sample: fast.sample(secs),
        slow: spec.slow.is_some().then(|| slow.sample(secs)),
        ok: take(&ok),
        failed: take(&failed),
    }
}

/// Whether request number `sent` (from 0) of a connection whose count starts
/// `offset` in is the slow one of its cycle of `every`.
fn is_slow(sent: u64, every: u64, offset: u64) -> bool {
    (sent + offset) % every == every - 1
}

fn request(path: &str, keep_alive: bool) -> Vec<u8> {
    let close = if keep_alive { "" } else { "Connection: close\r\n" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n").into_bytes()
}

/// One connection's request loop until `deadline`; `on(ok, when)` is told
/// of every completed or failed request. `mix`: the slow request's period,
/// this connection's offset and the request itself (see `SlowMix`).
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    timeout: Duration,
    deadline: Instant,
    mix: Option<(u64, u64, Vec<u8>)>,
    mut on: impl FnMut(bool, Instant),
) -> ThreadOut {
    let fast = request("/", keep_alive);
    // Requests sent on this thread so far, over reconnects.
    let mut sent: u64 = 0;
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
                    out.fast.err_connect += 1;
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
        let (request, tally) = match &mix {
            Some((every, offset, slow)) if is_slow(sent, *every, *offset) => {
                (slow.as_slice(), &mut out.slow)
            }
            _ => (fast.as_slice(), &mut out.fast),
        };
        sent += 1;
        let t0 = Instant::now();
        if stream.write_all(request).is_err() {
            tally.err_write += 1;
            on(false, Instant::now());
            conn = None;
            continue;
        }
        match read_response(stream, &mut buf) {
            Ok((status, server_closes)) => {
                let done = Instant::now();
                let us = done.duration_since(t0).as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
                if (200..300).contains(&status) {
                    on(true, done);
                } else {
                    tally.non2xx += 1;
                    on(false, done);
                }
                if !keep_alive || server_closes {
                    conn = None;
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let at = Instant::now();
                if at < deadline {
                    tally.err_timeout += 1;
                    on(false, at);
                }
                conn = None;
            }
            Err(_) => {
                tally.err_read += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_request_per_cycle_and_connections_staggered() {
        let (every, conns) = (10_000u64, 64u64);
        let firsts: Vec<u64> = (0..conns)
            .map(|c| {
                let offset = c * every / conns;
                let slow: Vec<u64> =
                    (0..3 * every).filter(|&i| is_slow(i, every, offset)).collect();
                assert_eq!(slow.len(), 3, "connection {c}");
                assert!(slow.windows(2).all(|w| w[1] - w[0] == every));
                slow[0]
            })
            .collect();
        // Connection 0 sends its first slow request last, the others spread
        // evenly before it.
        assert_eq!(firsts[0], every - 1);
        assert!(firsts[1..].windows(2).all(|w| w[0] > w[1]));
        assert!(is_slow(0, 1, 0), "every request is slow with a period of 1");
    }

    #[test]
    fn requests_carry_the_path_and_close() {
        assert_eq!(request("/", true), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let close = String::from_utf8(request("/work-inline?ms=20", false)).unwrap();
        assert!(close.starts_with("GET /work-inline?ms=20 HTTP/1.1\r\n"));
        assert!(close.ends_with("Connection: close\r\n\r\n"));
    }
}
