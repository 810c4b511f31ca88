//! Validated configuration. The binary's flags and the library builder both
//! end here; `Config::validate` is the one place values are checked.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::http::{Limits, MAX_HEADERS_CAP};

/// Everything a running server needs to know, with production defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one
    /// ([`Control::local_addr`](crate::Control::local_addr) tells which).
    pub listen: SocketAddr,
    /// Event loops, one per core (default: the cores this process may use).
    pub loops: usize,
    /// Pin loop `i` to the `i`-th allowed core.
    pub pin: bool,
    /// What a client may send: head size, header count, body size.
    pub limits: Limits,
    /// Time allowed from the first byte of a request head to its end, and
    /// between reads of a body (past it: 408).
    pub header_timeout: Duration,
    /// Bytes per second a request body must arrive at, on average since the
    /// request started, beyond the header timeout it gets first (408 past
    /// it); 0 turns it off (the header timeout then runs between reads).
    pub min_receive_rate: u64,
    /// An idle keep-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
    /// A streamed response whose producer writes nothing for this long is
    /// cut (the connection closes without the body's end), and a streamed
    /// request body's reader waits this long for the client's next bytes
    /// (then `TimedOut`).
    pub stream_idle_timeout: Duration,
    /// A connection whose client takes none of a streamed response's bytes
    /// for this long is closed.
    pub send_timeout: Duration,
    /// Open connections over all loops; past it new ones get 503 and close.
    pub max_connections: usize,
    /// Open connections from one client address; past it new ones from it
    /// get 503 and close. 0: no cap. (Behind a proxy every client has the
    /// proxy's address.)
    pub max_connections_per_ip: usize,
    /// A busy loop without progress for this long is stalled; zero turns
    /// stall detection off.
    pub stall_timeout: Duration,
    /// A loop busy on one request this long hands its core, its listener
    /// and its idle connections to a fresh loop, and finishes the request
    /// at a lower priority; zero turns handoff off.
    pub handoff_after: Duration,
    /// The nice value a handed-off thread runs at (higher: lower priority).
    pub handoff_nice: i32,
    /// Handed-off threads a slot may have alive at once; past it the slot's
    /// loop is not handed off again until one finishes.
    pub max_handed_off: usize,
    /// How often the supervisor samples heartbeats (default: the handoff
    /// threshold, at least 1 ms; without handoff, the stall timeout / 8, at
    /// least 10 ms).
    pub check_interval: Option<Duration>,
    /// Past this many live abandoned threads the server drains and exits.
    pub max_abandoned: usize,
    /// Restart intensity: more than `restart_limit` replacements within
    /// `restart_window` is logged as an error and counted.
    pub restart_limit: u32,
    /// The window of `restart_limit`.
    pub restart_window: Duration,
    /// How long a recycled loop may take to finish its connections.
    pub drain_timeout: Duration,
    /// How long a graceful shutdown may take before the rest is cut.
    pub shutdown_timeout: Duration,
    /// After a shutdown request, how long the server goes on accepting and
    /// serving as usual while `/readyz` already answers 503: the time a
    /// load balancer or Kubernetes takes to stop sending it new clients.
    /// The drain (and `shutdown_timeout`) starts after it.
    pub shutdown_delay: Duration,
    /// How often the supervisor reads jemalloc's statistics.
    pub mem_interval: Duration,
    /// Log a warning when a loop's arena holds more than this many bytes.
    pub mem_warn: Option<u64>,
    /// Recycle a loop gracefully when its arena holds more than this.
    pub mem_limit: Option<u64>,
    /// Threads of the offload pool (`Response::offload`).
    pub offload_threads: usize,
    /// Jobs the offload pool queues before answering 503.
    pub offload_queue: usize,
    /// How long a new process started by an upgrade (SIGUSR2) has to say it
    /// serves; past it, this one stops it and goes on serving.
    pub upgrade_timeout: Duration,
    /// Address of the admin plane (metrics, health, recycle); off when `None`.
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin plane's state-changing routes; without
    /// it they are allowed from loopback peers only.
    pub admin_token: Option<String>,
    /// Pass `CONNECT` requests to the service. Off, they are answered 501
    /// (RFC 9110 9.3.6): a 2xx to `CONNECT` tells the client a tunnel is
    /// open, which a service that does not tunnel must never say.
    pub allow_connect: bool,
    /// The real-time signal whose handler copies a stalled loop's stack
    /// for its report (`None`: no captures, only what `/proc` tells). One
    /// per process: the first server started installs it.
    pub stack_signal: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            loops: default_loops(),
            pin: true,
            limits: Limits::default(),
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            min_receive_rate: 500,
            max_connections: 25_000,
            max_connections_per_ip: 0,
            stall_timeout: Duration::from_secs(2),
            handoff_after: DEFAULT_HANDOFF_AFTER,
            handoff_nice: 10,
            max_handed_off: 4,
            check_interval: None,
            max_abandoned: 16,
            restart_limit: 10,
            restart_window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            upgrade_timeout: Duration::from_secs(30),
            mem_interval: Duration::from_secs(1),
            mem_warn: None,
            mem_limit: None,
            admin: None,
            admin_token: None,
            allow_connect: false,
            offload_threads: default_loops(),
            offload_queue: 1024,
            stack_signal: Some(default_stack_signal()),
        }
    }
}

