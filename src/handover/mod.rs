//! Listening sockets that outlive a process: taken over at start (from
//! systemd's socket activation, or from the vigil process this one
//! replaces) and handed to a new process on an upgrade (`upgrade`).
//!
//! Handing over the *same* socket is what loses nothing: the clients queued
//! in its backlog stay queued, and whichever process accepts next serves
//! them. Opening a second socket on the port instead (`SO_REUSEPORT`) and
//! closing the old one resets every client queued in the old one.
//!
//! # The environment
//!
//! | variable | set by | holds |
//! |---|---|---|
//! | `VIGIL_INHERIT_FDS` | an upgrading vigil | `http:3,admin:4`: name and fd of each socket |
//! | `VIGIL_INHERIT_PARENT` | an upgrading vigil | its pid: the fds are for its child only |
//! | `VIGIL_READY_FD` | an upgrading vigil | a pipe to write `READY` on once serving |
//! | `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` | systemd | sockets from fd 3 on, for pid `LISTEN_PID`, named `http` and `admin` |
//! | `NOTIFY_SOCKET` | systemd | where `READY=1`, `RELOADING=1`, `MAINPID=`, `STOPPING=1` go |
//!
//! A variable meant for another process (a grandchild that inherited the
//! environment) is recognised by the pid and ignored. All but
//! `NOTIFY_SOCKET` are removed from the environment once read, so that
//! programs the service starts do not see them.

pub(crate) mod upgrade;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::sys;

pub(crate) const INHERIT_FDS: &str = "VIGIL_INHERIT_FDS";
pub(crate) const INHERIT_PARENT: &str = "VIGIL_INHERIT_PARENT";
pub(crate) const READY_FD: &str = "VIGIL_READY_FD";
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Set while this process, started by an upgrade, is not yet serving.
static SERVICE_MANAGER_MUTED: AtomicBool = AtomicBool::new(false);

/// systemd passes its sockets from this fd on (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What the readiness pipe carries when the new process serves.
pub(crate) const READY_LINE: &[u8] = b"READY\n";

/// Who handed this process its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// systemd's socket activation (`LISTEN_FDS`).
    Systemd,
    /// The vigil process with this pid, which drains once this one is ready.
    Upgrade {
        /// The process this one replaces.
        parent: u32,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Systemd => f.write_str("systemd"),
            Source::Upgrade { parent } => write!(f, "pid {parent}"),
        }
    }
}

/// The sockets this process was started with, if any.
///
/// # Examples
///
/// ```no_run
/// use vigil::{Inherited, Request, Response, Server};
///
/// let mut inherited = Inherited::from_env().expect("inherited sockets");
/// let mut server = Server::new(|_slot: usize| {
///     |_req: &Request<'_>, res: &mut Response| {
///         res.body_static(b"Hello World\n");
///     }
/// });
/// if let Some(listener) = inherited.take_http() {
///     server = server.listener(listener);
/// }
/// let handle = server.start().expect("start");
/// // Tell systemd, or the process this one replaces, that it serves.
/// inherited.announce_ready();
/// handle.wait();
/// ```
#[derive(Debug, Default)]
pub struct Inherited {
    source: Option<Source>,
    http: Option<TcpListener>,
    admin: Option<TcpListener>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Takes the sockets this process inherited, as the environment
    /// describes them (see the module documentation), and removes those
    /// variables. Call it once, early in `main`, before other threads run
    /// (it changes the environment).
    ///
    /// Nothing inherited is not an error; a description that names fds
    /// that are not listening TCP sockets is.
    pub fn from_env() -> Result<Inherited, InheritError> {
        let read = |name: &str| std::env::var(name).ok();
        let vars = Vars {
            inherit_fds: read(INHERIT_FDS),
            inherit_parent: read(INHERIT_PARENT),
            ready_fd: read(READY_FD),
            listen_fds: read(LISTEN_FDS),
            listen_pid: read(LISTEN_PID),
            listen_fdnames: read(LISTEN_FDNAMES),
        };
        for name in [INHERIT_FDS, INHERIT_PARENT, READY_FD, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES]
        {
            std::env::remove_var(name);
        }
        let plan = vars.plan(std::process::id(), std::os::unix::process::parent_id())?;
        Inherited::adopt(plan)
    }

