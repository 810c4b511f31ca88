//! The admin plane: metrics, health and recycle commands over HTTP, served
//! by may_minihttp on its own threads, so it answers while every data-plane
//! loop is stuck.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Once;

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

use crate::server::{Control, LoopSnapshot, Snapshot};
use crate::shared::LoopState;
use crate::sys;

/// may coroutine stacks for admin connections: rendering /metrics with
/// serde_json and format! needs more than may's small default.
const ADMIN_STACK_BYTES: usize = 256 * 1024;

/// Starts the admin plane on `addr`; returns the bound address.
pub(crate) fn start(
    addr: SocketAddr,
    token: Option<String>,
    control: Control,
) -> io::Result<SocketAddr> {
    static CONFIGURE_MAY: Once = Once::new();
    CONFIGURE_MAY.call_once(|| {
        // One unpinned worker: the admin plane is lightly loaded and must
        // not compete with the pinned loops for their cores.
        may::config().set_workers(1).set_stack_size(ADMIN_STACK_BYTES);
        may::config().set_worker_pin(false);
    });
    // may_minihttp binds by itself and does not report the address, so a
    // port 0 is resolved here first (a tiny window in which another
    // process could take the port; only port 0 has it).
    let addr = if addr.port() == 0 { TcpListener::bind(addr)?.local_addr()? } else { addr };
    AdminFactory { control, token }.start(addr)?;
    Ok(addr)
}

struct AdminFactory {
    control: Control,
    token: Option<String>,
}

impl HttpServiceFactory for AdminFactory {
    type Service = AdminService;

    /// may_minihttp passes the connection's fd as the id.
    fn new_service(&self, fd: usize) -> AdminService {
        let peer_is_local = i32::try_from(fd)
            .ok()
            .and_then(sys::peer_addr)
            .is_some_and(|peer| peer.ip().is_loopback());
        AdminService { control: self.control.clone(), token: self.token.clone(), peer_is_local }
    }
}

struct AdminService {
    control: Control,
    token: Option<String>,
    peer_is_local: bool,
}

/// An admin answer, before it is written through may_minihttp.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec() }
    }
}

impl HttpService for AdminService {
    fn call(&mut self, req: Request, res: &mut Response) -> io::Result<()> {
        let authorization = req
            .headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned());
        let access = Access {
            peer_is_local: self.peer_is_local,
            token: self.token.as_deref(),
            authorization: authorization.as_deref(),
        };
        let answer = route(req.method(), req.path(), access, &self.control);
        res.status_code(answer.status as usize, crate::http::response::reason(answer.status));
        res.header(match answer.content_type {
            "application/json" => "Content-Type: application/json",
            "text/plain; version=0.0.4; charset=utf-8" => {
                "Content-Type: text/plain; version=0.0.4; charset=utf-8"
            }
            _ => "Content-Type: text/plain; charset=utf-8",
        });
        res.body_vec(answer.body);
        Ok(())
    }
}

/// Who is asking, for the state-changing routes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access<'a> {
    pub(crate) peer_is_local: bool,
    pub(crate) token: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
}

impl Access<'_> {
    /// With a token configured, it is required from everyone; without one,
    /// only loopback peers may change state.
    fn may_change_state(&self) -> bool {
        match self.token {
            Some(token) => self
                .authorization
                .and_then(|value| value.strip_prefix("Bearer "))
                .is_some_and(|sent| constant_time_eq(sent.trim().as_bytes(), token.as_bytes())),
            None => self.peer_is_local,
        }
    }
}

/// Compares without an early exit, so the time taken tells nothing about
/// how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn route(method: &str, path: &str, access: Access<'_>, control: &Control) -> Answer {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read_only = |answer: fn(&Control) -> Answer| {
        if method == "GET" {
            answer(control)
        } else {
            Answer::text(405, "method not allowed: use GET\n")
        }
    };
    match segments.as_slice() {
        ["metrics"] => read_only(|c| Answer {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(&c.snapshot()).into_bytes(),
        }),
        ["loops"] => read_only(|c| Answer {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(&c.snapshot()).unwrap_or_default(),
        }),
        ["healthz"] => read_only(|c| {
            if c.is_healthy() {
                Answer::text(200, "ok\n")
            } else {
                Answer::text(
                    503,
                    "unhealthy: no loop serving, or the abandoned budget is used up\n",
                )
            }
        }),
        ["readyz"] => read_only(|c| {
            if c.is_ready() {
                Answer::text(200, "ready\n")
            } else {
                Answer::text(503, "not ready: shutting down\n")
            }
        }),
        ["loops", "recycle"] | ["loops", _, "recycle"] if method != "POST" => {
            Answer::text(405, "method not allowed: use POST\n")
        }
        ["loops", "recycle"] | ["loops", _, "recycle"] if !access.may_change_state() => {
            Answer::text(403, "forbidden: state-changing routes need loopback or the admin token\n")
        }
        ["loops", "recycle"] => {
            control.recycle_all();
            Answer::text(202, "recycling every loop\n")
        }
        ["loops", slot, "recycle"] => {
            match slot.parse::<usize>().ok().map(|s| control.recycle(s)) {
                Some(Ok(())) => Answer::text(202, &format!("recycling loop {slot}\n")),
                _ => Answer::text(404, &format!("no loop in slot {slot}\n")),
            }
        }
        _ => Answer::text(404, "not found: try /metrics, /loops, /healthz, /readyz\n"),
    }
}

