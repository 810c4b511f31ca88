//! Starting a server under test, waiting until it answers, watching its log,
//! and stopping its whole process group.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How to start one server.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Row label, e.g. "vigil" or "node-cluster".
    pub name: String,
    /// Where it listens (also named in its argv or config).
    pub addr: SocketAddr,
    /// Program and arguments, `taskset` prefix included when pinned.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Log lines containing this are recorded with their arrival time
    /// (loop replacements, worker kills).
    pub mark: Option<&'static str>,
}

/// A log line that matched `Spec::mark`.
#[derive(Clone, Debug)]
pub struct Mark {
    /// When the driver read the line: precise to the millisecond, unlike
    /// env_logger's default timestamps, which stop at whole seconds.
    pub at: Instant,
    pub line: String,
}

pub struct Running {
    pub pid: u32,
    pub addr: SocketAddr,
    child: Child,
    marks: Arc<Mutex<Vec<Mark>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// A port that was free a moment ago. The server binds it right after; on a
/// loopback-only bench machine nothing else races for it.
pub fn free_port() -> crate::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Running {
    /// Starts `spec` and returns once the
    /// server has answered one HTTP request.
    pub fn start(spec: &Spec, log: &Path) -> crate::Result<Running> {
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so stopping it reaches node's and
            // nginx's workers too.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", spec.argv[0]))?;
        let file = Arc::new(Mutex::new(File::create(log)?));
        let marks = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let (file, marks, pattern) = (file.clone(), marks.clone(), spec.mark);
            readers.push(thread::spawn(move || scan(pipe, &file, &marks, pattern)));
        }
        let mut running = Running { pid: child.id(), addr: spec.addr, child, marks, readers };
        running.wait_ready(Duration::from_secs(15)).map_err(|e| {
            let tail = tail(log);
            format!("{} did not become ready: {e}\n{tail}", spec.name)
        })?;
        Ok(running)
    }

    /// Polls with real requests until one gets a 200; fails early if the
    /// process exits.
    fn wait_ready(&mut self, limit: Duration) -> crate::Result<()> {
        let deadline = Instant::now() + limit;
        let mut backoff = Duration::from_millis(2);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("exited with {status}").into());
            }
            match probe(self.addr) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Lines matched so far, as seconds since `t0` (negative: before it).
    pub fn marks_since(&self, t0: Instant) -> Vec<(f64, String)> {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks
            .iter()
            .map(|m| {
                let secs = if m.at >= t0 {
                    m.at.duration_since(t0).as_secs_f64()
                } else {
                    -t0.duration_since(m.at).as_secs_f64()
                };
                (secs, m.line.clone())
            })
            .collect()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the group (vigil drains, node and nginx exit), SIGKILL to
    /// whatever is left after 3 s.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let pgid = self.pid as i32;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Workers may outlive their master: sweep the group either way.
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) || !self.readers.is_empty() {
            self.stop_inner();
        }
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group we
    // created with process_group(0); it touches no memory of ours.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn scan(
    pipe: Box<dyn Read + Send>,
    file: &Mutex<File>,
    marks: &Mutex<Vec<Mark>>,
    pattern: Option<&str>,
) {
    let mut r = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let text = String::from_utf8_lossy(&line);
        if let Some(p) = pattern {
            if text.contains(p) {
                marks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Mark { at, line: text.trim_end().to_owned() });
            }
        }
        let _ = file.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line);
    }
}

/// One GET on a fresh connection; Ok when the status is 200.
fn probe(addr: SocketAddr) -> crate::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("unexpected answer {head:?}").into())
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Finds a program on PATH (and in /usr/sbin, where Debian puts nginx).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
