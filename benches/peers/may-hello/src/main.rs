//! may_minihttp's hello example with its address and worker count taken from
//! the command line: `may-hello 127.0.0.1:8080 2`.
//!
//! It answers every request with `Hello World\n` (text/plain), the same body
//! as vigil's binary, node and nginx in the comparison, except
//! `/work-inline?ms=N`, which keeps the handler busy for N ms first, as vigil's
//! demo route of that name does (`compare slow` sends one in 10,000).

use may_minihttp::{HttpServiceFactory, Request, Response};
use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Hello;

impl may_minihttp::HttpService for Hello {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        // may_minihttp's path is the whole request target, query included.
        if let Some(query) = req.path().strip_prefix("/work-inline") {
            let ms = query
                .strip_prefix('?')
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            burn_cpu(Duration::from_millis(ms));
            rsp.header("Content-Type: text/plain").body("worked inline\n");
            return Ok(());
        }
        rsp.header("Content-Type: text/plain").body("Hello World\n");
        Ok(())
    }
}

/// Keeps the worker thread busy for `duration`: the same loop as vigil's
/// `burn_cpu` (src/demo.rs), so both peers do the same work for one request.
fn burn_cpu(duration: Duration) {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < duration {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

struct HelloFactory;

impl HttpServiceFactory for HelloFactory {
    type Service = Hello;

    fn new_service(&self, _id: usize) -> Hello {
        Hello
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let workers: usize = match args.next().map(|w| w.parse()) {
        None => 1,
        Some(Ok(w)) if w > 0 => w,
        Some(_) => {
            eprintln!("usage: may-hello [ADDR] [WORKERS>0]");
            return ExitCode::FAILURE;
        }
    };
    // One may worker is one OS thread running coroutines; the driver pins the
    // whole process with taskset, so the count is the only knob needed here.
    may::config().set_workers(workers);
    let server = match HelloFactory.start(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("may-hello: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("may-hello listening on {addr} with {workers} worker(s)");
    // `wait` only returns if the accept coroutine ends (it does not on its own);
    // the driver stops this process with SIGTERM.
    let _ = server.join();
    ExitCode::SUCCESS
}
