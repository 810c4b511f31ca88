//! Without jemalloc as the global allocator (this test binary keeps the
//! system allocator), the library serves as usual and reports per-loop
//! memory as unavailable instead of reading figures that mean nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn memory_figures_are_unavailable_but_serving_is_not() {
    let config = vigil::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        loops: 1,
        pin: false,
        mem_interval: Duration::from_millis(10),
        ..vigil::Config::default()
    };
    let server = vigil::Server::new(|_slot: usize| {
        |_req: &vigil::Request<'_>, res: &mut vigil::Response| {
            res.body_static(b"fine");
        }
    })
    .config(config)
    .start()
    .unwrap();

    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("fine"), "{reply}");

    // Wait for a memory reading (the process figures appear with it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = server.snapshot();
        if snapshot.memory.is_some() || Instant::now() > deadline {
            break snapshot;
        }
        // sleep-ok: polls the snapshot, which the supervisor refreshes
        // every mem_interval without announcing it.
        std::thread::sleep(Duration::from_millis(5));
    };
    let process = snapshot.memory.expect("process memory is read");
    assert!(process.rss > 0, "RSS comes from the kernel");
    assert_eq!(process.allocated, 0, "no jemalloc figures without jemalloc");
    assert_eq!(snapshot.loops[0].memory, None, "no per-loop arena");
}
