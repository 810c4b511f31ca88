//! The admin plane's sockets: one thread, one `mio::Poll`, a few
//! connections, every resource bounded.
//!
//! What an admin port must survive (each bound below has its reason):
//! a flood of connections (a cap, and out-of-fd back-off instead of a
//! spin), huge or endless requests (a head limit and no bodies), slow or
//! silent clients (a deadline per request), and requests hidden in a body
//! (a body is refused and the connection closed, never parsed as a request).

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::routes::{route, Access};
use crate::conn::io as socket_io;
use crate::control::Control;
use crate::http::date::DateCache;
use crate::http::request::{parse_head, Framing};
use crate::http::response::{self, Encoding};
use crate::http::{Limits, MAX_HEADERS_CAP};
use crate::sys::{sort_io_error, IoVerdict};
use crate::Response;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Open admin connections at most: a scraper, a health checker and an
/// operator need a handful. Past it a connection is answered 503 and closed.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Accept backlog of the admin socket.
pub(super) const ADMIN_BACKLOG: i32 = 1024;

/// Largest request head: admin requests are a line and a few headers.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Time a client has to send a whole request head, from its connection or
/// its previous response: a slow or silent client is closed, not waited on.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refused client may go on sending before it is cut.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long accepting pauses when the process is out of file descriptors.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_millis(100);

/// Largest response kept for a client that does not read it (a metrics
/// page is a few KiB; the JSON snapshot grows with the loops).
const MAX_OUTPUT_BYTES: usize = 4 << 20;

struct AdminConn {
    stream: TcpStream,
    peer_is_local: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// Close once the output is written.
    closing: bool,
    /// The answer is out and our side shut: what the client still sends
    /// is read and dropped until it closes (closing on unread input would
    /// reset the connection, which can destroy the answer in flight).
    lingering: bool,
}

pub(super) struct Plane {
    poll: Poll,
    listener: TcpListener,
    listening: bool,
    /// Left the socket to the process this one handed over to.
    left: bool,
    paused_until: Option<Instant>,
    conns: Slab<AdminConn>,
    waker: Arc<Waker>,
    stopping: Arc<AtomicBool>,
    token: Option<String>,
    control: Control,
    date: DateCache,
}

impl Plane {
    pub(super) fn new(
        std_listener: std::net::TcpListener,
        token: Option<String>,
        control: Control,
    ) -> io::Result<Plane> {
        let poll = Poll::new()?;
        std_listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(std_listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Plane {
            poll,
            listener,
            listening: true,
            left: false,
            paused_until: None,
            conns: Slab::new(),
            waker,
            stopping: Arc::new(AtomicBool::new(false)),
            token,
            control,
            date: DateCache::new(),
        })
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub(super) fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(128);
        while !self.stopping.load(Relaxed) {
            if let Err(err) = self.poll.poll(&mut events, Some(self.timeout())) {
                if err.kind() != io::ErrorKind::Interrupted {
                    log::error!("admin plane poll failed, admin plane stops: {err}");
                    return;
                }
            }
            let now = Instant::now();
            self.date.refresh_at(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(key) => self.on_event(key, now),
                }
            }
            self.expire(now);
            if self.listening && self.control.handed_over_to().is_some() {
                self.leave_listener();
            }
            if self.paused_until.is_some_and(|until| now >= until) && !self.left {
                self.resume_accepting();
            }
        }
    }

    /// Wakes up for the nearest deadline (at most every second).
    fn timeout(&self) -> Duration {
        let now = Instant::now();
        let nearest = self.conns.iter().map(|(_, c)| c.deadline).chain(self.paused_until).min();
        nearest.map_or(Duration::from_secs(1), |at| at.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        while self.listening {
            match self.listener.accept() {
                Ok((stream, peer)) => self.add(stream, peer, now),
                Err(err) => match sort_io_error(&err) {
                    IoVerdict::Wait => return,
                    IoVerdict::Retry | IoVerdict::PeerGone => {}
                    IoVerdict::OutOfFds => {
                        // The listener stays readable: accepting again at
                        // once would spin. Step aside for a moment.
                        log::warn!(
                            "admin plane out of file descriptors, pausing accept for {OUT_OF_FDS_PAUSE:?}: {err}"
                        );
                        let _ = self.poll.registry().deregister(&mut self.listener);
                        self.listening = false;
                        self.paused_until = Some(now + OUT_OF_FDS_PAUSE);
                    }
                    IoVerdict::Fatal => {
                        log::error!("admin plane accept failed: {err}");
                        return;
                    }
                },
            }
        }
    }

    /// After a handover: the new process's admin plane accepts from the
    /// same socket; this one answers the connections it has and accepts no
    /// more (the handover wakes it).
    fn leave_listener(&mut self) {
        let _ = self.poll.registry().deregister(&mut self.listener);
        self.listening = false;
        self.left = true;
        log::info!("admin plane: the new process takes the admin socket; accepting no more");
    }

    fn resume_accepting(&mut self) {
        self.paused_until = None;
        match self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE) {
            Ok(()) => self.listening = true,
            Err(err) => log::error!("admin plane could not resume accepting: {err}"),
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.conns.len() >= MAX_CONNECTIONS {
            let mut out = Vec::new();
            response::encode_reject(503, "too many admin connections", &self.date, &mut out);
            let _ = stream.write(&out);
            return;
        }
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("admin plane register failed: {err}");
            return;
        }
        entry.insert(AdminConn {
            stream,
            peer_is_local: is_loopback(peer),
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            deadline: now + REQUEST_TIMEOUT,
            closing: false,
            lingering: false,
        });
    }

    fn on_event(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut keep =
            read_requests(conn, now, &self.date, &self.token, &self.control) && flush(conn);
        if keep && conn.closing && conn.output.is_empty() && !conn.lingering {
            if conn.input.is_empty() {
                keep = false;
            } else {
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                conn.lingering = true;
                conn.input = Vec::new();
                conn.deadline = now + LINGER_TIMEOUT;
                keep = discard_input(conn);
            }
        }
        if !keep {
            self.close(key);
        }
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.deadline <= now).map(|(key, _)| key).collect();
        for key in expired {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

/// A loopback peer, IPv4-mapped IPv6 addresses included (an admin plane
/// bound on `[::]` sees IPv4 clients that way).
pub(super) fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Reads what the socket has and answers every complete request; false
/// when the connection must close now (EOF, error, or over a limit with
/// nothing left to say).
fn read_requests(
    conn: &mut AdminConn,
    now: Instant,
    date: &DateCache,
    token: &Option<String>,
    control: &Control,
) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if conn.lingering {
            return discard_input(conn);
        }
        if conn.closing {
            // Nothing after a closing response is read: not a request, and
            // not a body to be taken for one.
            return true;
        }
        match socket_io::read(&conn.stream, &mut chunk) {
            Ok(None) => return true,
            Ok(Some(0)) | Err(_) => return false,
            Ok(Some(n)) => conn.input.extend_from_slice(&chunk[..n]),
        }
        answer_complete(conn, now, date, token, control);
        if conn.output.len() > MAX_OUTPUT_BYTES {
            // A client that pipelines and never reads.
            return false;
        }
    }
}

