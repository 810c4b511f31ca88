//! The app layer over real sockets: routing answers (405 with `Allow`,
//! HEAD, OPTIONS, 404), middleware order and short-circuits, CORS, request
//! ids that survive offloading, the access log (real status and bytes, and
//! a writer that never drains), offload timeouts and per-route metrics.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use vigil::app::access_log::{AccessLog, Format};
use vigil::app::middleware::{Cors, OffloadTimeout, RequestId};
use vigil::app::{App, AppFactory, Next};
use vigil::{Request, Response, ServerHandle};

use crate::util::{self, Client, Gate, OpenOnDrop};

fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
}

fn send(server: &ServerHandle, method: &str, path: &str, extra: &str) -> util::Reply {
    let mut client = Client::new(server.local_addr());
    client.send(&request(method, path, extra));
    client.reply_to(method).expect("a reply")
}

fn list_items(_req: &Request<'_>, res: &mut Response) {
    res.header("Content-Type", "text/plain").body_static(b"items\n");
}

fn add_item(_req: &Request<'_>, res: &mut Response) {
    res.status(201).body_static(b"added\n");
}

fn show_user(_req: &Request<'_>, res: &mut Response) {
    let id = format!("{}|{}", req_param(_req, false), req_param(_req, true));
    res.body(id);
}

fn req_param(req: &Request<'_>, decoded: bool) -> String {
    if decoded {
        req.param_decoded("id").unwrap_or_default().into_owned()
    } else {
        req.param("id").unwrap_or_default().to_string()
    }
}

fn start(app: AppFactory<impl Sized + 'static>) -> ServerHandle {
    util::start(util::config(1), app)
}

#[test]
fn routes_answer_405_with_allow_head_options_and_404() {
    let app = App::new()
        .get("/items", list_items)
        .post("/items", add_item)
        .get("/users/{id}", show_user)
        .build()
        .unwrap();
    let server = start(app);
    assert_eq!(send(&server, "GET", "/items", "").text(), "items\n");
    assert_eq!(send(&server, "POST", "/items", "Content-Length: 0\r\n").status, 201);
    let refused = send(&server, "DELETE", "/items", "");
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    let options = send(&server, "OPTIONS", "/items", "");
    assert_eq!((options.status, options.header("allow")), (204, Some("GET, HEAD, POST, OPTIONS")));
    assert_eq!(send(&server, "GET", "/nothing/here", "").status, 404);
    assert_eq!(send(&server, "GET", "/users/a%20b", "").text(), "a%20b|a b");
}

#[test]
fn head_on_a_routed_get_is_framed_as_get_without_a_body_under_pipelining() {
    let server = start(App::new().get("/items", list_items).build().unwrap());
    let mut client = Client::new(server.local_addr());
    let mut pipelined = request("HEAD", "/items", "");
    pipelined.extend(request("GET", "/items", ""));
    pipelined.extend(request("HEAD", "/items", ""));
    client.send(&pipelined);
    let head = client.reply_to("HEAD").unwrap();
    assert_eq!((head.status, head.header("content-length")), (200, Some("6")));
    assert!(head.body.is_empty());
    // Were a body sent for HEAD, it would be read here as the next reply.
    assert_eq!(client.reply_to("GET").unwrap().text(), "items\n");
    assert!(client.reply_to("HEAD").unwrap().body.is_empty());
}

/// Appends its name to `X-Trace` before and after the rest of the chain.
fn tracer(name: &'static str) -> impl Fn(&Request<'_>, &mut Response, Next<'_>) + Send + Sync {
    move |req, res, next| {
        res.header("X-Trace", name);
        next.run(req, res);
        res.header("X-Trace", name);
    }
}

