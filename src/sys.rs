//! Every libc call vigil makes, and so every `unsafe` block outside of
//! allocator statistics. Each function is small, safe to call, and says why
//! it cannot go through std or mio.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turns a negative libc return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every caller passes plain integers or pointers to live,
        // correctly sized locals, as the libc prototype requires.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Raises the accept backlog of a listening socket (std listens with 128).
/// Calling `listen` again on a listening socket only updates the backlog.
pub(crate) fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    syscall!(listen(listener.as_raw_fd(), backlog)).map(drop)
}

/// Registers `fd` for readability in the epoll instance `epfd` with
/// `EPOLLEXCLUSIVE`, reporting `token` as the event data.
///
/// mio cannot set `EPOLLEXCLUSIVE` (it must be given when the fd is added),
/// so the shared listener is added here by hand. Level-triggered on purpose:
/// with exclusive wake-ups one loop is woken per readiness change, and level
/// triggering makes sure a connection left in the backlog (a loop stopped
/// after a bounded accept batch) wakes a loop again.
#[cfg(target_os = "linux")]
pub(crate) fn epoll_add_exclusive(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event =
        libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32, u64: token };
    syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event)).map(drop)
}

/// Removes `fd` from the epoll instance `epfd`.
#[cfg(target_os = "linux")]
pub(crate) fn epoll_delete(epfd: RawFd, fd: RawFd) -> io::Result<()> {
    let mut unused = libc::epoll_event { events: 0, u64: 0 };
    syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut unused)).map(drop)
}

/// Accepts one connection, non-blocking and close-on-exec in the same call
/// (std's accept needs a second syscall to clear blocking mode).
pub(crate) fn accept(listener: &TcpListener) -> io::Result<std::net::TcpStream> {
    let fd = syscall!(accept4(
        listener.as_raw_fd(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
    ))?;
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
}

/// A close-on-exec duplicate of a socket the caller does not own.
///
/// The supervisor takes the connections of a stalled loop over this way.
/// The caller must hold the loop's fd registry lock, under which the loop
/// closes its fds, so `fd` cannot be closed and reused meanwhile.
pub(crate) fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    let copy = syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0))?;
    // SAFETY: fcntl just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `shutdown(SHUT_RDWR)`: the peer sees the connection end at once, even
/// while other fds (a stuck loop's) still refer to the socket.
pub(crate) fn shutdown_both(fd: &OwnedFd) -> io::Result<()> {
    syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_RDWR)).map(drop)
}

/// `shutdown(fd, SHUT_RD)` on a listening socket: the kernel refuses new
/// connections from then on, and wakes every loop waiting on it.
pub(crate) fn shutdown_read(fd: RawFd) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_RD)).map(drop)
}

/// The kernel id of the calling thread, for `set_idle_priority`.
pub(crate) fn thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Moves thread `tid` to `SCHED_IDLE`: it then only runs when no other
/// thread wants the CPU, which is all an abandoned, possibly spinning,
/// loop thread deserves.
#[cfg(target_os = "linux")]
pub(crate) fn set_idle_priority(tid: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    syscall!(sched_setscheduler(tid, libc::SCHED_IDLE, &param)).map(drop)
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name only reads system configuration.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// The peer of a connected socket the caller does not own (may_minihttp
/// hands the admin plane only the fd of a connection).
pub(crate) fn peer_addr(fd: RawFd) -> Option<std::net::SocketAddr> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd belongs to a live connection for the whole call (its
    // owner is blocked calling us), and ManuallyDrop keeps it open.
    let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    stream.peer_addr().ok()
}

/// The error of a socket after a failed non-blocking operation is sorted
/// here, once, for the whole crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoVerdict {
    /// Nothing to do now; wait for readiness.
    Wait,
    /// Interrupted by a signal: try again at once.
    Retry,
    /// The peer went away (reset, broken pipe...): close quietly.
    PeerGone,
    /// Out of file descriptors: stop accepting for a moment.
    OutOfFds,
    /// Anything else: log and close.
    Fatal,
}

pub(crate) fn sort_io_error(err: &io::Error) -> IoVerdict {
    use io::ErrorKind::*;
    match err.kind() {
        WouldBlock => IoVerdict::Wait,
        Interrupted => IoVerdict::Retry,
        ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof => {
            IoVerdict::PeerGone
        }
        _ => match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => IoVerdict::OutOfFds,
            // A connection reset before it was accepted, or a protocol error
            // on it, is the client's loss, not the listener's.
            Some(libc::ECONNABORTED | libc::EPROTO | libc::ETIMEDOUT) => IoVerdict::PeerGone,
            _ => IoVerdict::Fatal,
        },
    }
}
