//! Every libc call vigil makes, and so every `unsafe` block outside of
//! allocator statistics (plus two conversions std offers only unchecked
//! or unstable). Each function is small, safe to call, and says why it
//! cannot go through std or mio.

use std::io;
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

pub(crate) mod stack;

/// Turns a negative libc return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every caller passes plain integers, or pointers to live,
        // correctly sized locals or buffers with their true lengths, as the
        // libc prototype requires.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Sends up to `count` bytes of `file` from `*offset` to `socket` without
/// copying them through user space; moves `*offset` past what was sent.
/// `WouldBlock` when the (non-blocking) socket is full.
pub(crate) fn sendfile(
    socket: RawFd,
    file: &std::fs::File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range"))?;
    let sent = syscall!(sendfile(socket, file.as_raw_fd(), &mut off, count))?;
    *offset = off as u64;
    Ok(sent as usize)
}

/// Raises the accept backlog of a listening socket (std listens with 128).
/// Calling `listen` again on a listening socket only updates the backlog.
pub(crate) fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    syscall!(listen(listener.as_raw_fd(), backlog)).map(drop)
}

/// Registers `fd` for readability in the epoll instance of `poll` with
/// `EPOLLEXCLUSIVE`, reporting `token` as the event data.
///
/// mio cannot set `EPOLLEXCLUSIVE` (it must be given when the fd is added),
/// so the shared listener is added here by hand. Level-triggered on purpose:
/// with exclusive wake-ups one loop is woken per readiness change, and level
/// triggering makes sure a connection left in the backlog (a loop stopped
/// after a bounded accept batch) wakes a loop again.
pub(crate) fn epoll_add_exclusive(poll: &mio::Poll, fd: &impl AsFd, token: u64) -> io::Result<()> {
    let mut event =
        libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32, u64: token };
    let (epfd, fd) = (poll.as_raw_fd(), fd.as_fd().as_raw_fd());
    syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event)).map(drop)
}

/// Removes `fd` from the epoll instance of `poll`.
pub(crate) fn epoll_delete(poll: &mio::Poll, fd: &impl AsFd) -> io::Result<()> {
    let mut unused = libc::epoll_event { events: 0, u64: 0 };
    let (epfd, fd) = (poll.as_raw_fd(), fd.as_fd().as_raw_fd());
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

/// `shutdown(fd, SHUT_RD)` on a listening socket: the kernel refuses new
/// connections from then on, and wakes every loop waiting on it.
pub(crate) fn shutdown_read(listener: &TcpListener) -> io::Result<()> {
    syscall!(shutdown(listener.as_raw_fd(), libc::SHUT_RD)).map(drop)
}

/// Takes ownership of `fd`, a listening TCP socket this process inherited
/// (from systemd or from the process it replaces), and marks it
/// close-on-exec so that programs a service runs do not hold it too.
///
/// Checked first: an open fd, a socket, `SOCK_STREAM` over IPv4 or IPv6,
/// listening. Anything else is refused and left alone. The caller must
/// take each inherited fd once, and only fds nothing else in the process
/// owns (the inheritance protocol's contract; duplicates are refused
/// before this is called).
pub(crate) fn adopt_inherited_listener(fd: RawFd) -> io::Result<TcpListener> {
    let refuse = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd}: {why}"));
    if fd < 3 {
        return Err(refuse("0, 1 and 2 are stdio, not sockets"));
    }
    syscall!(fcntl(fd, libc::F_GETFD)).map_err(|err| refuse(&format!("not open ({err})")))?;
    let option = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let value_ptr: *mut libc::c_int = &mut value;
        syscall!(getsockopt(fd, libc::SOL_SOCKET, name, value_ptr.cast(), &mut len))?;
        Ok(value)
    };
    let domain = option(libc::SO_DOMAIN).map_err(|err| refuse(&format!("not a socket ({err})")))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(refuse("not an IPv4 or IPv6 socket"));
    }
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(refuse("not a stream (TCP) socket"));
    }
    if option(libc::SO_ACCEPTCONN)? == 0 {
        return Err(refuse("not listening"));
    }
    syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    // SAFETY: fd is open, a listening TCP socket, and by the caller's
    // contract owned by nothing else in this process.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Takes ownership of `fd`, the write end of a readiness pipe this process
/// inherited, and marks it close-on-exec. Checked to be an open FIFO.
pub(crate) fn adopt_inherited_pipe(fd: RawFd) -> io::Result<OwnedFd> {
    let refuse = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd}: {why}"));
    if fd < 3 {
        return Err(refuse("0, 1 and 2 are stdio, not a readiness pipe"));
    }
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd, &mut stat)).map_err(|err| refuse(&format!("not open ({err})")))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(refuse("not a pipe"));
    }
    syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    // SAFETY: fd is an open pipe that, by the caller's contract, nothing
    // else in this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 just returned both fds; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `command`'s program inherit `fds`, which stay close-on-exec in
