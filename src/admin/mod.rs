//! The admin plane: metrics, health and recycle commands over HTTP, on a
//! thread of its own with its own small poll loop, so it answers while every
//! data-plane loop is stuck and cannot be flooded into taking them down.
//!
//! `plane` runs the sockets (connection cap, limits, timeouts, out-of-fd
//! back-off); `routes` decides what each request gets; `metrics` renders
//! the Prometheus page. Requests are parsed by vigil's own HTTP code.

mod metrics;
mod plane;
mod routes;

pub(crate) use plane::MAX_CONNECTIONS;

use std::io;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};

use crate::control::Control;

/// The running admin plane: its address, and how to end it.
#[derive(Debug)]
pub(crate) struct AdminPlane {
    pub(crate) addr: SocketAddr,
    stop: std::sync::Arc<mio::Waker>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The admin plane's listening socket on `addr`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    // The default backlog (128) overflows under a burst, and with
    // syncookies the overflowed clients believe they are connected.
    crate::sys::set_backlog(&listener, plane::ADMIN_BACKLOG)?;
    Ok(listener)
}

/// Serves the admin plane on `listener`, on its own thread.
pub(crate) fn start(
    listener: std::net::TcpListener,
    token: Option<String>,
    control: Control,
) -> io::Result<AdminPlane> {
    let plane = plane::Plane::new(listener, token, control)?;
    let addr = plane.local_addr()?;
    let (stop, stopping) = (plane.waker(), plane.stopping());
    let thread = thread::Builder::new().name("vigil-admin".into()).spawn(move || plane.run())?;
    Ok(AdminPlane { addr, stop, stopping, thread: Some(thread) })
}

impl AdminPlane {
    /// Wakes its poll loop, which then looks at the server's state.
    pub(crate) fn waker(&self) -> std::sync::Arc<mio::Waker> {
        self.stop.clone()
    }
}

impl Drop for AdminPlane {
    fn drop(&mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