/// The stack-capture signal by default: `SIGRTMIN+6`, clear of the few
/// real-time signals libraries commonly take first.
pub fn default_stack_signal() -> i32 {
    libc::SIGRTMIN() + 6
}

/// Parses a stack-capture signal: `off`, `RTMIN+k` (or `SIGRTMIN+k`), or
/// a signal number.
pub fn parse_stack_signal(text: &str) -> Result<Option<i32>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("{text:?} is not a signal: use off, RTMIN+k or a number");
    let rest = text.strip_prefix("SIG").unwrap_or(text);
    if let Some(offset) = rest.strip_prefix("RTMIN") {
        let offset: i32 = match offset.strip_prefix('+') {
            Some(k) => k.parse().map_err(|_| bad())?,
            None if offset.is_empty() => 0,
            None => return Err(bad()),
        };
        return Ok(Some(libc::SIGRTMIN() + offset));
    }
    text.parse().map(Some).map_err(|_| bad())
}

/// The cores this process may run on: its affinity mask, or num_cpus (which
/// also honours cgroup quotas) when the mask cannot be read.
pub fn default_loops() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .unwrap_or_else(num_cpus::get)
        .max(1)
}

/// A configuration value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every value; the error names the setting and the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if let Some(signal) = self.stack_signal {
            let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
            if !(min..=max).contains(&signal) {
                return fail(format!(
                    "stack signal must be a real-time signal ({min}..={max}), not {signal}"
                ));
            }
        }
        if self.loops == 0 || self.loops > 1024 {
            return fail(format!("loops must be between 1 and 1024, not {}", self.loops));
        }
        let l = &self.limits;
        if l.max_head_bytes < 64 || l.max_head_bytes > 1 << 20 {
            return fail(format!(
                "max head bytes must be between 64 B and 1 MiB, not {}",
                l.max_head_bytes
            ));
        }
        if l.max_headers == 0 || l.max_headers > MAX_HEADERS_CAP {
            return fail(format!(
                "max headers must be between 1 and {MAX_HEADERS_CAP}, not {}",
                l.max_headers
            ));
        }
        if l.max_body_bytes > 1 << 40 {
            return fail(format!("max body bytes must be at most 1 TiB, not {}", l.max_body_bytes));
        }
        if self.offload_threads == 0 || self.offload_threads > 4096 {
            return fail(format!(
                "offload threads must be between 1 and 4096, not {}",
                self.offload_threads
            ));
        }
        if self.offload_queue == 0 {
            return fail("offload queue must hold at least 1 job".into());
        }
        if self.max_connections == 0 {
            return fail("max connections must be at least 1".into());
        }
        for (name, value) in [
            ("header timeout", self.header_timeout),
            ("keep-alive timeout", self.keep_alive_timeout),
            ("stream idle timeout", self.stream_idle_timeout),
            ("send timeout", self.send_timeout),
            ("restart window", self.restart_window),
            ("upgrade timeout", self.upgrade_timeout),
            ("memory interval", self.mem_interval),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be more than zero"));
            }
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.len() < 16 || t.contains(char::is_whitespace))
        {
            return fail("admin token must be at least 16 characters, without whitespace".into());
        }
        if let Some(interval) = self.check_interval {
            if interval < Duration::from_millis(1) {
                return fail("check interval must be at least 1ms".into());
            }
        }
        if !self.handoff_after.is_zero() && self.handoff_after < Duration::from_millis(1) {
            return fail("handoff threshold must be 0 (off) or at least 1ms".into());
        }
        if !self.stall_timeout.is_zero()
            && !self.handoff_after.is_zero()
            && self.handoff_after >= self.stall_timeout
        {
            return fail(format!(
                "handoff threshold ({:?}) must be below the stall timeout ({:?})",
                self.handoff_after, self.stall_timeout
            ));
        }
        if !(0..=19).contains(&self.handoff_nice) {
            return fail(format!(
                "handoff nice must be between 0 and 19, not {}",
                self.handoff_nice
            ));
        }
        if self.max_handed_off == 0 {
            return fail(
                "max handed-off threads must be at least 1 (use handoff 0 to turn it off)".into(),
            );
        }
        Ok(())
    }

    /// The supervisor's sampling period.
    ///
    /// The handoff threshold itself: a loop is handed off between 1 and 2
    /// thresholds into its request (the supervisor starts timing when it
    /// first sees the busy word, up to one period late). Sampling faster
    /// would hand off sooner, but each wake-up costs the supervisor about
    /// 30 us of CPU on a virtual machine: at the default 4 ms it uses
    /// under 1% of a core (see BENCHMARKS.md).
    pub fn effective_check_interval(&self) -> Duration {
        self.check_interval.unwrap_or_else(|| {
            let for_stalls = (self.stall_timeout / 8).max(Duration::from_millis(10));
            if self.handoff_after.is_zero() {
                for_stalls
            } else {
                self.handoff_after.max(Duration::from_millis(1)).min(for_stalls)
            }
        })
    }
}

