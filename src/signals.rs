//! Signals: SIGTERM/SIGINT drain gracefully, a second one stops at once,
//! SIGHUP recycles every loop (a rolling restart with nothing lost).

use std::io;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::Control;

/// Signal handlers, registered but not yet acted on. Register them before
/// the server starts, so that a signal sent as soon as the server listens
/// is not met by the default action (which would kill the process).
#[derive(Debug)]
pub struct SignalWatch {
    signals: Signals,
}

impl SignalWatch {
    /// Registers handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn register() -> io::Result<SignalWatch> {
        Ok(SignalWatch { signals: Signals::new([SIGTERM, SIGINT, SIGHUP])? })
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
                    _ if draining => {
                        log::warn!("signal={signal} again: stopping now");
                        control.stop();
                    }
                    _ => {
                        log::info!(
                            "signal={signal}: graceful shutdown (send it again to stop now)"
                        );
                        draining = true;
                        control.shutdown();
                    }
                }
            }
        })?;
        Ok(())
    }
}
