//! The test server and raw-socket clients.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vigil::{Config, ServerHandle, Service, ServiceFactory};

/// Long enough for a loaded CI machine, short enough to fail a hung test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration for tests: loopback, port 0, no pinning (tests run in
/// parallel and must not fight over cores).
pub fn config(loops: usize) -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), loops, pin: false, ..Config::default() }
}

pub fn start<F: ServiceFactory>(config: Config, factory: F) -> ServerHandle {
    let _ = env_logger::builder().is_test(true).try_init();
    vigil::Server::new(factory).config(config).start().expect("server starts")
}

/// A service answering `Hello World\n` to everything.
pub fn hello() -> impl Fn(usize) -> Hello + Send + Sync + 'static {
    |_| Hello
}

pub struct Hello;

impl Service for Hello {
    fn call(&mut self, _req: &vigil::Request<'_>, res: &mut vigil::Response) {
        res.header("Content-Type", "text/plain").body_static(b"Hello World\n");
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads responses from a stream, keeping bytes between calls.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { stream: connect(addr), buf: Vec::new() }
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.stream.write_all(bytes).expect("write request");
        self
    }

    /// Reads one response to a request of method `method` (HEAD has no body).
    pub fn reply_to(&mut self, method: &str) -> io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf, method == "HEAD")? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a full reply",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the bytes received so far (and kept) contain `needle`.
    pub fn read_until(&mut self, needle: &[u8]) -> io::Result<&[u8]> {
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(&self.buf)
    }

    /// Everything until the server closes (kept bytes included).
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut all = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut all)?;
        Ok(all)
    }

    pub fn reply(&mut self) -> Reply {
        self.reply_to("GET").expect("a reply")
    }

    /// True when the server closes the connection (EOF or reset) with no
    /// more bytes sent.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => {
                err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::TimedOut
            }
        }
    }
}

/// Parses one response at the start of `buf`: `None` if incomplete.
fn parse_reply(buf: &[u8], head_request: bool) -> io::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let body_start = end + 4;
    let no_body = head_request || status == 100 || status == 204 || status == 304;
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked && !no_body {
        let Some((body, used)) = parse_chunked(&buf[body_start..])? else { return Ok(None) };
        return Ok(Some((Reply { status, headers, body }, body_start + used)));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().expect("numeric content-length"))
        .unwrap_or(0);
    let length =
        if head_request || status == 100 || status == 204 || status == 304 { 0 } else { length };
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = buf[body_start..body_start + length].to_vec();
    Ok(Some((Reply { status, headers, body }, body_start + length)))
}

/// A chunked body at the start of `buf` (no trailers): its bytes and how
/// much of `buf` it took, `None` if incomplete.
pub fn parse_chunked(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let (mut body, mut pos) = (Vec::new(), 0);
    loop {
        let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| invalid("size"))?;
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
        pos += line_end + 2;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
        if size == 0 {
            return Ok(Some((body, pos)));
        }
    }
}

/// Where the body starts in raw response bytes: just past the head's
/// blank line.
pub fn body_start(raw: &[u8]) -> usize {
    raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4
}

/// One request on a fresh connection; the reply.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Reply> {
    let mut client = Client { stream: TcpStream::connect(addr)?, buf: Vec::new() };
    client.stream.set_read_timeout(Some(IO_TIMEOUT))?;
    client.stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())?;
    client.reply_to("GET")
}

/// Waits until `condition` holds, checking it whenever the server may have
/// changed (every few milliseconds), up to `limit`. For state the server
/// only exposes by polling (its snapshot); never a fixed sleep.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // sleep-ok: a poll interval, not a wait for an outcome; the state
        // polled (snapshots, exit status) announces no event to wait on.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Holds whoever waits on it (a handler, offloaded work, a log sink) until
/// the test opens it; `OpenOnDrop` opens it even when an assertion fails,
/// so that nothing outlives its test.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>, Arc<AtomicU64>);

impl Gate {
    /// Waiters that have reached the gate.
    pub fn reached(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    pub fn wait(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
    }

    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

pub struct OpenOnDrop(pub Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}