/// The default handoff threshold (see BENCHMARKS.md, the slow mix).
pub(crate) const DEFAULT_HANDOFF_AFTER: Duration = Duration::from_millis(4);

/// Parses `250ms`, `2s`, `1m`, `1h`, `1500us` or a bare number of seconds,
/// up to a year; the error says what is wrong with `text`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(vigil::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(vigil::parse_duration("2 weeks").unwrap_err().contains("unknown unit"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit such as 250ms or 2s")
    })?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use us, ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("invalid duration {text:?}: too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `64MiB`, `1GiB`, `512KiB`, `10MB`, `4k` or a bare number of bytes
/// (units in any case; `kB`, `MB`, `GB`, `TB` are powers of ten).
///
/// # Examples
///
/// ```
/// assert_eq!(vigil::parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(vigil::parse_size("10MB"), Ok(10_000_000));
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| {
        format!("invalid size {text:?}: expected a number of bytes such as 65536 or 64MiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use KiB, MiB, GiB or bytes)"
            ))
        }
    };
    value.checked_mul(scale).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "ms", "2 weeks", "-1s", "1e400s", "abc", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_over_a_year_are_too_long() {
        // 400 digits parse as an infinite f64, which Duration cannot hold.
        let infinite = format!("1{}s", "0".repeat(400));
        for long in ["1000000000s", "99999999h", "8761h", "525601m", infinite.as_str()] {
            let Err(err) = parse_duration(long) else { panic!("{long:?} accepted") };
            assert!(err.ends_with(": too long"), "{long:?}: {err}");
        }
        // The limit itself is fine.
        assert_eq!(parse_duration("8760h"), Ok(Duration::from_secs(365 * 86400)));
        assert_eq!(parse_duration("31536000"), Ok(Duration::from_secs(365 * 86400)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        for bad in ["", "MiB", "1.5GiB", "-1", "64 lightyears", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn check_interval_follows_the_handoff_threshold() {
        let mut config = Config { handoff_after: Duration::from_millis(8), ..Config::default() };
        assert_eq!(config.effective_check_interval(), Duration::from_millis(8));
        config.stall_timeout = Duration::from_millis(400);
        config.handoff_after = Duration::from_millis(300);
        assert_eq!(
            config.effective_check_interval(),
            Duration::from_millis(50),
            "stall / 8 at most"
        );
    }

    #[test]
    fn check_interval_defaults_to_an_eighth_of_the_stall_timeout() {
        let mut config = Config {
            stall_timeout: Duration::from_secs(2),
            handoff_after: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(config.effective_check_interval(), Duration::from_millis(250));
        config.stall_timeout = Duration::from_millis(40);
        assert_eq!(config.effective_check_interval(), Duration::from_millis(10));
    }

    #[test]
    fn validation_names_the_setting() {
        type Change = fn(&mut Config);
        // Each change, and the setting the refusal must name (None: valid,
        // the bound itself).
        let table: &[(Change, Option<&str>)] = &[
            (|c| c.loops = 0, Some("loops")),
            (|c| c.loops = 1025, Some("loops")),
            (|c| c.loops = 1024, None),
            (|c| c.limits.max_head_bytes = 63, Some("max head bytes")),
            (|c| c.limits.max_head_bytes = 64, None),
            (|c| c.limits.max_head_bytes = (1 << 20) + 1, Some("max head bytes")),
            (|c| c.limits.max_headers = 0, Some("max headers")),
            (|c| c.limits.max_headers = MAX_HEADERS_CAP + 1, Some("max headers")),
            (|c| c.limits.max_headers = MAX_HEADERS_CAP, None),
            (|c| c.limits.max_body_bytes = (1 << 40) + 1, Some("max body bytes")),
            (|c| c.limits.max_body_bytes = 0, None),
            (|c| c.offload_threads = 0, Some("offload threads")),
            (|c| c.offload_threads = 4097, Some("offload threads")),
            (|c| c.offload_queue = 0, Some("offload queue")),
            (|c| c.max_connections = 0, Some("max connections")),
            (|c| c.header_timeout = Duration::ZERO, Some("header timeout")),
            (|c| c.keep_alive_timeout = Duration::ZERO, Some("keep-alive timeout")),
            (|c| c.restart_window = Duration::ZERO, Some("restart window")),
            (|c| c.mem_interval = Duration::ZERO, Some("memory interval")),
            // Zero turns stall detection off; it is not an error.
            (|c| c.stall_timeout = Duration::ZERO, None),
            (|c| c.admin_token = Some("a".repeat(15)), Some("admin token")),
            (|c| c.admin_token = Some("0123456789 abcdef".into()), Some("admin token")),
            (|c| c.admin_token = Some("a".repeat(16)), None),
            (|c| c.check_interval = Some(Duration::from_micros(999)), Some("check interval")),
            (|c| c.check_interval = Some(Duration::from_millis(1)), None),
        ];
        assert_eq!(Config::default().validate(), Ok(()));
        for (i, (change, names)) in table.iter().enumerate() {
            let mut config = Config::default();
            change(&mut config);
            match (config.validate(), names) {
                (Ok(()), None) => {}
                (Err(err), Some(name)) => {
                    assert!(err.to_string().starts_with(name), "row {i}: {err}");
                }
                (got, want) => panic!("row {i}: got {got:?}, want a refusal naming {want:?}"),
            }
        }
    }
}
