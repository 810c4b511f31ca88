//! Signals: SIGTERM/SIGINT drain gracefully, a second one stops at once,
//! SIGHUP recycles every loop (a rolling restart with nothing lost), SIGUSR2
//! starts the program again with the listening sockets and drains once the
//! new process serves (an upgrade to a new binary, with nothing lost).

use std::io;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::handover::upgrade::{self, Refusal};
use crate::handover::Program;
use crate::Control;

/// Signal handlers, registered but not yet acted on. Register them before
/// the server starts, so that a signal sent as soon as the server listens
/// is not met by the default action (which would kill the process).
#[derive(Debug)]
pub struct SignalWatch {
    signals: Signals,
    /// How this process was started, read at registration: an upgrade
    /// starts the program at the same path, with the same arguments.
    program: Option<Program>,
}

impl SignalWatch {
    /// Registers handlers for SIGTERM, SIGINT, SIGHUP and SIGUSR2, and
    /// notes the program path and arguments for an upgrade (call it early,
    /// before the working directory changes).
    pub fn register() -> io::Result<SignalWatch> {
        let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])?;
        Ok(SignalWatch { signals, program: Program::of_this_process() })
    }

    /// Acts on signals (including any that came before) for `control`, on
    /// a thread of its own.
    pub fn spawn(mut self, control: Control) -> io::Result<()> {
        thread::Builder::new().name("vigil-signals".into()).spawn(move || {
            let mut draining = false;
            for signal in self.signals.forever() {
                match signal {
                    SIGHUP => {
                        log::info!("signal=SIGHUP: rolling restart of every loop");
                        control.recycle_all();
                    }
                    SIGUSR2 => match &self.program {
                        Some(program) => match upgrade::begin(&control, program) {
                            Ok(()) | Err(Refusal::NoThread) => {}
                            Err(Refusal::InProgress) => {
                                log::warn!("signal=SIGUSR2 ignored: an upgrade is in progress")
                            }
                            Err(Refusal::HandedOver { pid }) => log::warn!(
                                "signal=SIGUSR2 ignored: pid {pid} serves now, this process drains"
                            ),
                            Err(Refusal::ShuttingDown) => {
                                log::warn!("signal=SIGUSR2 ignored: shutting down")
                            }
                        },
                        None => {
                            log::error!("signal=SIGUSR2 ignored: the program's path is unknown")
                        }
                    },
                    _ if draining => {
                        log::warn!("signal={signal} again: stopping now");
                        control.stop();
                    }
                    _ => {
                        log::info!(
                            "signal={signal}: graceful shutdown (send it again to stop now)"
                        );
                        draining = true;
                        // A new process not yet serving is stopped, not
                        // left running beside nobody.
                        upgrade::cancel(&control);
                        control.shutdown();
                    }
                }
            }
        })?;
        Ok(())
    }
}
