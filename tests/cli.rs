//! The `vigil` binary: argument errors, and the abandoned-thread budget.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

#[test]
fn invalid_values_exit_2_with_one_line() {
    for args in [
        &["--loops", "0"][..],
        &["--mem-limit", "64lightyears"],
        &["--stall-timeout", "soon"],
        &["--chaos-stall", "2/3"],
        &["--listen", "not-an-address"],
        &["--max-headers", "100000"],
        &["--no-such-flag"],
    ] {
        let output = Command::new(VIGIL).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(stderr.starts_with("vigil: "), "{stderr:?}");
    }
}

/// Every long flag of `vigil --help` is in the README's flag table, and
/// every flag of the table is in `--help`: an undocumented flag, or a
/// documented one that is gone, fails.
#[test]
fn help_lists_every_flag() {
    let output = Command::new(VIGIL).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    // Option lines: `      --listen <LISTEN>`, `  -h, --help`.
    let in_help: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| long_flags(line).into_iter().next())
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    // Rows of the flag table: | `--flag ARG` | default | meaning |
    let in_readme: BTreeSet<String> =
        readme.lines().filter(|line| line.starts_with("| `--")).flat_map(long_flags).collect();
    let undocumented: Vec<_> = in_help.difference(&in_readme).collect();
    assert!(undocumented.is_empty(), "flags missing from the README table: {undocumented:?}");
    let missing: Vec<_> = in_readme.difference(&in_help).collect();
    assert!(missing.is_empty(), "README flags missing from --help: {missing:?}");
}

/// The `--long-flag` tokens of `text`, in order.
fn long_flags(text: &str) -> Vec<String> {
    text.match_indices("--")
        .map(|(at, _)| {
            let name: String = text[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .filter(|flag| flag.len() > 2)
        .collect()
}

/// Starts the binary and returns it with the address it logged.
pub fn spawn_vigil(
    args: &[&str],
) -> (std::process::Child, std::net::SocketAddr, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(VIGIL)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "vigil exited before listening");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, addr, stderr)
}

#[test]
fn past_the_abandoned_budget_the_process_exits_3() {
    let (mut child, addr, stderr) = spawn_vigil(&[
        "--loops",
        "1",
        "--demo",
        "--stall-timeout",
        "100ms",
        "--max-abandoned",
        "1",
        "--shutdown-timeout",
        "2s",
    ]);
    // Keep reading the log so the child never blocks on a full pipe.
    let log = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    for _ in 0..2 {
        // Each /spin stalls the current loop; it is abandoned and replaced.
        let mut client = util::Client::new(addr);
        client.send(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(client.is_closed(), "the stalled loop's connection is closed");
    }
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let log = log.join().unwrap();
    assert_eq!(status, Some(3), "log:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("max_abandoned")), "the exit is explained in the log");
}

fn wait_with_timeout(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let exited = util::eventually(limit, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
        return None;
    }
    child.wait().unwrap().code()
}

#[test]
fn mem_warn_logs_once_when_a_loop_crosses_it() {
    let admin_port =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{admin_port}");
    let (mut child, addr, stderr) = spawn_vigil(&[
        "--loops",
        "1",
        "--demo",
        "--mem-warn",
        "16MiB",
        "--mem-interval",
        "20ms",
        "--admin",
        &admin,
    ]);
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut client = util::Client::new(addr);
    client.send(b"GET /alloc?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    let warning = loop {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("a memory warning");
        if line.contains("using too much memory") {
            break line;
        }
    };
    assert!(warning.contains("loop 0.0") && warning.contains("mem_warn=16777216"), "{warning}");
    // More memory, still over the threshold, and a reading that shows it:
    // no second warning for the same crossing.
    client.send(b"GET /alloc?mb=8 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    let allocated = || -> Option<u64> {
        let mut admin_client =
            util::Client::from_stream(std::net::TcpStream::connect(&admin).ok()?);
        admin_client.send(b"GET /loops HTTP/1.1\r\nHost: a\r\n\r\n");
        let json: serde_json::Value = serde_json::from_slice(&admin_client.reply().body).ok()?;
        json["loops"][0]["memory"]["allocated"].as_u64()
    };
    assert!(util::eventually(Duration::from_secs(10), || allocated() >= Some(40 << 20)));
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let repeats = lines.try_iter().filter(|l| l.contains("using too much memory")).count();
    assert_eq!(repeats, 0, "warned once per crossing");
}
