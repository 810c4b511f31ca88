//! The `vigil` binary: flags, argument errors, the abandoned-thread budget
//! and `--mem-warn`; [`Vigil`] runs it for these tests and `admin.rs`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

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

/// A `vigil` child process, killed when dropped.
pub struct Vigil {
    pub child: Child,
    /// The address it serves on (from its `vigil listening` log line).
    pub addr: SocketAddr,
    /// The admin plane's address, when `--admin` was given.
    pub admin: Option<SocketAddr>,
    /// Its log lines after the ones announcing the addresses. A thread
    /// reads stderr all along, so the child never blocks on a full pipe;
    /// the channel disconnects when the child's stderr closes.
    pub log: Receiver<String>,
    /// The lines logged up to the listening addresses.
    pub startup_log: Vec<String>,
}

impl Vigil {
    /// Starts the binary on `--listen 127.0.0.1:0` (plus `args`) and waits
    /// for the log lines giving the bound addresses: no port is chosen
    /// before the server binds it, so no other process can take it first.
    /// With `--admin` (given as its own argument) it also waits for the
    /// admin plane's line.
    pub fn spawn(args: &[&str]) -> Vigil {
        Vigil::spawn_command(Command::new(VIGIL), args)
    }

    /// As `spawn`, with the soft and hard limits of open files at `files`
    /// (set by the shell before it execs the binary).
    pub fn spawn_with_file_limit(files: u64, args: &[&str]) -> Vigil {
        Vigil::spawn_with_file_limit_and_leaked_fds(files, 0, args)
    }

    /// As `spawn_with_file_limit`, from a parent that leaks `leaked` open
    /// descriptors (not close-on-exec) into it, as some supervisors and
    /// shells do.
    pub fn spawn_with_file_limit_and_leaked_fds(files: u64, leaked: u32, args: &[&str]) -> Vigil {
        // bash, not sh: dash cannot redirect descriptors past 9. What the
        // test runner itself leaked is closed first, so that the limit
        // leaves the same room wherever the tests run.
        let script = format!(
            "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd<&-\"; done; \
             for ((fd = 3; fd < 3 + {leaked}; fd++)); do eval \"exec $fd</dev/null\"; done; \
             ulimit -n {files} && exec \"$0\" \"$@\""
        );
        let mut command = Command::new("bash");
        command.args(["-c", &script, VIGIL]);
        Vigil::spawn_command(command, args)
    }

