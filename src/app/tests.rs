//! The router and chain without sockets: what `build` refuses, `Allow`,
//! and the order middleware runs in. Over real sockets: `tests/app.rs`.

use std::sync::{Arc, Mutex};

use super::*;

fn ok(_req: &Request<'_>, res: &mut Response) {
    res.body_static(b"ok");
}

#[test]
fn conflicting_or_malformed_routes_are_refused_by_build() {
    let refused = |app: App| app.build().expect_err("refused").to_string();
    assert!(refused(App::new().get("/a", ok).get("/a", ok)).contains("routed twice"));
    assert!(
        refused(App::new().get("/users/{id}", ok).get("/users/{name}", ok)).contains("conflict")
    );
    assert!(refused(App::new().get("/{*rest}/x", ok)).contains("GET /{*rest}/x"));
    assert!(refused(App::new().get("no-slash", ok)).contains("starts with /"));
    assert!(refused(App::new().route("GE T", "/a", ok)).contains("token"));
    // The same path with another method is not a conflict.
    assert!(App::new().get("/a", ok).post("/a", ok).build().is_ok());
    assert!(App::new().any("/a", ok).get("/a", ok).build().is_ok(), "any() beside a method");
}

#[test]
fn allow_lists_the_routed_methods_head_with_get_and_options_last() {
    assert_eq!(allow_header(["GET"].into_iter()), "GET, HEAD, OPTIONS");
    assert_eq!(allow_header(["DELETE", "POST"].into_iter()), "POST, DELETE, OPTIONS");
    assert_eq!(allow_header(["PURGE", "GET"].into_iter()), "GET, HEAD, PURGE, OPTIONS");
}

#[test]
fn patterns_match_with_parameters_and_catch_alls() {
    let app = App::new().get("/users/{id}", ok).get("/static/{*path}", ok).build().unwrap();
    assert_eq!(app.matched_pattern("/users/42"), Some("/users/{id}"));
    assert_eq!(app.matched_pattern("/static/css/a.css"), Some("/static/{*path}"));
    assert_eq!(app.matched_pattern("/users"), None);
}

/// Records `name` before and after the rest of the chain.
struct Trace {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Middleware for Trace {
    type State = u32;

    fn state(&self, _slot: usize) -> u32 {
        0
    }

    fn call(&self, calls: &mut u32, req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        *calls += 1;
        self.log.lock().unwrap().push(format!("{} {calls}", self.name));
        next.run(req, res);
        self.log.lock().unwrap().push(format!("{} after", self.name));
    }
}

#[test]
fn middleware_runs_in_order_around_the_handler_with_its_own_state() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler_log = log.clone();
    let app = App::with_state(move |_slot| handler_log.clone())
        .get(
            "/users/{id}",
            |log: &mut Arc<Mutex<Vec<String>>>, req: &Request<'_>, _res: &mut Response| {
                log.lock().unwrap().push(format!("handler {}", req.param("id").unwrap()));
            },
        )
        .middleware(Trace { name: "a", log: log.clone() })
        .middleware(Trace { name: "b", log: log.clone() })
        .build()
        .unwrap();
    let mut service = app.new_service(0);
    let req = Request {
        method: "GET",
        path: "/users/7",
        query: None,
        version: crate::Version::Http11,
        headers: &[],
        body: b"",
        params: None,
        route: None,
        socket: None,
        received: None,
        upload: None,
    };
    service.call(&req, &mut Response::new());
    service.call(&req, &mut Response::new());
    let log = log.lock().unwrap();
    assert_eq!(
        log[..5],
        ["a 1", "b 1", "handler 7", "b after", "a after"].map(String::from),
        "Connect's order: a, b, handler, b, a"
    );
    assert_eq!(log[5], "a 2", "each middleware's state lives in the loop");
}
