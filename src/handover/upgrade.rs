//! An upgrade (SIGUSR2): start the program again, with this process's
//! listening sockets and a readiness pipe, and drain once it serves.
//!
//! While the new process starts, both serve: they accept from the same
//! sockets. If it exits, or is not ready in time, this one goes on as if
//! nothing happened and stops it; it never touches the sockets either way.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::{notify_service_manager, Program, INHERIT_FDS, INHERIT_PARENT, READY_FD, READY_LINE};
use crate::shared::{lock, PendingUpgrade};
use crate::{sys, Control};

/// How long a new process that closed its readiness pipe has to exit
/// before it is taken as alive but broken, and stopped.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Beyond its own shutdown timeout, how long a new process being stopped
/// has before it is killed.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// How often a process being waited for is looked at (rare, bounded waits).
const WAIT_STEP: Duration = Duration::from_millis(10);

/// Why an upgrade was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// One is under way.
    InProgress,
    /// Its thread could not be started.
    NoThread,
}

/// Starts an upgrade on a thread of its own (it waits up to the upgrade
/// timeout, and signals must be acted on meanwhile), unless one is under
/// way.
pub(crate) fn begin(control: &Control, program: &Program) -> Result<(), Refusal> {
    let mut pending = lock(&control.server().upgrade);
    if pending.as_ref().is_some_and(|p| !p.thread.is_finished()) {
        return Err(Refusal::InProgress);
    }
    log::info!("upgrade: starting {}", program.path.display());
    let (cancel, cancelled) = crossbeam_channel::bounded(1);
    let (control, program) = (control.clone(), program.clone());
    let thread = thread::Builder::new()
        .name("vigil-upgrade".into())
        .spawn(move || run(&control, &program, &cancelled))
        .map_err(|err| {
            log::error!("upgrade failed: cannot start its thread: {err}");
            Refusal::NoThread
        })?;
    *pending = Some(PendingUpgrade { thread, cancel });
    Ok(())
}

/// Cancels the upgrade under way, if any (its new process is stopped).
pub(crate) fn cancel(control: &Control) {
    if let Some(pending) = lock(&control.server().upgrade).as_ref() {
        let _ = pending.cancel.send(());
    }
}

/// Cancels the upgrade under way, if any, and waits for its end.
pub(crate) fn finish(control: &Control) {
    let pending = lock(&control.server().upgrade).take();
    if let Some(pending) = pending {
        let _ = pending.cancel.send(());
        let _ = pending.thread.join();
    }
}

/// Runs one upgrade to its end; `cancel` receives when this process is
/// asked to shut down meanwhile.
fn run(control: &Control, program: &Program, cancel: &Receiver<()>) {
    let me = std::process::id();
    let timeout = control.server().config.upgrade_timeout;
    notify_service_manager("RELOADING=1\nSTATUS=upgrading");
    let (mut child, ready) = match start(control, program) {
        Ok(started) => started,
        Err(err) => {
            let why = format!("cannot start {}: {err}", program.path.display());
            return failed(&why, me);
        }
    };
    let pid = child.id();
    log::info!(
        "upgrade: started {} pid={pid}; still serving as pid {me} until it is ready (timeout {timeout:?})",
        program.path.display()
    );
    let started = Instant::now();
    let deadline = started + timeout;
    select! {
        recv(ready) -> said => match said {
            Ok(true) => {
                let took = started.elapsed();
                log::info!("upgrade: new process pid={pid} is serving after {took:?}; pid {me} drains and exits");
                notify_service_manager(&format!("MAINPID={pid}\nREADY=1\nSTATUS=serving"));
                control.hand_over(pid);
                // It outlives this process; its exit is for its new
                // parent (systemd, init or a subreaper) to collect.
                drop(child);
            }
            _ => match wait_for_exit(&mut child, Instant::now() + EXIT_AFTER_CLOSE) {
                Some(status) => {
                    failed(&format!("new process pid={pid} {} before it was ready", exited(status)), me)
                }
                None => {
                    failed(&format!("new process pid={pid} closed its readiness pipe without being ready; stopping it"), me);
                    stop(&mut child, control);
                }
            },
        },
        recv(cancel) -> _ => {
            log::warn!("upgrade: cancelled by a shutdown; stopping new process pid={pid}");
            stop(&mut child, control);
        },
        default(deadline.saturating_duration_since(Instant::now())) => {
            failed(&format!("new process pid={pid} was not ready within {timeout:?}; stopping it"), me);
            stop(&mut child, control);
        },
    }
}

