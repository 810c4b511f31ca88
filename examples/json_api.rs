//! A JSON API on vigil's app layer: path parameters, per-loop state (no
//! locks), an offloaded route, middleware (request ids, CORS, an access
//! log, a time limit for offloaded work) and per-route metrics.
//!
//! ```text
//! cargo run --release --example json_api
//! curl -s localhost:8080/users/42
//! curl -s -X POST localhost:8080/users -d 'ada'
//! curl -s localhost:8080/reports/2026
//! curl -s localhost:9090/metrics | grep vigil_route_
//! ```

use std::collections::HashMap;
use std::time::Duration;

use vigil::app::access_log::{AccessLog, Format};
use vigil::app::middleware::{Cors, OffloadTimeout, RequestId};
use vigil::app::App;
use vigil::{Config, Request, Response, Server};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Each loop's own users: loops share nothing, so none of this is locked.
/// A real service would keep them in a database; a loop's cache is what
/// belongs here.
struct Users {
    slot: usize,
    names: HashMap<u64, String>,
    next_id: u64,
}

fn show_user(users: &mut Users, req: &Request<'_>, res: &mut Response) {
    let Some(id) = req.param("id").and_then(|id| id.parse::<u64>().ok()) else {
        res.status(400).json(&serde_json::json!({ "error": "the id is a number" }));
        return;
    };
    match users.names.get(&id) {
        Some(name) => res.json(&serde_json::json!({ "id": id, "name": name, "loop": users.slot })),
        None => res.status(404).json(&serde_json::json!({ "error": "no such user", "id": id })),
    };
}

fn add_user(users: &mut Users, req: &Request<'_>, res: &mut Response) {
    let name = String::from_utf8_lossy(req.body()).trim().to_string();
    if name.is_empty() {
        res.status(400).json(&serde_json::json!({ "error": "send a name as the body" }));
        return;
    }
    users.next_id += 1;
    let id = users.next_id;
    users.names.insert(id, name.clone());
    res.status(201)
        .header("Location", format!("/users/{id}"))
        .json(&serde_json::json!({ "id": id, "name": name, "loop": users.slot }));
}

/// Slow work goes to the offload pool: the loop serves its other clients
/// meanwhile. The request id set by the middleware survives it.
fn yearly_report(req: &Request<'_>, res: &mut Response) {
    let year = req.param("year").unwrap_or("?").to_string();
    res.offload(move |res| {
        let total: u64 = (1..=2_000_000u64).map(|n| n % 7).sum();
        res.json(&serde_json::json!({ "year": year, "total": total }));
    });
}

fn main() {
    env_logger::init();
    let app = App::with_state(|slot| Users {
        slot,
        names: HashMap::new(),
        next_id: slot as u64 * 1_000_000,
    })
    .get("/users/{id}", show_user)
    .post("/users", add_user)
    .get("/reports/{year}", yearly_report)
    .middleware(AccessLog::to_stdout(Format::Combined).expect("access log"))
    .middleware(RequestId)
    .middleware(Cors::any_origin())
    .middleware(OffloadTimeout(Duration::from_secs(5)))
    .build()
    .expect("routes are valid");
    let config = Config {
        listen: "127.0.0.1:8080".parse().unwrap(),
        admin: Some("127.0.0.1:9090".parse().unwrap()),
        ..Config::default()
    };
    let handle = Server::new(app).config(config).start().expect("server starts");
    eprintln!("listening on http://{} (admin on 127.0.0.1:9090)", handle.local_addr());
    handle.wait();
}
