//! An access log: one line per finished exchange, in Common or Combined Log
//! Format or as JSON, written by a thread of its own so that a loop never
//! waits for a full pipe or a slow disk. The loop hands each record over a
//! bounded queue; when the queue is full the record is dropped and counted
//! (`vigil_access_log_dropped_total` on `/metrics`).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::middleware::REQUEST_ID;
use super::{Middleware, Next};
use crate::{Request, Response, Version};

/// Records queued for the writer before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 8192;

/// How each line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `host - - [time] "request line" status bytes`.
    Common,
    /// Common, then `"referer" "user agent"`.
    Combined,
    /// One JSON object per line, with the route, request id and duration.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "common" => Ok(Format::Common),
            "combined" => Ok(Format::Combined),
            "json" => Ok(Format::Json),
            _ => Err(format!("{text:?} is not a log format: use common, combined or json")),
        }
    }
}

/// One finished exchange. Built on the loop with as few allocations as
/// the format allows (the target, and the fields only the longer formats
/// print); formatted on the writer thread.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(skip)]
    received: SystemTime,
    /// RFC 3339, for the JSON line.
    time: String,
    #[serde(serialize_with = "ip_only")]
    remote: Option<SocketAddr>,
    method: std::borrow::Cow<'static, str>,
    target: String,
    version: &'static str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    /// The whole response reached the socket.
    completed: bool,
    route: Option<String>,
    request_id: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
}

fn ip_only<S: serde::Serializer>(remote: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match remote {
        Some(addr) => s.collect_str(&addr.ip()),
        None => s.serialize_none(),
    }
}

/// The method as a static string when it is a common one (no allocation).
fn method_name(method: &str) -> std::borrow::Cow<'static, str> {
    const COMMON: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    match COMMON.iter().find(|m| **m == method) {
        Some(m) => std::borrow::Cow::Borrowed(m),
        None => std::borrow::Cow::Owned(method.to_string()),
    }
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The access-log middleware. Add it first, so that its line has the
/// status and bytes of the response really sent, whatever later middleware
/// or offloaded work made of it.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    queue: Option<Sender<Record>>,
    counters: Arc<Counters>,
    /// Disconnected when the writer thread ends.
    writer_done: Receiver<()>,
}

impl AccessLog {
    /// Appends to the file at `path` (created if missing).
    pub fn to_file(path: &std::path::Path, format: Format) -> io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        AccessLog::to_writer(file, format, DEFAULT_CAPACITY)
    }

    /// Writes to standard output.
    pub fn to_stdout(format: Format) -> io::Result<AccessLog> {
        AccessLog::to_writer(io::stdout(), format, DEFAULT_CAPACITY)
    }

    /// Writes to `sink` on a writer thread, with at most `capacity`
    /// records waiting for it.
    pub fn to_writer(
        sink: impl Write + Send + 'static,
        format: Format,
        capacity: usize,
    ) -> io::Result<AccessLog> {
        let (queue, records) = crossbeam_channel::bounded(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writing = counters.clone();
        let (done, writer_done) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new().name("vigil-access-log".into()).spawn(move || {
            let _done = done;
            write_records(records, sink, format, &writing)
        })?;
        Ok(AccessLog { format, queue: Some(queue), counters, writer_done })
    }

    /// Records dropped because the writer lagged.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Relaxed)
    }
}

/// How long dropping the log waits for the writer to write what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

impl Drop for AccessLog {
    /// Lets the writer finish what is queued, waiting for it a bounded
    /// time (a sink that blocks forever must not hold up the exit).
    fn drop(&mut self) {
        self.queue.take();
        let _ = self.writer_done.recv_timeout(DRAIN_TIMEOUT);
    }
}

impl Middleware for AccessLog {
    type State = ();

    fn state(&self, _slot: usize) {}

