//! The admin plane: metrics, health and recycle commands over HTTP, served
//! by may_minihttp on its own threads, so it answers while every data-plane
//! loop is stuck.
//!
//! `routes` decides what each request gets; `metrics` renders the
//! Prometheus page.

mod metrics;
mod routes;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Once;

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

use crate::control::Control;
use crate::sys;
use routes::{route, Access};

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
            .and_then(sys::peer_addr_of)
            .is_some_and(|peer| peer.ip().is_loopback());
        AdminService { control: self.control.clone(), token: self.token.clone(), peer_is_local }
    }
}

struct AdminService {
    control: Control,
    token: Option<String>,
    peer_is_local: bool,
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