#[test]
fn middleware_runs_a_b_handler_b_a_and_may_answer_before_the_handler() {
    let handled = Arc::new(AtomicUsize::new(0));
    let counted = handled.clone();
    let app = App::new()
        .get("/secret", move |_req: &Request<'_>, res: &mut Response| {
            counted.fetch_add(1, Ordering::Relaxed);
            res.header("X-Trace", "handler").body_static(b"secret\n");
        })
        .wrap(tracer("a"))
        .wrap(tracer("b"))
        .wrap(|req: &Request<'_>, res: &mut Response, next: Next<'_>| {
            if req.header("Authorization") != Some(b"Bearer letmein") {
                // next is not called: the chain ends here.
                res.status(401).header("WWW-Authenticate", "Bearer").body_static(b"401\n");
                return;
            }
            next.run(req, res);
        })
        .build()
        .unwrap();
    let server = start(app);
    let refused = send(&server, "GET", "/secret", "");
    assert_eq!(refused.status, 401);
    assert_eq!(handled.load(Ordering::Relaxed), 0, "the handler never ran");
    let allowed = send(&server, "GET", "/secret", "Authorization: Bearer letmein\r\n");
    assert_eq!(allowed.status, 200);
    let trace: Vec<&str> =
        allowed.headers.iter().filter(|(n, _)| n == "X-Trace").map(|(_, v)| v.as_str()).collect();
    assert_eq!(trace, ["a", "b", "handler", "b", "a"]);
    assert_eq!(handled.load(Ordering::Relaxed), 1);
}

#[test]
fn a_cors_preflight_is_answered_and_only_allowed_origins_are_marked() {
    let app = App::new()
        .post("/items", add_item)
        .get("/items", list_items)
        .middleware(Cors::origins(["https://app.example"]))
        .build()
        .unwrap();
    let server = start(app);
    let preflight = send(
        &server,
        "OPTIONS",
        "/items",
        "Origin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\n",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(preflight.header("access-control-allow-methods").unwrap().contains("PUT"));
    assert_eq!(preflight.header("allow"), None, "answered by CORS, not the router");
    let simple = send(&server, "GET", "/items", "Origin: https://app.example\r\n");
    assert_eq!(simple.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(simple.header("vary"), Some("Origin"));
    let stranger = send(&server, "GET", "/items", "Origin: https://evil.example\r\n");
    assert_eq!((stranger.status, stranger.header("access-control-allow-origin")), (200, None));
    // Without an Origin too: a shared cache must not reuse it for one.
    assert_eq!(send(&server, "GET", "/items", "").header("vary"), Some("Origin"));
}

/// A sink that hands each write to a channel.
struct Lines(Sender<Vec<u8>>);

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(bytes.to_vec());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn next_json_line(lines: &Receiver<Vec<u8>>) -> serde_json::Value {
    let chunk = lines.recv_timeout(util::IO_TIMEOUT).expect("a log line");
    let text = String::from_utf8(chunk).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

#[test]
fn the_access_log_has_the_real_status_and_bytes_of_offloaded_work_and_its_request_id() {
    let (sink, lines) = crossbeam_channel::unbounded();
    let log = AccessLog::to_writer(Lines(sink), Format::Json, 64).unwrap();
    let app = App::new()
        .get("/report/{year}", |req: &Request<'_>, res: &mut Response| {
            let year = req.param("year").unwrap_or("?").to_string();
            res.offload(move |res| {
                res.status(201).body(format!("report {year}\n"));
            });
        })
        .middleware(log)
        .middleware(RequestId)
        .build()
        .unwrap();
    let server = start(app);
    let reply = send(&server, "GET", "/report/2026?full=1", "");
    assert_eq!((reply.status, reply.text().as_str()), (201, "report 2026\n"));
    let id = reply.header("x-request-id").expect("the request id survives the offload");
    let line = next_json_line(&lines);
    assert_eq!(line["status"], 201, "{line}");
    assert_eq!(line["bytes"], 12);
    assert_eq!(line["target"], "/report/2026?full=1");
    assert_eq!(line["route"], "/report/{year}");
    assert_eq!(line["request_id"], id);
    assert_eq!(line["completed"], true);
    assert_eq!(line["remote"], "127.0.0.1");
    // A request id the client chose is kept.
    let kept = send(&server, "GET", "/report/1", "X-Request-Id: trace-42\r\n");
    assert_eq!(kept.header("x-request-id"), Some("trace-42"));
    assert_eq!(next_json_line(&lines)["request_id"], "trace-42");
}

/// A sink whose first flush blocks until the test opens its gate.
#[derive(Clone, Default)]
struct Stuck(Gate);

impl Write for Stuck {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.wait();
        Ok(())
    }
}

/// The value of sample `name` (with its labels, if any) on a page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn metric(page: &str, name: &str) -> f64 {
    sample(page, name).unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

fn scrape(server: &ServerHandle) -> String {
    let admin = server.admin_addr().expect("admin plane");
    util::get(admin, "/metrics").unwrap().text()
}

#[test]
fn a_log_writer_that_never_drains_drops_lines_and_never_holds_up_the_loop() {
    let stuck = Stuck::default();
    let log = AccessLog::to_writer(stuck.clone(), Format::Common, 2).unwrap();
    let app = App::new().get("/items", list_items).middleware(log).build().unwrap();
    let mut config = util::config(1);
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    let server = util::start(config, app);
    // Declared after the server, so dropped first: the server's drop
    // waits for the writer, which must be let go even if an assertion fails.
    let _release = OpenOnDrop(stuck.0.clone());
    let mut client = Client::new(server.local_addr());
    for _ in 0..100 {
        client.send(&request("GET", "/items", ""));
        assert_eq!(client.reply().status, 200, "served while the writer is stuck");
    }
    // Every line is written or dropped, but for the queue's two at most;
    // the writer is stuck after its first lines, so most are dropped. The
    // last reply's line is handed over just after it is written: wait for it.
    let counts = || {
        let page = scrape(&server);
        (
            metric(&page, "vigil_access_log_dropped_total"),
            metric(&page, "vigil_access_log_lines_total"),
        )
    };
    assert!(
        util::eventually(Duration::from_secs(10), || {
            let (dropped, written) = counts();
            dropped + written >= 98.0
        }),
        "lines neither written nor dropped: {:?}",
        counts()
    );
    assert!(counts().0 >= 50.0, "{:?}", counts());
}

#[test]
fn offloaded_work_past_its_timeout_gets_503_and_the_connection_goes_on() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let (finished, _) = crossbeam_channel::unbounded();
    let app = troubled_app(&gate, finished)
        .middleware(OffloadTimeout(Duration::from_millis(100)))
        .build()
        .unwrap();
    let server = util::start(quick_sweep_config(), app);
    let mut client = Client::new(server.local_addr());
    client.send(&request("GET", "/slow", ""));
    client.send(&request("GET", "/items", ""));
    let timed_out = client.reply();
    assert_eq!((timed_out.status, timed_out.header("retry-after")), (503, Some("1")));
    assert_eq!(client.reply().text(), "items\n", "the pipelined request follows in order");
    gate.open();
    client.send(&request("GET", "/items", ""));
    assert_eq!(client.reply().text(), "items\n", "the late result went nowhere");
}

