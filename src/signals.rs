//! Signals: SIGTERM/SIGINT drain gracefully, a second one stops at once,
//! SIGHUP recycles every loop (a rolling restart with nothing lost).

use std::io;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::Control;

/// Handles SIGTERM, SIGINT and SIGHUP for `control` on a thread of its own.
pub fn install(control: Control) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    thread::Builder::new().name("vigil-signals".into()).spawn(move || {
        let mut draining = false;
        for signal in signals.forever() {
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
                    log::info!("signal={signal}: graceful shutdown (send it again to stop now)");
                    draining = true;
                    control.shutdown();
                }
            }
        }
    })?;
    Ok(())
}