    fn call(&self, _state: &mut (), req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        let received = SystemTime::now();
        let text = |name: &str| req.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let with_agent = self.format != Format::Common;
        let json = self.format == Format::Json;
        let mut record = Record {
            received,
            time: String::new(),
            remote: req.peer_addr(),
            method: method_name(req.method()),
            target: match req.query() {
                Some(query) => format!("{}?{query}", req.path()),
                None => req.path().to_string(),
            },
            version: match req.version() {
                Version::Http10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: 0,
            bytes: 0,
            duration_ms: 0.0,
            completed: false,
            route: if json { req.route().map(str::to_string) } else { None },
            request_id: None,
            referer: if with_agent { text("Referer") } else { None },
            user_agent: if with_agent { text("User-Agent") } else { None },
        };
        // Registered before the rest of the chain: a handler that panics
        // still gets its line (with the 500 that answers it).
        if let Some(queue) = self.queue.clone() {
            let counters = self.counters.clone();
            res.on_finish(move |finished| {
                record.status = finished.status;
                record.bytes = finished.body_bytes;
                record.duration_ms = finished.duration.as_secs_f64() * 1e3;
                record.completed = finished.completed;
                if json {
                    record.request_id = finished.header(REQUEST_ID).map(str::to_string);
                }
                if queue.try_send(record).is_err() {
                    // Full (the writer lags) or gone: the line is lost.
                    counters.dropped.fetch_add(1, Relaxed);
                }
            });
        }
        next.run(req, res);
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.counters;
        let _ = write!(
            out,
            "# HELP vigil_access_log_lines_total Access log lines written.\n# TYPE vigil_access_log_lines_total counter\nvigil_access_log_lines_total {}\n\
             # HELP vigil_access_log_dropped_total Access log lines dropped because the writer lagged (its queue was full).\n# TYPE vigil_access_log_dropped_total counter\nvigil_access_log_dropped_total {}\n\
             # HELP vigil_access_log_write_errors_total Access log lines the sink refused.\n# TYPE vigil_access_log_write_errors_total counter\nvigil_access_log_write_errors_total {}\n",
            c.written.load(Relaxed),
            c.dropped.load(Relaxed),
            c.failed.load(Relaxed),
        );
    }
}

/// How long the writer sleeps when its queue is empty: from the shortest,
/// after a record, doubling while idle up to the longest.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(50);

/// The writer thread: formats and writes each record, flushing whenever
/// the queue is empty. It polls the queue rather than wait on it: a
/// receiver parked in the channel would make every record's send a futex
/// wake-up on the loop's thread (a system call per request), while a
/// polling writer costs the loop nothing but the queue's atomics. Lines
/// appear within POLL_MIN of a burst, POLL_MAX after a quiet spell.
fn write_records(records: Receiver<Record>, sink: impl Write, format: Format, counters: &Counters) {
    let mut sink = io::BufWriter::with_capacity(64 * 1024, sink);
    let mut line = String::with_capacity(512);
    let mut warned = false;
    let mut warn = |err: io::Error| {
        if !warned {
            log::error!("access log: cannot write: {err}; counting lines lost");
            warned = true;
        }
    };
    let mut poll = POLL_MIN;
    let mut clock = ClfClock::default();
    loop {
        match records.try_recv() {
            Ok(mut record) => {
                poll = POLL_MIN;
                line.clear();
                format_record(&mut record, format, &mut clock, &mut line);
                match sink.write_all(line.as_bytes()) {
                    Ok(()) => counters.written.fetch_add(1, Relaxed),
                    Err(err) => {
                        warn(err);
                        counters.failed.fetch_add(1, Relaxed)
                    }
                };
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {
                if let Err(err) = sink.flush() {
                    warn(err);
                }
                std::thread::sleep(poll); // sleep-ok: polling, see above
                poll = (poll * 2).min(POLL_MAX);
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
        }
    }
    let _ = sink.flush();
}

/// The CLF time of the last second formatted: most lines share it.
#[derive(Default)]
struct ClfClock {
    second: u64,
    text: String,
}

impl ClfClock {
    fn at(&mut self, second: u64) -> &str {
        if self.text.is_empty() || self.second != second {
            self.second = second;
            self.text = clf_time(second);
        }
        &self.text
    }
}

fn format_record(record: &mut Record, format: Format, clock: &mut ClfClock, line: &mut String) {
    use std::fmt::Write as _;
    let seconds = record.received.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    match format {
        Format::Common | Format::Combined => {
            match record.remote {
                Some(addr) => {
                    let _ = write!(line, "{}", addr.ip());
                }
                None => line.push('-'),
            }
            line.push_str(" - - [");
            line.push_str(clock.at(seconds.as_secs()));
            line.push_str("] \"");
            escape_into(line, &record.method);
            line.push(' ');
            escape_into(line, &record.target);
            line.push(' ');
            line.push_str(record.version);
            let _ = write!(line, "\" {} ", record.status);
            if record.bytes == 0 {
                line.push('-');
            } else {
                let _ = write!(line, "{}", record.bytes);
            }
            if format == Format::Combined {
                for field in [&record.referer, &record.user_agent] {
                    line.push_str(" \"");
                    match field {
                        Some(text) => escape_into(line, text),
                        None => line.push('-'),
                    }
                    line.push('"');
                }
            }
            line.push('\n');
        }
        Format::Json => {
            record.time = rfc3339(seconds);
            if let Ok(json) = serde_json::to_string(record) {
                line.push_str(&json);
                line.push('\n');
            }
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`, in UTC.
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// `2000-10-10T13:55:36.123Z`.
fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (year, month, day) = crate::http::date::civil_from_days(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        time / 3600,
        time / 60 % 60,
        time % 60,
        since_epoch.subsec_millis()
    )
}

/// Appends a quoted log field as nginx writes it: `"`, `\\` and bytes
/// outside printable ASCII as `\xHH`, so a line cannot be forged or split.
fn escape_into(line: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff => {
                line.push_str("\\x");
                line.push(HEX[usize::from(byte >> 4)] as char);
                line.push(HEX[usize::from(byte & 0xf)] as char);
            }
            _ => line.push(byte as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            received: SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_250),
            time: String::new(),
            remote: Some("127.0.0.1:5555".parse().unwrap()),
            method: "GET".into(),
            target: "/a?b=c".into(),
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            duration_ms: 1.5,
            completed: true,
            route: Some("/a".into()),
            request_id: Some("r1".into()),
            referer: Some("http://x/\"y".into()),
            user_agent: Some("curl/8".into()),
        }
    }

    fn line(format: Format) -> String {
        let mut line = String::new();
        format_record(&mut record(), format, &mut ClfClock::default(), &mut line);
        line
    }

    #[test]
    fn lines_in_each_format() {
        assert_eq!(
            line(Format::Common),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?b=c HTTP/1.1\" 200 12\n"
        );
        assert_eq!(
            line(Format::Combined),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?b=c HTTP/1.1\" 200 12 \"http://x/\\x22y\" \"curl/8\"\n"
        );
        let json: serde_json::Value = serde_json::from_str(&line(Format::Json)).unwrap();
        assert_eq!(json["time"], "2000-10-10T13:55:36.250Z");
        assert_eq!(json["status"], 200);
        assert_eq!(json["route"], "/a");
        assert_eq!(json["request_id"], "r1");
        assert_eq!(json["remote"], "127.0.0.1", "the address without its port");
    }

    #[test]
    fn no_body_is_a_dash_and_control_bytes_are_escaped() {
        let mut r = record();
        r.bytes = 0;
        r.target = "/a\nb".into();
        let mut line = String::new();
        format_record(&mut r, Format::Common, &mut ClfClock::default(), &mut line);
        assert!(line.ends_with("\"GET /a\\x0Ab HTTP/1.1\" 200 -\n"), "{line}");
    }
}
