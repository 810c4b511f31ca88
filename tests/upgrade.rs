//! Upgrades (SIGUSR2) and inherited sockets, on the real binary: the new
//! process takes the same socket, the old one drains; a new binary that
//! fails leaves the old one serving; systemd's socket activation.
//!
//! Every wait is on an event: a log line, a datagram on the notify socket,
//! an exit status, or the end of stderr (which every process of the test
//! shares, so its end means they have all exited). A failed test kills the
//! new processes with the old one: they share its process group.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::cli::Vigil;
use crate::util;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

/// A directory of its own for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vigil-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `vigil` in this directory, a symlink to the binary under test: what
    /// an upgrade starts is whatever this path names then.
    fn install_vigil(&self) -> PathBuf {
        let link = self.0.join("vigil");
        std::os::unix::fs::symlink(VIGIL, &link).unwrap();
        link
    }

    /// Replaces the program at `path` by a shell script, the way an
    /// install does (a new file renamed over the old).
    fn replace_with_script(&self, path: &Path, script: &str) {
        let new = self.0.join("vigil.new");
        fs::write(&new, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&new, path).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

impl Vigil {
    /// Waits for a log line containing `needle`; panics with the lines
    /// seen if stderr ends or stays silent first.
    fn expect_line(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.log.recv_timeout(util::IO_TIMEOUT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(err) => {
                    panic!("no log line with {needle:?} ({err}); seen:\n{}", seen.join("\n"))
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The number after `pid=` in a log line.
fn pid_in(line: &str) -> u32 {
    let rest = line.split("pid=").nth(1).expect("pid=");
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// systemd's part of socket activation: `program` started through `sh`,
/// which moves `listener` (passed as its stdin) to fd 3, names it in
/// `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` and execs, keeping the pid.
/// The caller keeps its own `listener`: it holds the socket too.
fn socket_activated(program: impl AsRef<std::ffi::OsStr>, listener: &TcpListener) -> Command {
    let script = "exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=http; exec \"$0\" \"$@\"";
    let passed = OwnedFd::from(listener.try_clone().unwrap());
    let mut command = Command::new("sh");
    command.args(["-c", script]).arg(program).stdin(Stdio::from(passed));
    command
}

/// `listener`'s socket still listens: a client connects, and its holder
/// accepts it (a shut-down listener refuses the one and fails the other).
fn assert_still_listening(listener: &TcpListener) {
    // vigil made the shared file description non-blocking.
    listener.set_nonblocking(false).unwrap();
    let client =
        TcpStream::connect(listener.local_addr().unwrap()).expect("the socket still takes clients");
    let (_accepted, peer) = listener.accept().expect("its holder accepts");
    assert_eq!(peer, client.local_addr().unwrap());
}

/// Clients sending keep-alive requests back to back (reconnecting after
/// `Connection: close`), counting answers and failures, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || {
                    let mut client = None;
                    while !stop.load(Relaxed) {
                        let result = (|| {
                            let client = match &mut client {
                                Some(client) => client,
                                None => client
                                    .insert(util::Client::from_stream(TcpStream::connect(addr)?)),
                            };
                            client.stream.set_read_timeout(Some(util::IO_TIMEOUT))?;
                            std::io::Write::write_all(
                                &mut client.stream,
                                b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                            )?;
                            client.reply_to("GET")
                        })();
                        match result {
                            Ok(reply) if reply.status == 200 => {
                                ok.fetch_add(1, Relaxed);
                                if reply.closes() {
                                    client = None;
                                }
                            }
                            Ok(reply) => {
                                failures.lock().unwrap().push(format!("status {}", reply.status));
                                client = None;
                            }
                            Err(err) => {
                                failures.lock().unwrap().push(err.to_string());
                                client = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, threads }
    }

    /// Waits until `more` further requests have been answered.
    fn wait_for(&self, more: u64) {
        let target = self.ok.load(Relaxed) + more;
        assert!(
            util::eventually(util::IO_TIMEOUT, || self.ok.load(Relaxed) >= target),
            "the load stalled at {} answers; failures: {:?}",
            self.ok.load(Relaxed),
            self.failures.lock().unwrap()
        );
    }

    /// Stops the clients; the answers and the failures.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Relaxed), failures)
    }
}

/// systemd's side of `NOTIFY_SOCKET`: the datagrams a service sends.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notifications {
    fn bind(dir: &Scratch) -> Notifications {
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
        Notifications { socket, path }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whatever has been sent and not yet read, without waiting.
    fn pending(&self) -> Option<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let got = match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(err) if err.kind() == ErrorKind::WouldBlock => None,
            Err(err) => panic!("notify socket: {err}"),
        };
        self.socket.set_nonblocking(false).unwrap();
        got
    }
}

#[test]
fn an_upgrade_under_load_hands_the_socket_over_and_loses_no_request() {
    let dir = Scratch::new("upgrade-ok");
    let notify = Notifications::bind(&dir);
    let mut command = Command::new(dir.install_vigil());
    command.env("NOTIFY_SOCKET", &notify.path);
    let pid_file = dir.0.join("vigil.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let args = ["--loops", "2", "--admin", "127.0.0.1:0", "--pid-file", pid_arg];
    let mut old = Vigil::spawn_command(command, &args);
    assert_eq!(notify.next(), "READY=1");
    // Written once the process serves (it says so first).
    let names = |pid: u32| fs::read_to_string(&pid_file).is_ok_and(|s| s == format!("{pid}\n"));
    assert!(util::eventually(util::IO_TIMEOUT, || names(old.pid())), "the pid file names it");
    let admin = old.admin.unwrap();
    let load = Load::start(old.addr, 4);
    load.wait_for(200);

    signal(old.pid(), "USR2");
    // The new process's lines come before the old one hears it is ready.
    old.expect_line("inherited socket name=http");
    old.expect_line("inherited socket name=admin");
    let serving = old.expect_line("is serving after");
    let new = pid_in(&serving);
    assert_ne!(new, old.pid());
    let reloading = notify.next();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.strip_suffix("\nSTATUS=upgrading"));
    assert!(usec.is_some_and(|n| n.parse::<u64>().is_ok()), "{reloading:?}");
    assert_eq!(notify.next(), format!("MAINPID={new}\nREADY=1\nSTATUS=serving"));
    // The old process drains and exits 0; clients go on being answered.
    old.expect_line("admin plane: the new process takes the admin socket");
    let status = old.wait_with_timeout(util::IO_TIMEOUT);
    assert_eq!(status, Some(0), "the old process drains and exits");
    // The new process replaced the pid file; the old one left it at exit.
    assert!(util::eventually(util::IO_TIMEOUT, || names(new)), "the pid file names the new one");
    load.wait_for(200);
    let (answered, failures) = load.finish();
    assert!(failures.is_empty(), "{} failures of {answered}: {failures:?}", failures.len());
    // The same addresses, now the new process's: it inherited both sockets.
    assert_eq!(util::get(old.addr, "/").unwrap().status, 200);
    assert_eq!(util::get(admin, "/readyz").unwrap().status, 200);
    // A drain after a handover is not the service stopping: the old process
    // (gone now, so everything it sent is queued) said nothing more.
    assert_eq!(notify.pending(), None);

    signal(new, "TERM");
    assert_eq!(notify.next(), "STOPPING=1");
    let log: Vec<String> = old.log.iter().collect();
    assert!(log.iter().any(|l| l.contains("vigil drained")), "the new process drained: {log:#?}");
    // stderr ended: both have exited, the one the file named removed it.
    assert!(!pid_file.exists(), "the serving process removes its pid file at exit");
}

#[test]
fn a_new_binary_that_exits_1_leaves_the_old_one_serving() {
    let dir = Scratch::new("upgrade-exit");
    let program = dir.install_vigil();
    let mut old = Vigil::spawn_command(Command::new(&program), &["--loops", "1"]);
    dir.replace_with_script(&program, "exit 1");
    signal(old.pid(), "USR2");
    let line = old.expect_line("upgrade failed:");
    let expected =
        format!("exited with status 1 before it was ready; still serving as pid {}", old.pid());
    assert!(line.contains(&expected), "{line}");
    assert_eq!(util::get(old.addr, "/").unwrap().status, 200);
    // Its socket untouched, it drains and ends as usual.
    signal(old.pid(), "TERM");
    assert_eq!(old.wait_with_timeout(util::IO_TIMEOUT), Some(0));
}

#[test]
fn a_new_process_not_ready_in_time_is_stopped() {
    let dir = Scratch::new("upgrade-timeout");
    let program = dir.install_vigil();
    let args = ["--loops", "1", "--upgrade-timeout", "300ms"];
    let mut old = Vigil::spawn_command(Command::new(&program), &args);
    dir.replace_with_script(&program, "exec sleep 600");
    signal(old.pid(), "USR2");
    let line = old.expect_line("upgrade failed:");
    assert!(line.contains("was not ready within 300ms; stopping it"), "{line}");
    let stopped = old.expect_line("stopped:");
    assert!(stopped.contains("was killed by signal 15"), "{stopped}");
    assert_eq!(util::get(old.addr, "/").unwrap().status, 200);
    signal(old.pid(), "TERM");
    assert_eq!(old.wait_with_timeout(util::IO_TIMEOUT), Some(0));
}

#[test]
fn a_second_usr2_during_an_upgrade_is_ignored_and_a_shutdown_cancels_it() {
    let dir = Scratch::new("upgrade-twice");
    let program = dir.install_vigil();
    let mut old = Vigil::spawn_command(Command::new(&program), &["--loops", "1"]);
    dir.replace_with_script(&program, "exec sleep 600");
    signal(old.pid(), "USR2");
    let started = old.expect_line("upgrade: started");
    signal(old.pid(), "USR2");
    old.expect_line("signal=SIGUSR2 ignored: an upgrade is in progress");
    signal(old.pid(), "TERM");
    old.expect_line(&format!(
        "cancelled by a shutdown; stopping new process pid={}",
        pid_in(&started)
    ));
    assert_eq!(old.wait_with_timeout(util::IO_TIMEOUT), Some(0));
    let rest = old.rest_of_log();
    assert!(rest.iter().any(|l| l.contains("stopped: was killed by signal 15")), "{rest:#?}");
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_sigterm_leaves_it_to_its_other_holder() {
    let dir = Scratch::new("socket-activation");
    let notify = Notifications::bind(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut command = socket_activated(VIGIL, &listener);
    command.env("NOTIFY_SOCKET", &notify.path);
    let mut vigil = Vigil::spawn_command(command, &["--loops", "1"]);
    assert_eq!(vigil.addr, addr, "it serves the socket it was given, not --listen");
    assert!(vigil.startup_log.iter().any(|l| l.contains("inherited socket name=http fd=3")));
    assert_eq!(notify.next(), "READY=1");
    assert_eq!(util::get(addr, "/").unwrap().status, 200);

    signal(vigil.pid(), "TERM");
    assert_eq!(notify.next(), "STOPPING=1");
    assert_eq!(vigil.wait_with_timeout(util::IO_TIMEOUT), Some(0));
    assert_still_listening(&listener);
}

#[test]
fn inherited_fds_that_are_not_listening_sockets_are_refused_with_status_2() {
    // As fd 3: a connected socket (open, a socket, not listening), then
    // /dev/null (not a socket); then fds that are no socket of ours at all.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let cases: [(&str, &str, Stdio); 5] = [
        ("http:3", "exec 3<&0 0</dev/null;", Stdio::from(OwnedFd::from(connected))),
        ("http:3", "exec 3</dev/null;", Stdio::null()),
        ("http:0", "", Stdio::null()),
        ("http:99", "", Stdio::null()),
        ("web:3", "exec 3</dev/null;", Stdio::null()),
    ];
    for (fds, setup, stdin) in cases {
        // After the exec, sh's parent (this test) is vigil's.
        let script = format!(
            "{setup} export VIGIL_INHERIT_FDS={fds} VIGIL_INHERIT_PARENT=$PPID; exec \"$0\" --loops 1"
        );
        let output = Command::new("sh").args(["-c", &script, VIGIL]).stdin(stdin).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{fds} ({setup}): {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{fds}: one line, got {stderr:?}");
        assert!(stderr.contains("VIGIL_INHERIT_FDS") || stderr.contains("fd "), "{stderr}");
    }
}

#[test]
fn clients_queued_in_the_backlog_are_served_by_the_new_process() {
    let dir = Scratch::new("upgrade-backlog");
    // One loop, never handed off nor replaced: stuck in /spin, it accepts
    // nobody, so every client after that waits in the socket's backlog.
    let args = [
        "--loops",
        "1",
        "--demo",
        "--handoff-after",
        "0",
        "--stall-timeout",
        "0",
        "--shutdown-timeout",
        "2s",
    ];
    let mut old = Vigil::spawn_command(Command::new(dir.install_vigil()), &args);
    let mut stuck = util::Client::new(old.addr);
    stuck.send(b"GET /spin HTTP/1.1\r\nHost: t\r\n\r\n");
    old.expect_line("demo /spin: this loop spins");
    let mut queued: Vec<util::Client> = (0..20).map(|_| util::Client::new(old.addr)).collect();
    for client in &mut queued {
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    }

    signal(old.pid(), "USR2");
    let new = pid_in(&old.expect_line("is serving after"));
    for (i, client) in queued.iter_mut().enumerate() {
        let reply = client.reply_to("GET").unwrap_or_else(|err| panic!("client {i}: {err}"));
        assert_eq!(reply.status, 200, "client {i}");
    }
    // The old process's drain is cut at its timeout (its loop spins on).
    assert_eq!(old.wait_with_timeout(util::IO_TIMEOUT), Some(0));
    assert!(stuck.is_closed(), "the spinning request's connection is cut with its process");
    // The new process holds the 20 clients, idle: a drain closes them
    // after its short grace, long before its timeout.
    signal(new, "TERM");
    let rest = old.rest_of_log();
    assert!(rest.iter().any(|l| l.contains("vigil drained")), "{rest:#?}");
    assert!(!rest.iter().any(|l| l.contains("drain timed out")), "{rest:#?}");
}

#[test]
fn an_upgrade_from_socket_activation_leaves_the_socket_to_systemd() {
    let dir = Scratch::new("activation-upgrade");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // As systemd starts it, through a path an upgrade starts again.
    let command = socket_activated(dir.install_vigil(), &listener);
    let mut old = Vigil::spawn_command(command, &["--loops", "1"]);
    assert_eq!(old.addr, addr);

    signal(old.pid(), "USR2");
    old.expect_line("inherited socket name=http fd=");
    let new = pid_in(&old.expect_line("is serving after"));
    assert_eq!(old.wait_with_timeout(util::IO_TIMEOUT), Some(0));
    assert_eq!(util::get(addr, "/").unwrap().status, 200, "the new process serves the socket");
    // Neither process shuts the socket down: after both have gone, its
    // first holder still accepts on it.
    signal(new, "TERM");
    let rest = old.rest_of_log();
    assert!(rest.iter().any(|l| l.contains("vigil drained")), "{rest:#?}");
    assert_still_listening(&listener);
}
