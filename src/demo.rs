//! The binary's service: hello world, plus, with `--demo`,
//! routes that misbehave on purpose so the supervisor can be watched at work.

use std::time::{Duration, Instant};

use std::io::{Read, Write};

use vigil::{BodyPolicy, Request, Response, Service};

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) demo: bool,
    /// Spin forever on one request in this many.
    pub(crate) chaos_stall: Option<u64>,
    /// Serve this directory instead of the hello world.
    pub(crate) root: Option<vigil::files::StaticDir>,
}

pub(crate) struct App {
    options: Options,
    /// Memory held on purpose by `/alloc`.
    hoard: Vec<Vec<u8>>,
    rng: u64,
}

impl App {
    pub(crate) fn new(slot: usize, options: Options) -> App {
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ std::process::id() as u64
            ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        App { options, hoard: Vec::new(), rng: seed | 1 }
    }

    /// xorshift64: plenty for a 1-in-N coin and no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn demo(&mut self, req: &Request<'_>, res: &mut Response) -> bool {
        let number = |name: &str| req.query_param(name).and_then(|v| v.parse::<u64>().ok());
        match req.path() {
            "/spin" => {
                log::warn!("demo /spin: this loop spins until the supervisor gives up on it");
                spin_forever()
            }
            "/block" => {
                let ms = number("ms").unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                res.body(format!("blocked {ms} ms\n"));
            }
            "/panic" => panic!("/panic requested"),
            "/alloc" => {
                let mb = number("mb").unwrap_or(1).min(4096) as usize;
                // Touch every page so the memory is really resident.
                self.hoard.push(vec![0x5a; mb << 20]);
                let held: usize = self.hoard.iter().map(Vec::len).sum();
                res.body(format!("holding {} MiB\n", held >> 20));
            }
            "/work" => {
                let ms = number("ms").unwrap_or(100);
                res.offload(move |res| {
                    burn_cpu(Duration::from_millis(ms));
                    res.header("Content-Type", "text/plain").body(format!("worked {ms} ms\n"));
                });
                return true;
            }
            "/work-inline" => {
                let ms = number("ms").unwrap_or(100);
                burn_cpu(Duration::from_millis(ms));
                res.body(format!("worked {ms} ms inline\n"));
            }
            "/upload" => {
                let Some(body) = req.body_reader() else {
                    res.status(400).body_static(b"POST or PUT a body to /upload\n");
                    return true;
                };
                res.offload(move |res| match store(body) {
                    Ok((bytes, hash)) => {
                        res.body(format!("received {bytes} bytes fnv1a64={hash:016x}\n"));
                    }
                    Err(err) => {
                        let status =
                            if err.kind() == std::io::ErrorKind::InvalidInput { 413 } else { 400 };
                        res.status(status).body(format!("upload failed: {err}\n"));
                    }
                });
                return true;
            }
            "/free" => {
                self.hoard = Vec::new();
                res.body_static(b"freed\n");
            }
            _ => return false,
        }
        res.header("Content-Type", "text/plain");
        true
    }
}

/// Writes a streamed body to a temporary file (removed at once, so that
/// it goes when the handle does) and hashes it (FNV-1a, 64 bits), so that a
/// client can check what arrived.
fn store(mut body: vigil::BodyReader) -> std::io::Result<(u64, u64)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vigil-upload-{}-{n}", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    std::fs::remove_file(&path)?;
    let (mut bytes, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok((bytes, hash));
        }
        for &b in &buf[..n] {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        file.write_all(&buf[..n])?;
        bytes += n as u64;
    }
}

/// Keeps a CPU busy for `duration`, as a real computation would.
fn burn_cpu(duration: Duration) {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < duration {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Never inlined: a stall report names it.
#[inline(never)]
fn spin_forever() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

impl Service for App {
    /// Inlined: the binary calls it from two service stacks (bare, and
    /// behind the access log), and LLVM would otherwise keep one shared
    /// copy out of line, costing the bare stack 25 instructions a request.
    fn body_policy(&mut self, req: &Request<'_>) -> Option<BodyPolicy> {
        (self.options.demo && req.path() == "/upload").then_some(BodyPolicy::Stream(u64::MAX))
    }

    #[inline(always)]
    fn call(&mut self, req: &Request<'_>, res: &mut Response) {
        if let Some(n) = self.options.chaos_stall {
            if self.next_random() % n == 0 {
                log::warn!("chaos: this request will never finish path={}", req.path());
                spin_forever();
            }
        }
        if self.options.demo && self.demo(req, res) {
            return;
        }
        if let Some(root) = &self.options.root {
            return root.serve(req, res);
        }
        res.header("Content-Type", "text/plain").body_static(b"Hello World\n");
    }
}
