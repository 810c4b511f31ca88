//! The `vigil` binary: serves `Hello World\n` (and, with `--demo`, routes
//! that misbehave on purpose) for load tests.

mod demo;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vigil::app::access_log::{AccessLog, Format};
use vigil::app::App;
use vigil::{
    parse_duration, parse_size, Config, Inherited, Limits, Outcome, Request, Response, Server,
    Service, ServiceFactory,
};

// jemalloc because each loop gets an arena of its own, which is how the
// supervisor sees per-loop memory; the system allocator has no such figure.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status when the abandoned-thread budget is used up.
const EXIT_ABANDONED_BUDGET: u8 = 3;

/// A supervised HTTP/1.1 server: one event loop per core on one shared
/// socket, and a supervisor that replaces loops that stall, die or bloat.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about, max_term_width = 100)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "VIGIL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Event loops, one per core [default: the cores this process may use].
    #[arg(long, env = "VIGIL_LOOPS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    loops: Option<u16>,
    /// Do not pin loops to cores.
    #[arg(long, env = "VIGIL_NO_PIN")]
    no_pin: bool,
    /// Largest request head (request line and headers).
    #[arg(long, env = "VIGIL_MAX_HEAD", default_value = "8KiB", value_parser = size)]
    max_head: u64,
    /// Most header fields in a request.
    #[arg(long, env = "VIGIL_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,
    /// Largest request body.
    #[arg(long, env = "VIGIL_MAX_BODY", default_value = "1MiB", value_parser = size)]
    max_body: u64,
    /// Time to receive a request head, and the start of a body's time (then 408).
    #[arg(long, env = "VIGIL_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_timeout: Duration,
    /// A request body must arrive at this many bytes per second on average, after the header timeout (0: off).
    #[arg(long, env = "VIGIL_MIN_RECEIVE_RATE", default_value = "500", value_parser = size)]
    min_receive_rate: u64,
    /// Idle keep-alive connections are closed after this long.
    #[arg(long, env = "VIGIL_KEEP_ALIVE_TIMEOUT", default_value = "60s", value_parser = duration)]
    keep_alive_timeout: Duration,
    /// A streamed response whose producer writes nothing for this long is cut; a streamed
    /// request body's reader waits this long for the client's next bytes.
    #[arg(long, env = "VIGIL_STREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    stream_idle_timeout: Duration,
    /// A client that takes none of a streamed response for this long is disconnected.
    #[arg(long, env = "VIGIL_SEND_TIMEOUT", default_value = "60s", value_parser = duration)]
    send_timeout: Duration,
    /// Open connections over all loops; more get 503.
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS", default_value_t = 25_000)]
    max_connections: usize,
    /// Open connections from one client address (0: no cap); more get 503.
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    max_connections_per_ip: usize,
    /// A busy loop without progress this long is replaced (0 turns detection off).
    #[arg(long, env = "VIGIL_STALL_TIMEOUT", default_value = "2s", value_parser = duration)]
    stall_timeout: Duration,
    /// A loop busy on one request this long hands its core and idle connections to a fresh loop (0: off).
    #[arg(long, env = "VIGIL_HANDOFF_AFTER", default_value = "5ms", value_parser = duration)]
    handoff_after: Duration,
    /// Nice value of a handed-off thread while it finishes its request (0-19).
    #[arg(long, env = "VIGIL_HANDOFF_NICE", default_value_t = 10)]
    handoff_nice: i32,
    /// Handed-off threads a slot may have alive at once.
    #[arg(long, env = "VIGIL_MAX_HANDED_OFF", default_value_t = 4)]
    max_handed_off: usize,
    /// How often heartbeats are sampled [default: handoff-after / 4, at least 1ms; without handoff stall-timeout / 8, at least 10ms].
    #[arg(long, env = "VIGIL_CHECK_INTERVAL", value_parser = duration)]
    check_interval: Option<Duration>,
    /// Live abandoned threads allowed; past it vigil drains and exits with status 3.
    #[arg(long, env = "VIGIL_MAX_ABANDONED", default_value_t = 16)]
    max_abandoned: usize,
    /// Restart intensity: more than this many replacements within --restart-window is an error.
    #[arg(long, env = "VIGIL_RESTART_LIMIT", default_value_t = 10)]
    restart_limit: u32,
    /// Window of --restart-limit.
    #[arg(long, env = "VIGIL_RESTART_WINDOW", default_value = "10s", value_parser = duration)]
    restart_window: Duration,
    /// Time a recycled loop has to finish its connections.
    #[arg(long, env = "VIGIL_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    drain_timeout: Duration,
    /// Time a graceful shutdown (SIGTERM/SIGINT) may take.
    #[arg(long, env = "VIGIL_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    shutdown_timeout: Duration,
    /// On SIGTERM, keep accepting this long with /readyz at 503 before draining (for load balancers).
    #[arg(long, env = "VIGIL_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration)]
    shutdown_delay: Duration,
    /// A new process started by SIGUSR2 must be serving within this, or it is stopped.
    #[arg(long, env = "VIGIL_UPGRADE_TIMEOUT", default_value = "30s", value_parser = duration)]
    upgrade_timeout: Duration,
    /// Write the serving process's pid here (replaced by the new process on an upgrade).
    #[arg(long, env = "VIGIL_PID_FILE")]
    pid_file: Option<std::path::PathBuf>,
    /// How often per-loop memory is read.
    #[arg(long, env = "VIGIL_MEM_INTERVAL", default_value = "1s", value_parser = duration)]
    mem_interval: Duration,
    /// Log a warning when a loop's arena holds more than this (e.g. 64MiB).
    #[arg(long, env = "VIGIL_MEM_WARN", value_parser = size)]
    mem_warn: Option<u64>,
    /// Recycle a loop gracefully when its arena holds more than this.
    #[arg(long, env = "VIGIL_MEM_LIMIT", value_parser = size)]
    mem_limit: Option<u64>,
    /// Threads of the offload pool [default: the cores this process may use].
    #[arg(long, env = "VIGIL_OFFLOAD_THREADS")]
    offload_threads: Option<usize>,
    /// Offloaded jobs queued before new ones are answered 503.
    #[arg(long, env = "VIGIL_OFFLOAD_QUEUE", default_value_t = 1024)]
    offload_queue: usize,
    /// Real-time signal that copies a stalled loop's stack for its report: off, RTMIN+k or a number.
    #[arg(long, env = "VIGIL_STACK_SIGNAL", default_value = "RTMIN+6", value_parser = stack_signal)]
    stack_signal: StackSignal,
    /// Write an access log line per request to this file (appended), or `-` for standard output.
    #[arg(long, env = "VIGIL_ACCESS_LOG")]
    access_log: Option<std::path::PathBuf>,
    /// Access log format: common, combined or json.
    #[arg(long, env = "VIGIL_ACCESS_LOG_FORMAT", default_value = "combined", value_parser = log_format)]
    access_log_format: Format,
    /// Serve the admin plane (/metrics, /loops, /healthz, /readyz, /stalls, recycle) here.
    #[arg(long, env = "VIGIL_ADMIN")]
    admin: Option<SocketAddr>,
    /// Bearer token required for the admin plane's POST routes (otherwise: loopback only).
    #[arg(
        long,
        env = "VIGIL_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// Read the admin token from this file (first line), so it does not show in /proc/PID/cmdline.
    #[arg(long, env = "VIGIL_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Add demo routes: /spin, /block?ms=N, /panic, /alloc?mb=N, /free, /work?ms=N, /work-inline?ms=N, /upload (a streamed body written to a temporary file).
    #[arg(long, env = "VIGIL_DEMO")]
    demo: bool,
    /// Serve the files of this directory (index.html for a directory) instead of the hello world.
    #[arg(long, env = "VIGIL_ROOT", value_name = "DIR")]
    root: Option<std::path::PathBuf>,
    /// Each request spins forever with probability 1/N (e.g. 1/200).
    #[arg(long, env = "VIGIL_CHAOS_STALL", value_parser = chance)]
    chaos_stall: Option<u64>,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text)
}

