//! may_minihttp's hello example with its address and worker count taken from
//! the command line: `may-hello 127.0.0.1:8080 2`.
//!
//! It answers every request with `Hello World\n` (text/plain), the same body
//! as vigil's binary, node and nginx in the comparison.

use may_minihttp::{HttpServiceFactory, Request, Response};
use std::io;
use std::process::ExitCode;

#[derive(Clone)]
struct Hello;

impl may_minihttp::HttpService for Hello {
    fn call(&mut self, _req: Request, rsp: &mut Response) -> io::Result<()> {
        rsp.header("Content-Type: text/plain").body("Hello World\n");
        Ok(())
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
