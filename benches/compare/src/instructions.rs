//! `compare instructions`: user-space instructions per request, counted by
//! `valgrind --tool=callgrind`, for vigil, may_minihttp and the C floor.
//!
//! Time on a shared 2-core VM drifts by 10-20% between runs; an instruction
//! count does not: the same binary fed the same requests executes the same
//! instructions, whatever else the machine does. Each server runs under
//! callgrind twice per scenario, answering `SHORT` and then `LONG` requests
//! from one connection of a fixed client (one request in flight for
//! keep-alive, 16 for pipelined, and 16 whose `X-Seq` field changes on
//! every request, which vigil's head memo cannot recall); the difference of the two totals divided
//! by `LONG - SHORT` is the cost of one request, with start-up, the readiness
//! probe and shutdown cancelled out. Every thread of the server counts
//! (vigil's supervisor too: its periodic checks add under 1% here).
//!
//! The top functions (inclusive) of vigil's long run are printed, with
//! their share of the run and their instructions per request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::server::{free_port, which, Running, Spec};
use crate::{path, Config, Result};

/// Requests of the short and the long run of each pair.
const SHORT: u64 = 2_000;
const LONG: u64 = 12_000;

/// Top functions shown per scenario.
const TOP: usize = 14;

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Requests in flight on the connection.
    depth: u64,
    /// Each request carries a field whose value changes every time: vigil
    /// parses every head in full (its head memo never matches).
    varied: bool,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "keep-alive", depth: 1, varied: false },
    Scenario { name: "pipelined16", depth: 16, varied: false },
    Scenario { name: "pipelined16-varied", depth: 16, varied: true },
];

/// One server: its row name and how to start it on an address.
struct Peer {
    name: &'static str,
    argv: Box<dyn Fn(SocketAddr) -> Vec<String>>,
}

pub fn run(cfg: &Config) -> Result<()> {
    if which("valgrind").is_none() {
        return Err("valgrind is not installed (make bench-instructions installs it)".into());
    }
    let mut peers = Vec::new();
    if let Some(bin) = cfg.vigil.clone() {
        peers.push(Peer {
            name: "vigil",
            argv: Box::new(move |addr| {
                let listen = addr.to_string();
                vec![path(&bin), "--listen".into(), listen, "--loops".into(), "1".into()]
            }),
        });
    }
    if let Some(bin) = cfg.may.clone() {
        peers.push(Peer {
            name: "may_minihttp",
            argv: Box::new(move |addr| vec![path(&bin), addr.to_string(), "1".into()]),
        });
    }
    if let Some(bin) = cfg.floor.clone() {
        peers.push(Peer {
            name: "c-floor",
            argv: Box::new(move |addr| vec![path(&bin), addr.to_string()]),
        });
    }
    // `--only a,b` as in the load modes.
    peers.retain(|peer| cfg.only.as_ref().is_none_or(|only| only.iter().any(|n| n == peer.name)));
    let mut rows: Vec<(&'static str, &'static str, f64)> = Vec::new();
    let mut profiles: Vec<(&'static str, PathBuf)> = Vec::new();
    for scenario in SCENARIOS {
        for peer in &peers {
            let short = count(cfg, peer, scenario, SHORT)?;
            let long = count(cfg, peer, scenario, LONG)?;
            let per_request = (long.total as f64 - short.total as f64) / (LONG - SHORT) as f64;
            println!(
                "{:<13} {:<18} {per_request:>8.0} instructions per request",
                peer.name, scenario.name
            );
            rows.push((peer.name, scenario.name, per_request));
            if peer.name == "vigil" {
                profiles.push((scenario.name, long.file));
            }
        }
    }
    let mut report = String::from(
        "| server | scenario | instructions per request | vs may_minihttp | vs c-floor |\n|---|---|---|---|---|\n",
    );
    let find = |server: &str, scenario: &str| {
        rows.iter().find(|(s, sc, _)| *s == server && *sc == scenario).map(|r| r.2)
    };
    for (server, scenario, per_request) in &rows {
        let ratio = |peer: &str| {
            find(peer, scenario)
                .map_or_else(|| "-".to_owned(), |p| format!("{:.2}", per_request / p))
        };
        report.push_str(&format!(
            "| {server} | {scenario} | {per_request:.0} | {} | {} |\n",
            ratio("may_minihttp"),
            ratio("c-floor")
        ));
    }
    for (scenario, file) in &profiles {
        report.push_str(&format!(
            "\nvigil, {scenario}: top functions, inclusive, over the {LONG}-request run\n\n"
        ));
        report.push_str(&top_functions(file, LONG)?);
    }
    println!("\n{report}");
    let out = cfg.out.join("instructions.md");
    std::fs::write(&out, &report)?;
    println!("written to {}", out.display());
    Ok(())
}

struct Count {
    total: u64,
    file: PathBuf,
}

/// Runs `peer` under callgrind, sends it `requests` requests, stops it and
/// reads the total from the profile.
fn count(cfg: &Config, peer: &Peer, scenario: Scenario, requests: u64) -> Result<Count> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let stem = format!("callgrind-{}-{}-{requests}", peer.name, scenario.name);
    let file = std::fs::canonicalize(&cfg.out)?.join(format!("{stem}.out"));
    let mut argv = vec![
        // The server on core 0, as in `make bench` (the client is not measured).
        "taskset".to_owned(),
        "-c".into(),
        "0".into(),
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", path(&file)),
    ];
    argv.extend((peer.argv)(addr));
    let spec = Spec {
        name: peer.name.to_owned(),
        addr,
        argv,
        env: vec![("RUST_LOG".into(), "warn".into())],
        mark: None,
    };
    let server = Running::start(&spec, &cfg.out.join("logs").join(format!("{stem}.log")))?;
    let sent = drive(addr, requests, scenario);
    // SIGTERM: vigil drains and exits, the others die of it; callgrind
    // writes its profile either way.
    server.stop();
    sent?;
    let total = read_total(&file)?;
    Ok(Count { total, file })
}