    fn adopt(plan: Plan) -> Result<Inherited, InheritError> {
        if matches!(plan.source, Some(Source::Upgrade { .. })) {
            // The process this one replaces is systemd's main process until
            // it hands over; what this one would say (STOPPING=1 if it is
            // stopped before it serves) is not the service's state.
            SERVICE_MANAGER_MUTED.store(true, Relaxed);
        }
        let mut inherited = Inherited { source: plan.source, ..Inherited::default() };
        for (name, fd) in plan.sockets {
            let listener = sys::adopt_inherited_listener(fd)
                .map_err(|err| InheritError(format!("inherited socket {name:?}: {err}")))?;
            let addr = listener.local_addr().map_err(|err| InheritError(err.to_string()))?;
            let from = plan.source.map_or_else(String::new, |source| source.to_string());
            log::info!("inherited socket name={name} fd={fd} addr={addr} from {from}");
            match name.as_str() {
                "http" => inherited.http = Some(listener),
                _ => inherited.admin = Some(listener),
            }
        }
        if let Some(fd) = plan.ready_fd {
            let pipe = sys::adopt_inherited_pipe(fd)
                .map_err(|err| InheritError(format!("{READY_FD}: {err}")))?;
            inherited.ready = Some(pipe);
        }
        Ok(inherited)
    }

    /// Who handed the sockets over, if anyone did.
    pub fn source(&self) -> Option<Source> {
        self.source
    }

    /// The data plane's socket (named `http`), to give
    /// [`Server::listener`](crate::Server::listener).
    pub fn take_http(&mut self) -> Option<TcpListener> {
        self.http.take()
    }

    /// The admin plane's socket (named `admin`), to give
    /// [`Server::admin_listener`](crate::Server::admin_listener).
    pub fn take_admin(&mut self) -> Option<TcpListener> {
        self.admin.take()
    }

    /// Says that this process serves: on the readiness pipe of the process
    /// it replaces (which then drains and exits), or else `READY=1` to
    /// systemd (when `NOTIFY_SOCKET` is set). Call it once the server has
    /// started.
    pub fn announce_ready(&mut self) {
        match self.ready.take() {
            Some(pipe) => match std::fs::File::from(pipe).write_all(READY_LINE) {
                // It hands MAINPID over to this process.
                Ok(()) => SERVICE_MANAGER_MUTED.store(false, Relaxed),
                // It is gone (killed): this process serves, alone.
                Err(err) => {
                    log::warn!("cannot tell the process this one replaces that it serves: {err}")
                }
            },
            // The upgrading process tells systemd, with the new MAINPID.
            None => notify_service_manager("READY=1"),
        }
    }
}

/// The environment describes inherited sockets that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InheritError(String);

impl fmt::Display for InheritError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InheritError {}

/// The variables `Inherited::from_env` reads.
#[derive(Debug, Default)]
struct Vars {
    inherit_fds: Option<String>,
    inherit_parent: Option<String>,
    ready_fd: Option<String>,
    listen_fds: Option<String>,
    listen_pid: Option<String>,
    listen_fdnames: Option<String>,
}

/// Which fds to take, read from `Vars`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    source: Option<Source>,
    sockets: Vec<(String, RawFd)>,
    ready_fd: Option<RawFd>,
}

impl Vars {
    /// Which fds are this process's (pid `me`, parent `parent`).
    fn plan(&self, me: u32, parent: u32) -> Result<Plan, InheritError> {
        let fail = |msg: String| Err(InheritError(msg));
        if let Some(list) = &self.inherit_fds {
            let Some(from) = self.inherit_parent.as_deref() else {
                return fail(format!("{INHERIT_FDS} is set without {INHERIT_PARENT}"));
            };
            let from: u32 = match from.parse() {
                Ok(pid) => pid,
                Err(_) => return fail(format!("{INHERIT_PARENT}={from:?} is not a pid")),
            };
            if from == parent {
                let sockets = parse_named_fds(list)?;
                let ready_fd = match self.ready_fd.as_deref().map(str::parse::<RawFd>) {
                    None => None,
                    Some(Ok(fd)) if !sockets.iter().any(|(_, s)| *s == fd) => Some(fd),
                    Some(_) => return fail(format!("{READY_FD} is not a free fd number")),
                };
                return Ok(Plan {
                    source: Some(Source::Upgrade { parent: from }),
                    sockets,
                    ready_fd,
                });
            }
            log::debug!("{INHERIT_FDS} is for a child of pid {from}, not of {parent}: ignored");
        }
        let Some(count) = &self.listen_fds else { return Ok(Plan::default()) };
        if self.listen_pid.as_deref().and_then(|pid| pid.parse::<u32>().ok()) != Some(me) {
            log::debug!("{LISTEN_FDS} is for another process ({LISTEN_PID} is not {me}): ignored");
            return Ok(Plan::default());
        }
        let count: RawFd = match count.parse() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => return fail(format!("{LISTEN_FDS}={count:?}: expected 1 to 64 sockets")),
        };
        let names: Vec<&str> = match &self.listen_fdnames {
            Some(names) => names.split(':').collect(),
            None => Vec::new(),
        };
        let sockets = name_systemd_sockets(count, &names)?;
        Ok(Plan { source: Some(Source::Systemd), sockets, ready_fd: None })
    }
}