#[test]
fn metrics_count_exchanges_by_route_pattern_and_status_class() {
    let app = App::new().get("/users/{id}", show_user).build().unwrap();
    let mut config = util::config(1);
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    let server = util::start(config, app);
    for path in ["/users/1", "/users/2", "/users/3", "/missing"] {
        send(&server, "GET", path, "");
    }
    send(&server, "DELETE", "/users/1", "");
    let counted =
        |page: &str, labels: &str| sample(page, &format!("vigil_route_requests_total{{{labels}}}"));
    // Counted once each exchange is over, just after its reply is written.
    assert!(util::eventually(Duration::from_secs(10), || {
        let page = scrape(&server);
        counted(&page, "route=\"\",class=\"4xx\"") == Some(1.0)
            && counted(&page, "route=\"/users/{id}\",class=\"2xx\"") == Some(3.0)
            && counted(&page, "route=\"/users/{id}\",class=\"4xx\"") == Some(1.0)
    }));
    let page = scrape(&server);
    assert!(!page.contains("/users/1\""), "raw paths are never labels");
    assert!(page.contains(
        "vigil_route_duration_seconds_bucket{route=\"/users/{id}\",class=\"2xx\",le=\"+Inf\"} 3"
    ));
}

/// `/slow` offloads work that waits for `gate` (opened by the guard when
/// the test ends); `/boom` panics; `/json` offloads work that answers JSON
/// and registers its own `on_finish` hook, reporting to `finished`.
fn troubled_app(gate: &Gate, finished: Sender<u16>) -> App {
    let waiting = gate.clone();
    App::new()
        .get("/slow", move |_req: &Request<'_>, res: &mut Response| {
            let gate = waiting.clone();
            res.offload(move |res| {
                gate.wait();
                res.body_static(b"too late\n");
            });
        })
        .get("/boom", |_req: &Request<'_>, _res: &mut Response| panic!("boom"))
        .get("/json", move |_req: &Request<'_>, res: &mut Response| {
            res.header("Content-Type", "text/plain");
            let finished = finished.clone();
            res.offload(move |res| {
                res.json(&serde_json::json!({ "ok": true }));
                res.on_finish(move |done| {
                    let _ = finished.send(done.status);
                });
            });
        })
        .get("/items", list_items)
}

