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
use crate::shared::{lock, UpgradeState};
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
    /// This process handed its sockets to process `pid` and drains.
    HandedOver { pid: u32 },
    /// The server is shutting down or has ended.
    ShuttingDown,
    /// Its thread could not be started.
    NoThread,
}

/// Starts an upgrade on a thread of its own (it waits up to the upgrade
/// timeout, and signals must be acted on meanwhile), unless one is under
/// way or the server is shutting down.
pub(crate) fn begin(control: &Control, program: &Program) -> Result<(), Refusal> {
    let server = control.server();
    let mut state = lock(&server.upgrade);
    if let Some(pid) = control.handed_over_to() {
        return Err(Refusal::HandedOver { pid });
    }
    match &*state {
        UpgradeState::Closed => return Err(Refusal::ShuttingDown),
        UpgradeState::Pending { thread, .. } if !thread.is_finished() => {
            return Err(Refusal::InProgress)
        }
        _ if server.is_shutting_down() => return Err(Refusal::ShuttingDown),
        _ => {}
    }
    log::info!("upgrade: starting {}", program.path.display());
    // Before any other process can hold the sockets, and on this thread:
    // a shutdown asked for after this (which cancels the upgrade) reaches
    // the supervisor through its channel, so it sees the flag and only
    // closes its fd.
    server.listener_shared.store(true, Relaxed);
    let (cancel, cancelled) = crossbeam_channel::bounded(1);
    let (control, program) = (control.clone(), program.clone());
    let thread = thread::Builder::new()
        .name("vigil-upgrade".into())
        .spawn(move || run(&control, &program, &cancelled))
        .map_err(|err| {
            log::error!("upgrade failed: cannot start its thread: {err}");
            Refusal::NoThread
        })?;
    *state = UpgradeState::Pending { thread, cancel };
    Ok(())
}

/// Cancels the upgrade under way, if any (its new process is stopped).
pub(crate) fn cancel(control: &Control) {
    if let UpgradeState::Pending { cancel, .. } = &*lock(&control.server().upgrade) {
        let _ = cancel.send(());
    }
}

/// The server ends: no upgrade starts from now on, and the one under way,
/// if any, is cancelled and waited for.
pub(crate) fn finish(control: &Control) {
    let state = std::mem::replace(&mut *lock(&control.server().upgrade), UpgradeState::Closed);
    if let UpgradeState::Pending { thread, cancel } = state {
        let _ = cancel.send(());
        let _ = thread.join();
    }
}

/// Runs one upgrade to its end; `cancel` receives when this process is
/// asked to shut down meanwhile.
fn run(control: &Control, program: &Program, cancel: &Receiver<()>) {
    let me = std::process::id();
    let server = control.server();
    let timeout = server.config.upgrade_timeout;
    notify_service_manager(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading",
        sys::monotonic_micros()
    ));
    let (mut child, ready) = match start(control, program) {
        Ok(started) => started,
        Err(err) => {
            let why = format!("cannot start {}: {err}", program.path.display());
            sockets_to_ourselves(control);
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
    let cancelled = || cancel.try_recv().is_ok() || server.is_shutting_down();
    select! {
        recv(ready) -> said => match said {
            // A shutdown that came with it wins.
            Ok(true) if cancelled() => stop_cancelled(&mut child, control),
            Ok(true) => {
                let took = started.elapsed();
                log::info!("upgrade: new process pid={pid} is serving after {took:?}; pid {me} drains and exits");
                notify_service_manager(&format!("MAINPID={pid}\nREADY=1\nSTATUS=serving"));
                control.hand_over(pid);
                // It outlives this process; its exit is for its new
                // parent (systemd, init or a subreaper) to collect.
                drop(child);
                return;
            }
            _ => match wait_for_exit(&mut child, Instant::now() + EXIT_AFTER_CLOSE) {
                Some(status) => {
                    failed(&format!("new process pid={pid} {} before it was ready", exited(status)), me);
                }
                None => {
                    failed(&format!("new process pid={pid} closed its readiness pipe without being ready; stopping it"), me);
                    stop(&mut child, control);
                }
            },
        },
        recv(cancel) -> _ => stop_cancelled(&mut child, control),
        default(deadline.saturating_duration_since(Instant::now())) => {
            failed(&format!("new process pid={pid} was not ready within {timeout:?}; stopping it"), me);
            stop(&mut child, control);
        },
    }
    // Reaped: nobody else holds the sockets now.
    sockets_to_ourselves(control);
}

/// No other process holds the sockets (the new one never started, or
/// has been reaped), unless they were inherited: a shutdown may refuse new
/// clients at once again.
fn sockets_to_ourselves(control: &Control) {
    let server = control.server();
    server.listener_shared.store(server.listener_inherited, Relaxed);
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
    // The reader first: once the child runs, nothing may fail before it is
    // watched (a child nobody watches would serve on, unstopped).
    let (said, ready) = crossbeam_channel::bounded(1);
    thread::Builder::new().name("vigil-upgrade-pipe".into()).spawn(move || {
        let _ = said.send(read_ready_line(std::fs::File::from(read_end)));
    })?;
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
    let child = command.spawn()?;
    // Only the child writes: its exit closes the pipe (and a failed spawn
    // closes it here, which ends the reader).
    drop(write_end);
    Ok((child, ready))
}

/// True once `pipe` carries the ready line; false if it closes first.
fn read_ready_line(mut pipe: std::fs::File) -> bool {
    let mut line = Vec::with_capacity(READY_LINE.len());
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                if line.starts_with(READY_LINE) {
                    return true;
                }
                if line.len() >= READY_LINE.len() {
                    return false;
                }
            }
        }
    }
}

/// A shutdown came first: this process was asked to stop, not to hand over.
fn stop_cancelled(child: &mut Child, control: &Control) {
    log::warn!("upgrade: cancelled by a shutdown; stopping new process pid={}", child.id());
    stop(child, control);
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