/// Prometheus text exposition format 0.0.4.
pub(crate) fn render_metrics(snapshot: &Snapshot) -> String {
    use std::fmt::Write;
    use LoopState::*;

    type PerLoop = fn(&LoopSnapshot) -> f64;
    let per_loop: [(&str, &str, &str, PerLoop); 10] = [
        ("requests_total", "counter", "Requests answered, per loop slot.", |l| l.requests as f64),
        ("accepted_connections_total", "counter", "Connections accepted, per loop slot.", |l| {
            l.accepted as f64
        }),
        ("open_connections", "gauge", "Connections open now, per loop.", |l| {
            l.open_connections as f64
        }),
        (
            "handler_panics_total",
            "counter",
            "Handler panics answered with 500, per loop slot.",
            |l| l.handler_panics as f64,
        ),
        ("rejected_requests_total", "counter", "Requests refused before the service ran.", |l| {
            l.rejected as f64
        }),
        ("offloaded_requests_total", "counter", "Requests handed to the offload pool.", |l| {
            l.offloaded as f64
        }),
        ("loop_generation", "gauge", "Generation of the current loop of each slot.", |l| {
            f64::from(l.generation)
        }),
        ("arena_allocated_bytes", "gauge", "Bytes allocated in the loop's jemalloc arena.", |l| {
            l.memory.as_ref().map_or(f64::NAN, |m| m.allocated as f64)
        }),
        ("arena_active_bytes", "gauge", "Bytes in active pages of the loop's arena.", |l| {
            l.memory.as_ref().map_or(f64::NAN, |m| m.active as f64)
        }),
        ("arena_resident_bytes", "gauge", "Resident bytes of the loop's arena.", |l| {
            l.memory.as_ref().map_or(f64::NAN, |m| m.resident as f64)
        }),
    ];
    let memory = snapshot.memory.unwrap_or_default();
    let pool = &snapshot.offload;
    let process: [(&str, &str, &str, f64); 15] = [
        (
            "abandoned_threads",
            "gauge",
            "Abandoned loop threads still alive.",
            snapshot.abandoned_alive as f64,
        ),
        (
            "abandoned_threads_max",
            "gauge",
            "Abandoned threads allowed before the process exits.",
            snapshot.max_abandoned as f64,
        ),
        (
            "abandoned_threads_reclaimed_total",
            "counter",
            "Abandoned threads whose handler returned and that exited.",
            snapshot.reclaimed as f64,
        ),
        (
            "restart_intensity_exceeded_total",
            "counter",
            "Times replacements exceeded the restart intensity limit.",
            snapshot.restart_intensity_exceeded as f64,
        ),
        (
            "memory_allocated_bytes",
            "gauge",
            "Bytes allocated, whole process (jemalloc).",
            memory.allocated as f64,
        ),
        (
            "memory_active_bytes",
            "gauge",
            "Bytes in active pages, whole process (jemalloc).",
            memory.active as f64,
        ),
        (
            "memory_resident_bytes",
            "gauge",
            "Resident bytes mapped by jemalloc.",
            memory.resident as f64,
        ),
        ("process_resident_bytes", "gauge", "Resident set size of the process.", memory.rss as f64),
        (
            "offload_queued",
            "gauge",
            "Offloaded jobs waiting for a pool thread.",
            pool.queued as f64,
        ),
        ("offload_running", "gauge", "Offloaded jobs running.", pool.running as f64),
        ("offload_completed_total", "counter", "Offloaded jobs finished.", pool.completed as f64),
        (
            "offload_rejected_total",
            "counter",
            "Offloaded jobs refused with 503 (queue full).",
            pool.rejected as f64,
        ),
        (
            "offload_panics_total",
            "counter",
            "Offloaded jobs that panicked (answered 500).",
            pool.panicked as f64,
        ),
        (
            "ready",
            "gauge",
            "1 while the server accepts traffic.",
            f64::from(u8::from(snapshot.ready)),
        ),
        ("uptime_seconds", "gauge", "Seconds since the server started.", snapshot.uptime_seconds),
    ];

    let mut out = String::with_capacity(8192);
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP vigil_{name} {help}\n# TYPE vigil_{name} {kind}");
    };
    for (name, kind, help, value) in per_loop {
        header(&mut out, name, kind, help);
        for l in &snapshot.loops {
            let _ = writeln!(out, "vigil_{name}{{loop=\"{}\"}} {}", l.slot, value(l));
        }
    }
    header(&mut out, "replacements_total", "counter", "Loops replaced, per slot and reason.");
    for l in &snapshot.loops {
        for (reason, count) in
            [("stalled", l.replaced_stalled), ("died", l.replaced_died), ("recycled", l.recycled)]
        {
            let _ = writeln!(
                out,
                "vigil_replacements_total{{loop=\"{}\",reason=\"{reason}\"}} {count}",
                l.slot
            );
        }
    }
    header(&mut out, "loop_state", "gauge", "1 for the state each slot's current loop is in.");
    for l in &snapshot.loops {
        for (state, name) in [
            (Starting, "starting"),
            (Serving, "serving"),
            (Draining, "draining"),
            (Abandoned, "abandoned"),
            (Exited, "exited"),
        ] {
            let _ = writeln!(
                out,
                "vigil_loop_state{{loop=\"{}\",state=\"{name}\"}} {}",
                l.slot,
                u8::from(l.state == state)
            );
        }
    }
    for (name, kind, help, value) in process {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "vigil_{name} {value}");
    }
    out
}