/// this process: the flag is cleared in the forked child only, just before
/// it execs, so no other program this process starts meanwhile gets them.
pub(crate) fn inherit_on_exec(command: &mut Command, fds: Vec<RawFd>) {
    let clear_cloexec = move || {
        for &fd in &fds {
            // fcntl is async-signal-safe; nothing here allocates.
            syscall!(fcntl(fd, libc::F_SETFD, 0))?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes only fcntl calls on a
    // vector allocated before the fork, and allocates nothing.
    unsafe { command.pre_exec(clear_cloexec) };
}

/// Sends `signal` to process `pid`. Callers hold the unreaped `Child` of
/// `pid`, so the pid cannot have been reused by another process.
pub(crate) fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    syscall!(kill(pid, signal)).map(drop)
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC=`
/// is read on (std's `Instant` does not expose its value).
pub(crate) fn monotonic_micros() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // CLOCK_MONOTONIC cannot fail on Linux.
    let _ = syscall!(clock_gettime(libc::CLOCK_MONOTONIC, &mut now));
    let (secs, nanos) =
        (u64::try_from(now.tv_sec).unwrap_or(0), u64::try_from(now.tv_nsec).unwrap_or(0));
    secs * 1_000_000 + nanos / 1_000
}

/// A connected socket read and written with the `recvfrom`/`sendto`
/// system calls themselves. libc's `recv` and `send` (which std calls) are
/// pthread cancellation points: each wraps the call in two calls that turn
/// asynchronous cancellation on and off, which vigil, never cancelling a
/// thread, does not need. Measured (make bench-instructions): 89 fewer
/// instructions per keep-alive request (one read and one write).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawSocket(pub(crate) RawFd);

impl RawSocket {
    /// `recvfrom` or `sendto` on this socket with `buf` and `flags`, no
    /// address (NULL, 0: the socket is connected). Every argument is passed
    /// a full register wide, as `syscall`'s varargs are read (glibc and
    /// musl alike).
    fn transfer(
        self,
        call: libc::c_long,
        buf: *const u8,
        len: usize,
        flags: i32,
    ) -> io::Result<usize> {
        let args = [self.0 as libc::c_long, buf as libc::c_long, len as libc::c_long];
        let n =
            syscall!(syscall(call, args[0], args[1], args[2], libc::c_long::from(flags), 0, 0))?;
        Ok(n as usize)
    }
}

impl io::Read for RawSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.transfer(libc::SYS_recvfrom, buf.as_mut_ptr(), buf.len(), 0)
    }
}

impl io::Write for RawSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a peer that went away is an EPIPE, not a SIGPIPE.
        self.transfer(libc::SYS_sendto, buf.as_ptr(), buf.len(), libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The kernel id of the calling thread, for `set_idle_priority`.
pub(crate) fn thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Moves thread `tid` to `SCHED_IDLE`: it then only runs when no other
/// thread wants the CPU, which is all an abandoned, possibly spinning,
/// loop thread deserves.
pub(crate) fn set_idle_priority(tid: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    syscall!(sched_setscheduler(tid, libc::SCHED_IDLE, &param)).map(drop)
}

/// Sets the nice value of thread `tid` (Linux threads have their own): a
/// handed-off thread finishing a long request yields its core to the loop
/// that took its place, and still gets what the core has to spare.
pub(crate) fn set_nice(tid: i32, nice: i32) -> io::Result<()> {
    let who =
        libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    syscall!(setpriority(libc::PRIO_PROCESS, who, nice)).map(drop)
}

/// `struct sched_attr` of `sched_setattr(2)`, as far as version 1 of it.
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks the scheduler for short time slices for the calling thread, at its
/// present (normal) policy and nice value: on Linux 6.12 and later a thread
/// with a shorter slice preempts one with a longer slice when it wakes up,
/// instead of waiting for that one's slice (3 ms by default) to run out.
/// Older kernels accept and ignore it. No privilege is needed: this asks
/// for no more CPU time, only for it sooner.
pub(crate) fn request_short_slices(slice: std::time::Duration) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        // Threads this one spawns (replacement loops) get the usual slice:
        // a custom slice is inherited otherwise.
        flags: libc::SCHED_FLAG_RESET_ON_FORK as u64,
        nice: 0,
        priority: 0,
        runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    let attr: *const SchedAttr = &attr;
    // pid 0: the calling thread.
    syscall!(syscall(libc::SYS_sched_setattr, 0, attr, 0)).map(drop)
}

/// Raises this process's soft limit of open files to its hard limit (a
/// server's connections are files); returns the soft limit now in force.
pub(crate) fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if syscall!(setrlimit(libc::RLIMIT_NOFILE, &raised)).is_ok() {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// How many descriptors this process has open, inherited ones included
/// (a parent that leaks fds takes them out of the budget): the entries of
/// `/proc/self/fd`, less the one that reads it.
pub(crate) fn open_file_count() -> io::Result<u64> {
    let entries = std::fs::read_dir("/proc/self/fd")?.count();
    Ok(u64::try_from(entries).unwrap_or(u64::MAX).saturating_sub(1))
}

/// A read-only private mapping of the whole file at `path`, never unmapped:
/// the images a stack is unwound and symbolized with are kept for the life
/// of the process. Pages are read in as they are used. The file must not
/// be truncated in place while mapped (installs replace files by rename,
/// which leaves the mapped inode intact).
pub(crate) fn map_file_forever(path: &std::path::Path) -> io::Result<&'static [u8]> {
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: a fresh read-only private mapping of an open file; the fd
    // may close after mmap returns.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is len bytes, readable, and never unmapped.
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name only reads system configuration.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
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

/// Writes `items` into the first slots of `slots` and returns those slots,
/// now initialised (as many as there were items, at most `slots.len()`).
///
/// The head memo rebuilds a request's headers into the same uninitialised
/// array httparse writes to; initialising all of it first would cost a
/// 32-byte store per slot on every request. std's
/// `MaybeUninit::slice_assume_init_ref` is not stable yet.
pub(crate) fn fill_uninit<T: Copy>(
    slots: &mut [MaybeUninit<T>],
    items: impl IntoIterator<Item = T>,
) -> &[T] {
    let mut filled = 0;
    for (slot, item) in slots.iter_mut().zip(items) {
        slot.write(item);
        filled += 1;
    }
    let init = &slots[..filled];
    // SAFETY: each of the first `filled` slots was written just above, and
    // `MaybeUninit<T>` has the size, alignment and layout of `T`, so a slice
    // of initialised ones is a valid `[T]`. `T: Copy`, so nothing needs
    // dropping when the slots are reused.
    unsafe { &*(init as *const [MaybeUninit<T>] as *const [T]) }
}

/// `bytes` as text, when they are all ASCII.
///
/// `str::from_utf8` walks short inputs a byte at a time: 118 instructions
/// for the 19-byte header block of `make bench-instructions`, where
/// `is_ascii` reads a word at a time.
pub(crate) fn ascii_str(bytes: &[u8]) -> Option<&str> {
    // SAFETY: ASCII bytes are valid UTF-8, each byte one character.
    bytes.is_ascii().then(|| unsafe { std::str::from_utf8_unchecked(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of(errno: i32) -> IoVerdict {
        sort_io_error(&io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn io_errors_are_sorted_by_what_the_caller_must_do() {
        assert_eq!(verdict_of(libc::EAGAIN), IoVerdict::Wait);
        assert_eq!(verdict_of(libc::EINTR), IoVerdict::Retry);
        for gone in [
            libc::ECONNRESET,
            libc::EPIPE,
            libc::ENOTCONN,
            libc::ECONNABORTED,
            libc::ETIMEDOUT,
            libc::EPROTO,
        ] {
            assert_eq!(verdict_of(gone), IoVerdict::PeerGone, "errno {gone}");
        }
        for out in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(verdict_of(out), IoVerdict::OutOfFds, "errno {out}");
        }
        assert_eq!(verdict_of(libc::EBADF), IoVerdict::Fatal);
        assert_eq!(verdict_of(libc::EINVAL), IoVerdict::Fatal);
    }

    #[test]
    fn fill_uninit_returns_exactly_the_written_slots() {
        let mut slots = [MaybeUninit::<u32>::uninit(); 4];
        assert_eq!(fill_uninit(&mut slots, [7, 8]), [7, 8]);
        assert_eq!(fill_uninit(&mut slots, 1..=9), [1, 2, 3, 4], "capped at the slots");
        assert!(fill_uninit(&mut slots, []).is_empty());
    }

    #[test]
    fn ascii_str_takes_ascii_only() {
        assert_eq!(ascii_str(b"Host: a\r\n"), Some("Host: a\r\n"));
        assert_eq!(ascii_str(b""), Some(""));
        assert_eq!(ascii_str("caf\u{e9}".as_bytes()), None, "valid UTF-8, not ASCII");
        assert_eq!(ascii_str(b"\xff"), None);
    }
}