/// `http:3,admin:4` -> `[("http", 3), ("admin", 4)]`.
fn parse_named_fds(list: &str) -> Result<Vec<(String, RawFd)>, InheritError> {
    let mut sockets: Vec<(String, RawFd)> = Vec::new();
    for item in list.split(',').filter(|item| !item.is_empty()) {
        let parsed = item.split_once(':').and_then(|(name, fd)| Some((name, fd.parse().ok()?)));
        let Some((name, fd)) = parsed.filter(|(name, _)| *name == "http" || *name == "admin")
        else {
            return Err(InheritError(format!(
                "{INHERIT_FDS}: {item:?} is not http:FD or admin:FD"
            )));
        };
        if sockets.iter().any(|(n, f)| n == name || *f == fd) {
            return Err(InheritError(format!("{INHERIT_FDS}: {item:?} is given twice")));
        }
        sockets.push((name.to_owned(), fd));
    }
    Ok(sockets)
}

/// systemd's sockets `3..3+count`, by `LISTEN_FDNAMES` (`FileDescriptorName=`
/// in the socket unit): `http` and `admin`. A single socket under another
/// name (systemd's default is the unit's name) is the data plane's.
fn name_systemd_sockets(
    count: RawFd,
    names: &[&str],
) -> Result<Vec<(String, RawFd)>, InheritError> {
    let fds = LISTEN_FDS_START..LISTEN_FDS_START + count;
    if count == 1 && names.first().map_or(true, |name| *name != "admin") {
        return Ok(vec![("http".to_owned(), LISTEN_FDS_START)]);
    }
    let mut sockets: Vec<(String, RawFd)> = Vec::new();
    for (fd, name) in fds.zip(names.iter().copied().chain(std::iter::repeat(""))) {
        match name {
            "http" | "admin" if sockets.iter().all(|(n, _)| n != name) => {
                sockets.push((name.to_owned(), fd))
            }
            _ => {
                return Err(InheritError(format!(
                    "{LISTEN_FDS}={count} with {LISTEN_FDNAMES}={:?}: name the sockets http and admin, once each (FileDescriptorName= in the socket units)",
                    names.join(":")
                )))
            }
        }
    }
    Ok(sockets)
}

/// Sends `state` (`READY=1`, `STOPPING=1`...) to systemd, when this
/// process runs under it with `Type=notify` (`NOTIFY_SOCKET` is set); does
/// nothing otherwise. A failure is logged: it never stops the server.
pub(crate) fn notify_service_manager(state: &str) {
    if SERVICE_MANAGER_MUTED.load(Relaxed) {
        return;
    }
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else { return };
    if let Err(err) = send_notification(&target, state) {
        log::warn!("cannot notify systemd at {NOTIFY_SOCKET}={target:?} of {state:?}: {err}");
    }
}

fn send_notification(target: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target);
    match bytes.strip_prefix(b"@") {
        // An abstract socket address (Linux).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), Path::new(target))?;
        }
    }
    Ok(())
}