fn log_format(text: &str) -> Result<Format, String> {
    text.parse()
}

/// `--stack-signal`: a signal number, or `None` for off.
#[derive(Clone, Copy, Debug)]
struct StackSignal(Option<i32>);

fn stack_signal(text: &str) -> Result<StackSignal, String> {
    vigil::parse_stack_signal(text).map(StackSignal)
}

/// `1/N` -> N.
fn chance(text: &str) -> Result<u64, String> {
    let denominator = text
        .strip_prefix("1/")
        .ok_or_else(|| format!("invalid chance {text:?}: expected 1/N, e.g. 1/200"))?;
    match denominator.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid chance {text:?}: N must be a whole number of at least 1")),
    }
}

impl Args {
    /// The token given inline or in a file.
    fn admin_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.admin_token_file else { return Ok(self.admin_token.clone()) };
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read --admin-token-file {}: {err}", path.display()))?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.is_empty() {
            return Err(format!("--admin-token-file {} holds no token", path.display()));
        }
        Ok(Some(token.to_owned()))
    }

    fn config(&self) -> Result<Config, String> {
        let usize_of = |name: &str, value: u64| {
            usize::try_from(value).map_err(|_| format!("{name} {value} is too large"))
        };
        let config = Config {
            listen: self.listen,
            loops: self.loops.map_or_else(vigil::default_loops, usize::from),
            pin: !self.no_pin,
            limits: Limits {
                max_head_bytes: usize_of("--max-head", self.max_head)?,
                max_headers: self.max_headers,
                max_body_bytes: usize_of("--max-body", self.max_body)?,
            },
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            send_timeout: self.send_timeout,
            min_receive_rate: self.min_receive_rate,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            stall_timeout: self.stall_timeout,
            handoff_after: self.handoff_after,
            handoff_nice: self.handoff_nice,
            max_handed_off: self.max_handed_off,
            check_interval: self.check_interval,
            max_abandoned: self.max_abandoned,
            restart_limit: self.restart_limit,
            restart_window: self.restart_window,
            drain_timeout: self.drain_timeout,
            shutdown_timeout: self.shutdown_timeout,
            shutdown_delay: self.shutdown_delay,
            upgrade_timeout: self.upgrade_timeout,
            mem_interval: self.mem_interval,
            mem_warn: self.mem_warn,
            mem_limit: self.mem_limit,
            admin: self.admin,
            admin_token: self.admin_token()?,
            allow_connect: false,
            offload_threads: self.offload_threads.unwrap_or_else(vigil::default_loops),
            offload_queue: self.offload_queue,
            stack_signal: self.stack_signal.0,
        };
        config.validate().map_err(|err| err.to_string())?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    // A panicking handler gets one rate-limited line from vigil, not a
    // report from the standard hook per request.
    vigil::quiet_handler_panics();
    env_logger::Builder::new()
        .parse_env(env_logger::Env::default().default_filter_or("info"))
        .init();
    // First, while this is the only thread: it edits the environment.
    let inherited = match Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(err) => return usage_error(&err.to_string()),
    };
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => return usage_error(&err.to_string()),
    };
    if let Some(dir) = args.pid_file.as_deref().and_then(std::path::Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return usage_error(&format!("--pid-file: no directory {}", dir.display()));
        }
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => return usage_error(&message),
    };
    match run(config, &args, inherited) {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::AbandonedBudgetExceeded) => ExitCode::from(EXIT_ABANDONED_BUDGET),
        Err(RunError::Usage(message)) => usage_error(&message),
        Err(RunError::Start(message)) => {
            eprintln!("vigil: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr and status 2, for anything wrong on the command line.
fn usage_error(message: &str) -> ExitCode {
    let first_line = message.lines().next().unwrap_or(message);
    let first_line = first_line.strip_prefix("error: ").unwrap_or(first_line);
    eprintln!("vigil: {first_line} (see vigil --help)");
    ExitCode::from(2)
}

/// Why `run` failed: a bad argument found late (exit 2), or the server
/// could not start (exit 1).
enum RunError {
    Usage(String),
    Start(String),
}

fn run(config: Config, args: &Args, inherited: Inherited) -> Result<Outcome, RunError> {
    let root = match &args.root {
        Some(dir) => Some(
            vigil::files::StaticDir::new(dir)
                .map_err(|err| RunError::Usage(format!("--root {}: {err}", dir.display())))?,
        ),
        None => None,
    };
    let options = demo::Options { demo: args.demo, chaos_stall: args.chaos_stall, root };
    let signals = vigil::signals::SignalWatch::register()
        .map_err(|err| RunError::Start(format!("cannot watch signals: {err}")))?;
    log::info!("vigil {} pid={}", env!("CARGO_PKG_VERSION"), std::process::id());
    let Some(path) = &args.access_log else {
        let service = move |slot| demo::App::new(slot, options.clone());
        return serve(service, config, args, inherited, signals).map_err(RunError::Start);
    };
    let format = args.access_log_format;
    let log = if path.as_os_str() == "-" {
        AccessLog::to_stdout(format)
    } else {
        AccessLog::to_file(path, format)
    }
    .map_err(|err| RunError::Usage(format!("--access-log {}: {err}", path.display())))?;
    // The same service, behind the router and the access log: every
    // method of every path is a route (so its requests are counted by
    // route, `/` apart from the rest) and answers as without the log.
    let demo_call = |app: &mut demo::App, req: &Request<'_>, res: &mut Response| app.call(req, res);
    let demo = args.demo;
    let mut app = App::with_state(move |slot| demo::App::new(slot, options.clone()));
    if demo {
        app = app.any("/upload", demo_call).with_body(vigil::BodyPolicy::Stream(u64::MAX));
    }
    let app = app
        .any("/", demo_call)
        .any("/{*path}", demo_call)
        .fallback(demo_call)
        .middleware(log)
        .build()
        .map_err(|err| RunError::Start(err.to_string()))?;
    serve(app, config, args, inherited, signals).map_err(RunError::Start)
}

fn serve<F: ServiceFactory>(
    factory: F,
    config: Config,
    args: &Args,
    mut inherited: Inherited,
    signals: vigil::signals::SignalWatch,
) -> Result<Outcome, String> {
    let admin_wanted = config.admin.is_some();
    let mut server = Server::new(factory).config(config);
    if let Some(listener) = inherited.take_http() {
        server = server.listener(listener);
    }
    match inherited.take_admin() {
        Some(listener) if admin_wanted => server = server.admin_listener(listener),
        Some(_) => log::warn!("inherited admin socket closed: --admin is not set"),
        None => {}
    }
    let handle = server.start().map_err(|err| err.to_string())?;
    signals.spawn(handle.control()).map_err(|err| format!("cannot watch signals: {err}"))?;
    inherited.announce_ready();
    // Only once it serves: a new process stopped before that must not
    // have replaced the file naming the process that goes on. A failure
    // now is logged, not fatal: the process this one replaced is draining.
    let pid_file = args
        .pid_file
        .as_deref()
        .and_then(|path| PidFile::write(path).map_err(|err| log::error!("{err}")).ok());
    let outcome = handle.wait();
    drop(pid_file);
    Ok(outcome)
}

/// A file naming the serving process. Written whole (a temporary file
/// renamed over it); removed at exit only if it still names this process,
/// since after an upgrade it names the new one.
struct PidFile {
    path: std::path::PathBuf,
    contents: String,
}

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, String> {
        let contents = format!("{}\n", std::process::id());
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", std::process::id()));
        std::fs::write(&temporary, &contents)
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|err| format!("cannot write --pid-file {}: {err}", path.display()))?;
        Ok(PidFile { path: path.to_owned(), contents })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|now| now == self.contents) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