    /// As `spawn`, running `command` (a program path, or a shell that execs
    /// the binary).
    pub fn spawn_command(mut command: Command, args: &[&str]) -> Vigil {
        // A process group of its own: what it starts (the new process of
        // an upgrade) is killed with it if a test fails.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (lines_tx, log) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wants_admin = args.contains(&"--admin");
        let deadline = Instant::now() + util::IO_TIMEOUT;
        let (mut addr, mut admin) = (None, None);
        let mut seen = Vec::new();
        while addr.is_none() || (wants_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match log.recv_timeout(left) {
                Ok(line) => line,
                Err(err) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("vigil did not log its addresses ({err}); log:\n{}", seen.join("\n"));
                }
            };
            if line.contains("vigil listening addr=") {
                addr = Some(addr_in(&line));
            } else if line.contains("admin plane listening addr=") {
                admin = Some(addr_in(&line));
            }
            seen.push(line);
        }
        Vigil { child, addr: addr.unwrap(), admin, log, startup_log: seen }
    }

    /// Waits up to `limit` for the child to exit; its exit code, or `None`
    /// (and the child killed) if it did not.
    pub fn wait_with_timeout(&mut self, limit: Duration) -> Option<i32> {
        let exited = util::eventually(limit, || self.child.try_wait().unwrap().is_some());
        if !exited {
            let _ = self.child.kill();
            return None;
        }
        self.child.wait().unwrap().code()
    }

    /// The log lines not yet received, up to the end of stderr (call once
    /// the child has exited or been killed).
    pub fn rest_of_log(&self) -> Vec<String> {
        self.log.iter().collect()
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        // The group's id is the child's pid, which cannot be reused before
        // the child is reaped (below).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `addr=` in a log line.
fn addr_in(line: &str) -> SocketAddr {
    let rest = line.split("addr=").nth(1).expect("addr=");
    rest.split_whitespace().next().unwrap().parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn past_the_abandoned_budget_the_process_exits_3() {
    let mut vigil = Vigil::spawn(&[
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
    for _ in 0..2 {
        // Each /spin stalls the current loop; it is abandoned and replaced.
        let mut client = util::Client::new(vigil.addr);
        client.send(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(client.is_closed(), "the stalled loop's connection is closed");
    }
    let status = vigil.wait_with_timeout(Duration::from_secs(20));
    let log = vigil.rest_of_log();
    assert_eq!(status, Some(3), "log:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("max_abandoned")), "the exit is explained in the log");
}

#[test]
fn a_stall_report_names_the_spinning_function_and_the_request() {
    let vigil = Vigil::spawn(&[
        "--loops",
        "1",
        "--demo",
        "--stall-timeout",
        "200ms",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = vigil.admin.expect("admin address");
    let mut client = util::Client::new(vigil.addr);
    client.send(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(client.is_closed(), "the stalled loop's connection is closed");
    // Logged by the forensics thread once the stack is symbolized.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let line = vigil.log.recv_deadline(deadline).expect("a stall line");
        if line.contains("stalled reason=stalled") {
            break line;
        }
    };
    assert!(line.contains("request=\"GET /spin\""), "{line}");
    assert!(line.contains("stack=[vigil::demo::spin_forever"), "{line}");
    let admin_get = |path: &str| util::get(admin, path).expect("an admin reply");
    let stalls: serde_json::Value = serde_json::from_slice(&admin_get("/stalls").body).unwrap();
    let stall = &stalls[0];
    assert_eq!(stall["loop_name"], "0.0");
    assert_eq!(stall["request"], "GET /spin");
    // The innermost frames may be std's, inlined into it (spin_loop).
    let user_functions: Vec<&str> = stall["stack"]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["user"] == true)
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        user_functions.first().is_some_and(|f| f.ends_with("spin_forever")),
        "{user_functions:?}"
    );
    // A live loop's stack on demand; a loop that does not exist is 404.
    let live = admin_get("/loops/0/stack");
    assert_eq!(live.status, 200);
    let live: serde_json::Value = serde_json::from_slice(&live.body).unwrap();
    assert!(live["frames"].as_array().is_some_and(|f| !f.is_empty()), "{live}");
    assert_eq!(admin_get("/loops/3/stack").status, 404);
    assert_eq!(admin_get("/loops/x.y/stack").status, 404);
}

#[test]
fn the_access_log_flag_writes_a_line_per_request_in_the_chosen_format() {
    let path = std::env::temp_dir().join(format!("vigil-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let vigil = Vigil::spawn(&[
        "--loops",
        "1",
        "--access-log",
        path.to_str().unwrap(),
        "--access-log-format",
        "json",
    ]);
    let reply = util::get(vigil.addr, "/hello?x=1").unwrap();
    assert_eq!(reply.status, 200);
    // Written by the log's own thread, just after the reply.
    let line = || std::fs::read_to_string(&path).ok().filter(|text| text.ends_with('\n'));
    assert!(util::eventually(Duration::from_secs(10), || line().is_some()), "no line written");
    let record: serde_json::Value = serde_json::from_str(line().unwrap().trim()).unwrap();
    assert_eq!(record["target"], "/hello?x=1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes"], reply.body.len());
    // Behind the log the binary answers as without it: no 405 anywhere.
    let mut post = util::Client::new(vigil.addr);
    post.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.reply().text(), "Hello World\n");
    drop(vigil);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn mem_warn_logs_once_when_a_loop_crosses_it() {
    let mut vigil = Vigil::spawn(&[
        "--loops",
        "1",
        "--demo",
        "--mem-warn",
        "16MiB",
        "--mem-interval",
        "20ms",
        // Touching the hoard's pages takes longer than a handoff threshold;
        // the hoard must stay in the loop whose arena is watched.
        "--handoff-after",
        "0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = vigil.admin.expect("the admin plane's address");
    let mut client = util::Client::new(vigil.addr);
    client.send(b"GET /alloc?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.reply().status, 200);
    let warning = loop {
        let line = vigil.log.recv_timeout(util::IO_TIMEOUT).expect("a memory warning");
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
        let mut admin_client = util::Client::from_stream(std::net::TcpStream::connect(admin).ok()?);
        admin_client.send(b"GET /loops HTTP/1.1\r\nHost: a\r\n\r\n");
        let json: serde_json::Value = serde_json::from_slice(&admin_client.reply().body).ok()?;
        json["loops"][0]["memory"]["allocated"].as_u64()
    };
    assert!(util::eventually(Duration::from_secs(10), || allocated() >= Some(40 << 20)));
    let _ = vigil.child.kill();
    let _ = vigil.child.wait();
    let repeats =
        vigil.rest_of_log().iter().filter(|l| l.contains("using too much memory")).count();
    assert_eq!(repeats, 0, "warned once per crossing");
}

/// The `clamped_to=` of the startup line saying `max_connections` was cut.
fn clamped_connections(vigil: &Vigil) -> usize {
    let line = vigil
        .startup_log
        .iter()
        .find(|line| line.contains("max_connections") && line.contains("clamped"))
        .unwrap_or_else(|| panic!("no clamp line in {:?}", vigil.startup_log));
    line.split("clamped_to=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clamped_to= in {line:?}"))
}

/// `count` clients, each served one request and left open, idle.
fn idle_clients(addr: SocketAddr, count: usize) -> Vec<util::Client> {
    (0..count)
        .map(|_| {
            let mut client = util::Client::new(addr);
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(client.reply().status, 200);
            client
        })
        .collect()
}

#[test]
fn max_connections_is_clamped_to_the_open_file_limit() {
    // The descriptors a parent leaks are counted out of the budget too.
    let vigil = Vigil::spawn_with_file_limit_and_leaked_fds(
        256,
        100,
        &["--loops", "1", "--max-connections", "25000"],
    );
    let clamped = clamped_connections(&vigil);
    assert!(clamped > 0 && clamped < 256 - 100, "clamped_to={clamped}");
    // Up to the clamp every client is served; the next is refused with a
    // 503 it can read, not left hanging for want of a descriptor.
    let held = idle_clients(vigil.addr, clamped);
    let mut over = util::Client::new(vigil.addr);
    assert_eq!(over.reply().status, 503, "said at accept, before any request");
    drop(held);
}

#[test]
fn a_handoff_at_the_connection_limit_has_the_descriptors_it_needs() {
    let vigil = Vigil::spawn_with_file_limit(
        256,
        &["--loops", "1", "--demo", "--max-connections", "25000", "--stall-timeout", "60s"],
    );
    let clamped = clamped_connections(&vigil);
    let mut held = idle_clients(vigil.addr, clamped - 1);
    // The last connection blocks the only loop: it is handed off, and every
    // idle connection moves to its replacement as a duplicated descriptor
    // while the old thread still holds its own.
    let mut blocked = util::Client::new(vigil.addr);
    blocked.send(b"GET /block?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n");
    // Served while the old loop still blocks: only the replacement can.
    for client in &mut held {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(client.reply_to("GET").expect("served after the handoff").status, 200);
    }
    let log: Vec<String> = vigil.log.try_iter().collect();
    assert!(
        !log.iter().any(|l| l.contains("could not") || l.contains("out of file descriptors")),
        "{log:?}"
    );
}

#[test]
fn an_admin_flood_past_the_file_limit_leaves_both_planes_serving() {
    let vigil = Vigil::spawn_with_file_limit(64, &["--loops", "1", "--admin", "127.0.0.1:0"]);
    let admin = vigil.admin.expect("admin address");
    // More connections than the process has descriptors: the admin plane
    // runs out of them (EMFILE) while accepting.
    let flood: Vec<std::net::TcpStream> =
        (0..120).filter_map(|_| std::net::TcpStream::connect(admin).ok()).collect();
    assert!(flood.len() > 64, "the backlog took them; the plane cannot accept them all");
    drop(flood);
    let admin_answers = || {
        std::net::TcpStream::connect(admin).ok().is_some_and(|stream| {
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut client = util::Client::from_stream(stream);
            client.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
            client.reply_to("GET").is_ok_and(|reply| reply.status == 200)
        })
    };
    assert!(util::eventually(Duration::from_secs(10), admin_answers), "admin plane recovered");
    assert_eq!(util::get(vigil.addr, "/").unwrap().status, 200, "data plane serves");
    let log: Vec<String> = vigil.log.try_iter().collect();
    assert!(
        log.iter().any(|line| line.contains("admin plane out of file descriptors")),
        "the flood did reach the file limit: {log:?}"
    );
}

#[test]
fn a_handler_that_always_panics_does_not_flood_the_log() {
    let vigil = Vigil::spawn(&["--loops", "1", "--demo", "--handoff-after", "0"]);
    let mut client = util::Client::new(vigil.addr);
    for _ in 0..300 {
        client.send(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(client.reply().status, 500);
    }
    // Once a second has passed, the next panic is logged again, with the
    // count of those that were not: panic until such a line comes.
    let deadline = std::time::Instant::now() + util::IO_TIMEOUT;
    let mut lines = Vec::new();
    let mut suppressed_reported = false;
    while std::time::Instant::now() < deadline && !suppressed_reported {
        client.send(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(client.reply().status, 500);
        while let Ok(line) = vigil.log.recv_timeout(Duration::from_millis(50)) {
            suppressed_reported |=
                line.contains("handler panicked") && !line.contains("suppressed=0");
            lines.push(line);
        }
    }
    assert!(suppressed_reported, "a line says how many were not logged");
    let panic_lines = lines.iter().filter(|l| l.contains("handler panicked")).count();
    assert!(panic_lines <= 3 * 10, "{panic_lines} panic lines for 300+ panics");
    assert!(
        !lines.iter().any(|l| l.contains("panicked at")),
        "the standard hook's report is not written for loop threads"
    );
}

#[test]
fn the_admin_token_can_come_from_a_file() {
    let path = std::env::temp_dir().join(format!("vigil-token-{}", std::process::id()));
    std::fs::write(&path, "file-token-0123456789\n").unwrap();
    let vigil =
        Vigil::spawn(&["--admin", "127.0.0.1:0", "--admin-token-file", path.to_str().unwrap()]);
    let admin = vigil.admin.unwrap();
    let post = |authorization: &str| {
        let mut client = util::Client::new(admin);
        client.send(
            format!("POST /loops/0/recycle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{authorization}\r\n")
                .as_bytes(),
        );
        client.reply().status
    };
    assert_eq!(post(""), 403, "a token is set: loopback alone is not enough");
    assert_eq!(post("Authorization: Bearer file-token-0123456789\r\n"), 202);
    let _ = std::fs::remove_file(&path);
}