/// `requests` GETs on one connection, `depth` at a time, each answer read
/// whole (every server answers `Hello World\n` with a Content-Length).
fn drive(addr: SocketAddr, requests: u64, scenario: Scenario) -> Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut batch = Vec::new();
    let mut done = 0;
    while done < requests {
        let now = scenario.depth.min(requests - done);
        batch.clear();
        for seq in done..done + now {
            batch.extend_from_slice(&request(scenario, seq));
        }
        stream.write_all(&batch)?;
        let mut answered = 0;
        while answered < now {
            match complete_response(&buf) {
                Some(len) => {
                    buf.drain(..len);
                    answered += 1;
                }
                None => {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(format!("closed after {} answers", done + answered).into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        done += now;
    }
    Ok(())
}

/// Request number `seq` of a run. The varied one is as long whatever
/// `seq`, so both runs of a pair send requests of one size.
fn request(scenario: Scenario, seq: u64) -> Vec<u8> {
    if scenario.varied {
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Seq: {seq:08}\r\n\r\n").into_bytes()
    } else {
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()
    }
}

/// The length of the response at the start of `buf`, once it is all there.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// The `totals:` (or `summary:`) line of a callgrind profile.
fn read_total(file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("no callgrind profile {}: {e}", file.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", file.display()).into())
}

/// `1,234,567 (12.34%)  file:function [object]` -> count, share, function.
fn annotated_function(line: &str) -> Option<(u64, String, String)> {
    let (count, rest) = line.trim_start().split_once(' ')?;
    let count: u64 = count.replace(',', "").parse().ok()?;
    let (share, function) = rest.trim_start().split_once(')')?;
    let function = function.trim();
    let function = function.split(" [").next().unwrap_or(function);
    // `file:function`; the function's own `::` come after.
    let function = function.split_once(':').map_or(function, |(_, f)| f);
    Some((count, share.trim_start_matches('(').to_owned(), function.to_owned()))
}

/// Frames every thread has (thread start, closure shims, `main`): their
/// inclusive count is the whole run and says nothing.
fn is_scaffolding(function: &str) -> bool {
    function == "PROGRAM TOTALS"
        || function == "start_thread"
        || function == "main"
        || function.starts_with("std::")
        || function.starts_with("<std::")
        || function.starts_with("core::ops::function::")
        || function.starts_with("__libc_start")
        || function.starts_with("clone")
}

/// The first `TOP` functions of `callgrind_annotate --inclusive=yes`, as a
/// table with instructions per request.
fn top_functions(file: &Path, requests: u64) -> Result<String> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(file)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut table = String::from("| Ir per request | share | function |\n|---|---|---|\n");
    let rows = text
        .lines()
        .filter_map(annotated_function)
        .filter(|(_, _, function)| !function.is_empty() && !is_scaffolding(function))
        .take(TOP);
    for (count, share, function) in rows {
        let function = function.replace('|', "\\|");
        table.push_str(&format!(
            "| {:.0} | {share} | `{function}` |\n",
            count as f64 / requests as f64
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_with_their_body() {
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHello World\n";
        assert_eq!(complete_response(one), Some(one.len()));
        assert_eq!(complete_response(&one[..one.len() - 1]), None);
        let two = [&one[..], &one[..]].concat();
        assert_eq!(complete_response(&two), Some(one.len()));
        assert_eq!(complete_response(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(27));
    }

    #[test]
    fn varied_requests_differ_and_keep_one_length() {
        let varied = SCENARIOS[2];
        assert!(varied.varied);
        let (a, b) = (request(varied, 1), request(varied, 12_000));
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
        assert_eq!(request(SCENARIOS[1], 1), request(SCENARIOS[1], 2));
    }

    #[test]
    fn annotate_lines_give_count_share_and_function() {
        let line =
            "  2,172,251 (10.07%)  src/http/request.rs:vigil::http::request::parse_head [/x/vigil]";
        let (count, share, function) = annotated_function(line).unwrap();
        assert_eq!((count, share.as_str()), (2_172_251, "10.07%"));
        assert_eq!(function, "vigil::http::request::parse_head");
        assert!(annotated_function("Ir  file:function").is_none());
        assert!(is_scaffolding("std::sys::backtrace::__rust_begin_short_backtrace"));
        assert!(!is_scaffolding("vigil::conn::Conn::process"));
    }
}