fn failed(why: &str, me: u32) {
    log::error!("upgrade failed: {why}; still serving as pid {me}");
    notify_service_manager("READY=1\nSTATUS=serving (upgrade failed)");
}

/// Starts the program with the sockets; the channel says `true` once it
/// wrote that it is ready, `false` if its pipe closed first.
fn start(control: &Control, program: &Program) -> std::io::Result<(Child, Receiver<bool>)> {
    let server = control.server();
    let mut sockets: Vec<(&str, RawFd)> = vec![("http", server.listener.as_raw_fd())];
    if let Some(admin) = server.admin_socket.get() {
        sockets.push(("admin", admin.as_raw_fd()));
    }
    let (read_end, write_end) = sys::pipe()?;
    let names: Vec<String> = sockets.iter().map(|(name, fd)| format!("{name}:{fd}")).collect();
    let mut command = Command::new(&program.path);
    command
        .args(&program.args)
        .env(INHERIT_FDS, names.join(","))
        .env(INHERIT_PARENT, std::process::id().to_string())
        .env(READY_FD, write_end.as_raw_fd().to_string())
        // systemd's sockets were this process's; the new one gets them
        // from here, named.
        .env_remove(super::LISTEN_FDS)
        .env_remove(super::LISTEN_PID)
        .env_remove(super::LISTEN_FDNAMES);
    let mut inherited: Vec<RawFd> = sockets.iter().map(|&(_, fd)| fd).collect();
    inherited.push(write_end.as_raw_fd());
    sys::inherit_on_exec(&mut command, inherited);
    // From the fork on, another process holds the sockets: a shutdown of
    // this one must only close its fds.
    server.listener_shared.store(true, Relaxed);
    let child = command.spawn()?;
    // Only the child writes: its exit closes the pipe.
    drop(write_end);
    let (said, ready) = crossbeam_channel::bounded(1);
    thread::Builder::new().name("vigil-upgrade-pipe".into()).spawn(move || {
        let mut pipe = std::fs::File::from(read_end);
        let mut line = Vec::with_capacity(READY_LINE.len());
        let mut buf = [0u8; 64];
        let is_ready = loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => {
                    line.extend_from_slice(&buf[..n]);
                    if line.starts_with(READY_LINE) {
                        break true;
                    }
                    if line.len() >= READY_LINE.len() {
                        break false;
                    }
                }
            }
        };
        let _ = said.send(is_ready);
    })?;
    Ok((child, ready))
}

/// Stops a new process that will not take over: SIGTERM (it drains what
/// it accepted, and leaves the sockets alone), then SIGKILL.
fn stop(child: &mut Child, control: &Control) {
    let pid = child.id();
    if let Err(err) = sys::kill(pid, libc::SIGTERM) {
        log::debug!("upgrade: SIGTERM to pid {pid}: {err}");
    }
    let grace = control.server().config.shutdown_timeout + STOP_MARGIN;
    let status = match wait_for_exit(child, Instant::now() + grace) {
        Some(status) => status,
        None => {
            log::warn!("upgrade: new process pid={pid} did not stop within {grace:?}; killing it");
            let _ = child.kill();
            match child.wait() {
                Ok(status) => status,
                Err(err) => return log::warn!("upgrade: cannot reap pid {pid}: {err}"),
            }
        }
    };
    log::info!("upgrade: new process pid={pid} stopped: {}", exited(status));
}

/// Waits for `child` until `deadline`; its status, or `None` if it runs on.
fn wait_for_exit(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(WAIT_STEP),
            _ => return None,
        }
    }
}

/// `exited with status 2`, `was killed by signal 9`.
fn exited(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => status.to_string(),
    }
}