/// The program to start on an upgrade: the path this process was started
/// by, made absolute against the directory it started in, *not* resolved
/// to a file (`/proc/self/exe` would name the old binary, deleted once an
/// install renames the new one into place, and a symlink switched to a
/// new release must be followed).
pub(crate) fn program_path(
    argv0: &OsStr,
    start_dir: &Path,
    search_path: Option<&OsStr>,
) -> Option<PathBuf> {
    let argv0 = Path::new(argv0);
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if std::os::unix::ffi::OsStrExt::as_bytes(argv0.as_os_str()).contains(&b'/') {
        // `/srv/./vigil` -> `/srv/vigil` (`..` is left: it may cross a symlink).
        return Some(start_dir.join(argv0).components().collect());
    }
    // A bare name: found on PATH, as the shell found it.
    std::env::split_paths(search_path?)
        .map(|dir| start_dir.join(dir).join(argv0))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How this process was started: enough to start the next version the
/// same way.
#[derive(Clone, Debug)]
pub(crate) struct Program {
    pub(crate) path: PathBuf,
    pub(crate) args: Vec<OsString>,
}

impl Program {
    /// Read at start, before anything can change the working directory.
    pub(crate) fn of_this_process() -> Option<Program> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next()?;
        let start_dir = std::env::current_dir().ok()?;
        let path = program_path(&argv0, &start_dir, std::env::var_os("PATH").as_deref())
            .or_else(|| std::env::current_exe().ok())?;
        Some(Program { path, args: argv.collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(inherit: Option<&str>, parent: Option<&str>, ready: Option<&str>) -> Vars {
        Vars {
            inherit_fds: inherit.map(str::to_owned),
            inherit_parent: parent.map(str::to_owned),
            ready_fd: ready.map(str::to_owned),
            ..Vars::default()
        }
    }

    fn systemd(count: &str, pid: &str, names: Option<&str>) -> Vars {
        Vars {
            listen_fds: Some(count.to_owned()),
            listen_pid: Some(pid.to_owned()),
            listen_fdnames: names.map(str::to_owned),
            ..Vars::default()
        }
    }

    #[test]
    fn an_upgrade_names_its_fds_for_its_own_child_only() {
        let plan = vars(Some("http:5,admin:6"), Some("100"), Some("7")).plan(200, 100).unwrap();
        assert_eq!(plan.source, Some(Source::Upgrade { parent: 100 }));
        assert_eq!(plan.sockets, [("http".to_owned(), 5), ("admin".to_owned(), 6)]);
        assert_eq!(plan.ready_fd, Some(7));
        // A grandchild that inherited the environment takes nothing.
        let grandchild = vars(Some("http:5"), Some("100"), Some("7")).plan(300, 200).unwrap();
        assert_eq!(grandchild, Plan::default());
    }

    #[test]
    fn malformed_upgrade_variables_are_refused() {
        for (list, parent, ready) in [
            ("http:5", None, None),
            ("http:5", Some("x"), None),
            ("http", Some("1"), None),
            ("http:five", Some("1"), None),
            ("web:5", Some("1"), None),
            ("http:5,http:6", Some("1"), None),
            ("http:5,admin:5", Some("1"), None),
            ("http:5", Some("1"), Some("5")),
            ("http:5", Some("1"), Some("seven")),
        ] {
            let err = vars(Some(list), parent, ready).plan(2, 1);
            assert!(err.is_err(), "{list:?} {parent:?} {ready:?} should be refused");
        }
    }

    #[test]
    fn systemd_sockets_by_name_for_this_pid() {
        let plan = systemd("2", "42", Some("admin:http")).plan(42, 1).unwrap();
        assert_eq!(plan.source, Some(Source::Systemd));
        assert_eq!(plan.sockets, [("admin".to_owned(), 3), ("http".to_owned(), 4)]);
        // One socket under the unit's default name is the data plane's.
        let single = systemd("1", "42", Some("vigil.socket")).plan(42, 1).unwrap();
        assert_eq!(single.sockets, [("http".to_owned(), 3)]);
        let unnamed = systemd("1", "42", None).plan(42, 1).unwrap();
        assert_eq!(unnamed.sockets, [("http".to_owned(), 3)]);
        // Meant for another process.
        assert_eq!(systemd("1", "43", None).plan(42, 1).unwrap(), Plan::default());
    }

    #[test]
    fn ambiguous_systemd_sockets_are_refused() {
        for (count, names) in [
            ("2", Some("a:b")),
            ("2", None),
            ("2", Some("http:http")),
            ("3", Some("http:admin:x")),
            ("0", None),
            ("lots", None),
        ] {
            assert!(systemd(count, "9", names).plan(9, 1).is_err(), "{count} {names:?}");
        }
        // A lone admin socket with no data plane socket is not guessed at.
        let admin_only = systemd("1", "9", Some("admin")).plan(9, 1).unwrap();
        assert_eq!(admin_only.sockets, [("admin".to_owned(), 3)]);
    }

    #[test]
    fn the_program_is_the_path_it_was_started_by() {
        let start = Path::new("/srv/app");
        assert_eq!(
            program_path(OsStr::new("./bin/vigil"), start, None),
            Some(PathBuf::from("/srv/app/bin/vigil"))
        );
        assert_eq!(
            program_path(OsStr::new("/usr/local/bin/vigil"), start, None),
            Some(PathBuf::from("/usr/local/bin/vigil"))
        );
        // A bare name is looked up on PATH; `sh` is on any PATH here.
        let found = program_path(OsStr::new("sh"), start, Some(OsStr::new("/nowhere:/bin")));
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
        assert_eq!(program_path(OsStr::new("sh"), start, Some(OsStr::new("/nowhere"))), None);
        assert_eq!(program_path(OsStr::new(""), start, None), None);
    }

    #[test]
    fn notifications_reach_the_socket_named_by_the_path() {
        let dir = std::env::temp_dir().join(format!("vigil-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_notification(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