fn quick_sweep_config() -> vigil::Config {
    let mut config = util::config(1);
    // The sweep that checks offload timeouts runs at a quarter of this.
    config.header_timeout = Duration::from_millis(200);
    config.keep_alive_timeout = Duration::from_secs(10);
    config
}

#[test]
fn after_an_offload_timeout_the_requests_left_in_the_socket_are_answered() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let (finished, _) = crossbeam_channel::unbounded();
    let app = troubled_app(&gate, finished)
        .middleware(RequestId)
        .middleware(OffloadTimeout(Duration::from_millis(100)))
        .build()
        .unwrap();
    let server = util::start(quick_sweep_config(), app);
    let mut client = Client::new(server.local_addr());
    // More behind the stuck one than a connection keeps waiting (64): the
    // loop stops reading, and what comes next stays in the socket until
    // the 503 lets the others go.
    let mut pipelined = request("GET", "/slow", "");
    for _ in 0..70 {
        pipelined.extend(request("GET", "/items", ""));
    }
    client.send(&pipelined);
    assert!(util::eventually(Duration::from_secs(10), || server.snapshot().totals.requests >= 71));
    let mut rest = Vec::new();
    for _ in 0..30 {
        rest.extend(request("GET", "/items", ""));
    }
    client.send(&rest);
    let timed_out = client.reply();
    assert_eq!(timed_out.status, 503);
    assert!(timed_out.header("x-request-id").is_some(), "the fields set before offload are kept");
    for n in 0..100 {
        assert_eq!(client.reply_to("GET").unwrap_or_else(|e| panic!("reply {n}: {e}")).status, 200);
    }
}

#[test]
fn a_partial_request_behind_offloaded_work_waits_for_the_503_not_a_408() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let (finished, _) = crossbeam_channel::unbounded();
    let app = troubled_app(&gate, finished)
        .middleware(OffloadTimeout(Duration::from_millis(100)))
        .build()
        .unwrap();
    let server = util::start(quick_sweep_config(), app);
    let mut client = Client::new(server.local_addr());
    client.send(&request("GET", "/slow", ""));
    client.send(b"GET /items HTTP/1.1\r\nHo");
    assert_eq!(client.reply().status, 503, "the offloaded one is answered first");
    client.send(b"st: t\r\n\r\n");
    assert_eq!(client.reply().text(), "items\n");
}

#[test]
fn a_panic_is_logged_with_its_500_and_offloaded_hooks_and_fields_are_kept() {
    let gate = Gate::default();
    let _open = OpenOnDrop(gate.clone());
    let (sink, lines) = crossbeam_channel::unbounded();
    let (finished, finish_seen) = crossbeam_channel::unbounded();
    let log = AccessLog::to_writer(Lines(sink), Format::Json, 64).unwrap();
    let app = troubled_app(&gate, finished).middleware(log).build().unwrap();
    let server = start(app);
    assert_eq!(send(&server, "GET", "/boom", "").status, 500);
    let line = next_json_line(&lines);
    assert_eq!((line["status"].as_u64(), line["target"].as_str()), (Some(500), Some("/boom")));
    let json = send(&server, "GET", "/json", "");
    let types: Vec<&str> = json
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(types, ["application/json"], "the work's value replaces the one set before");
    assert_eq!(finish_seen.recv_timeout(util::IO_TIMEOUT), Ok(200), "the work's own hook ran");
}