/// Answers each complete request at the start of the input.
fn answer_complete(
    conn: &mut AdminConn,
    now: Instant,
    date: &DateCache,
    token: &Option<String>,
    control: &Control,
) {
    let limits = Limits { max_head_bytes: MAX_HEAD_BYTES, max_headers: 32, max_body_bytes: 0 };
    while !conn.closing && !conn.input.is_empty() {
        let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
        let head = match parse_head(&conn.input, &mut headers[..limits.max_headers], &limits) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(reject) => {
                response::encode_reject(reject.status, reject.why, date, &mut conn.output);
                conn.closing = true;
                return;
            }
        };
        if head.framing != Framing::Empty {
            // No admin route takes a body; one is refused before it is read,
            // so nothing in it can pass for a request.
            response::encode_reject(413, "admin requests take no body", date, &mut conn.output);
            conn.closing = true;
            return;
        }
        let authorization = head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(h.value).ok());
        let access =
            Access { peer_is_local: conn.peer_is_local, token: token.as_deref(), authorization };
        // HEAD is GET without the body.
        let method = if head.method == "HEAD" { "GET" } else { head.method };
        let answer = route(method, head.path, access, control);
        let mut res = Response::new();
        res.status(answer.status).header("Content-Type", answer.content_type).body(answer.body);
        let encoding = Encoding {
            head_request: head.method == "HEAD",
            // Once another process serves the admin socket, each client
            // is sent there for its next request (this process exits).
            keep_alive: head.keep_alive && control.handed_over_to().is_none(),
            http10: head.version == crate::Version::Http10,
        };
        let keep_alive = response::encode(&res, encoding, date, &mut conn.output);
        let used = head.len;
        conn.input.drain(..used);
        conn.deadline = now + REQUEST_TIMEOUT;
        conn.closing = !keep_alive;
    }
}

/// Reads and drops what a lingering client sends; false once it has
/// closed (or failed), when the connection can go.
fn discard_input(conn: &mut AdminConn) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match socket_io::read(&conn.stream, &mut chunk) {
            Ok(None) => return true,
            Ok(Some(0)) | Err(_) => return false,
            Ok(Some(_)) => {}
        }
    }
}

/// Writes what the socket takes; false on a write error.
fn flush(conn: &mut AdminConn) -> bool {
    match socket_io::write_nonblocking(&conn.stream, &conn.output[conn.written..]) {
        Ok(n) => conn.written += n,
        Err(_) => return false,
    }
    if conn.written == conn.output.len() {
        conn.output.clear();
        conn.written = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_loopback_is_loopback() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("[::ffff:10.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1:1".parse().unwrap()));
    }
}
