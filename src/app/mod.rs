//! Building a real service on vigil: a router (method and path, with
//! parameters), named handlers with per-loop state, and a middleware chain
//! in Connect's `(req, res, next)` shape, without a lock on the request
//! path.
//!
//! ```
//! use vigil::app::{App, Next};
//! use vigil::{Request, Response};
//!
//! struct Cache { hits: u64 }
//!
//! fn show_user(cache: &mut Cache, req: &Request<'_>, res: &mut Response) {
//!     cache.hits += 1;
//!     let id = req.param_decoded("id").unwrap_or_default();
//!     res.json(&serde_json::json!({ "id": id, "hits": cache.hits }));
//! }
//!
//! fn health(_req: &Request<'_>, res: &mut Response) {
//!     res.body_static(b"ok\n");
//! }
//!
//! fn server_header(req: &Request<'_>, res: &mut Response, next: Next<'_>) {
//!     res.header("X-Served-By", "vigil");
//!     next.run(req, res);
//! }
//!
//! let app = App::with_state(|_slot| Cache { hits: 0 })
//!     .get("/users/{id}", show_user)
//!     .get("/healthz", health)
//!     .wrap(server_header)
//!     .build()
//!     .expect("routes are valid");
//! // vigil::Server::new(app).start()
//! # drop(app);
//! ```
//!
//! Routes are built once, before the server starts: a bad or conflicting
//! route is an error from [`App::build`], never a panic in a loop.
//! Answers follow RFC 9110: a path that exists for other methods gets 405
//! with `Allow`, HEAD is answered by the GET handler (the server sends no
//! body), OPTIONS gets `Allow`, and anything else goes to the fallback
//! (404 unless set).

pub mod access_log;
mod metrics;
pub mod middleware;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::{BodyPolicy, Request, Response, Service, ServiceFactory};
use metrics::Recorder;
pub use metrics::STATUS_CLASSES;

/// A request handler: a named function or closure, with the loop's state
/// (`fn(&mut S, &Request, &mut Response)`) or without it
/// (`fn(&Request, &mut Response)`). `Kind` tells the two apart.
pub trait Handler<S, Kind>: Send + Sync + 'static {
    /// Answers `req` into `res`.
    fn call(&self, state: &mut S, req: &Request<'_>, res: &mut Response);
}

/// [`Handler`] kind of `fn(&mut S, &Request, &mut Response)`.
#[derive(Debug)]
pub struct WithState;

/// [`Handler`] kind of `fn(&Request, &mut Response)`.
#[derive(Debug)]
pub struct Stateless;

impl<S, F> Handler<S, WithState> for F
where
    F: Fn(&mut S, &Request<'_>, &mut Response) + Send + Sync + 'static,
{
    fn call(&self, state: &mut S, req: &Request<'_>, res: &mut Response) {
        self(state, req, res)
    }
}

impl<S, F> Handler<S, Stateless> for F
where
    F: Fn(&Request<'_>, &mut Response) + Send + Sync + 'static,
{
    fn call(&self, _state: &mut S, req: &Request<'_>, res: &mut Response) {
        self(req, res)
    }
}

type BoxedHandler<S> = Box<dyn Fn(&mut S, &Request<'_>, &mut Response) + Send + Sync>;

fn boxed<S: 'static, K>(handler: impl Handler<S, K>) -> BoxedHandler<S> {
    Box::new(move |state: &mut S, req: &Request<'_>, res: &mut Response| {
        handler.call(state, req, res)
    })
}

/// Middleware in Connect's shape: it sees the request and the response
/// before the handler, calls `next.run(req, res)` to go on (not calling it
/// ends the chain: the response as it stands is sent), and may change the
/// response after. It runs in the order added, with `&mut` access to its
/// own per-loop state.
///
/// A response may be finished later than `next` returns (offloaded work):
/// to see the response really sent and the end of the exchange, register
/// [`Response::on_finish`].
pub trait Middleware: Send + Sync + 'static {
    /// Per-loop state, built on the loop's thread.
    type State: 'static;

    /// Builds the state of the loop in `slot`.
    fn state(&self, slot: usize) -> Self::State;

    /// Handles one request.
    fn call(&self, state: &mut Self::State, req: &Request<'_>, res: &mut Response, next: Next<'_>);

    /// Adds this middleware's metrics (Prometheus text) to `/metrics`.
    fn render_metrics(&self, _out: &mut String) {}
}

/// A stateless middleware function, as [`App::wrap`] takes.
struct FnMiddleware<F>(F);

impl<F> Middleware for FnMiddleware<F>
where
    F: Fn(&Request<'_>, &mut Response, Next<'_>) + Send + Sync + 'static,
{
    type State = ();

    fn state(&self, _slot: usize) {}

    fn call(&self, _state: &mut (), req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        (self.0)(req, res, next)
    }
}

/// A middleware with its state type erased, so that one chain holds many.
trait Layer: Send + Sync {
    fn state(&self, slot: usize) -> Box<dyn Any>;
    fn call(&self, state: &mut dyn Any, req: &Request<'_>, res: &mut Response, next: Next<'_>);
    fn render_metrics(&self, out: &mut String);
}

impl<M: Middleware> Layer for M {
    fn state(&self, slot: usize) -> Box<dyn Any> {
        Box::new(Middleware::state(self, slot))
    }

    fn call(&self, state: &mut dyn Any, req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        let state = state.downcast_mut::<M::State>().expect("each layer gets its own state");
        Middleware::call(self, state, req, res, next)
    }

    fn render_metrics(&self, out: &mut String) {
        Middleware::render_metrics(self, out)
    }
}

/// The rest of the chain after a middleware: the next middleware, or the
/// route's handler.
pub struct Next<'a> {
    layers: &'a [Box<dyn Layer>],
    states: &'a mut [Box<dyn Any>],
    endpoint: &'a mut dyn FnMut(&Request<'_>, &mut Response),
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("middleware_left", &self.layers.len()).finish()
    }
}

impl Next<'_> {
    /// Runs the rest of the chain.
    pub fn run(self, req: &Request<'_>, res: &mut Response) {
        match (self.layers.split_first(), self.states.split_first_mut()) {
            (Some((layer, layers)), Some((state, states))) => {
                let next = Next { layers, states, endpoint: self.endpoint };
                layer.call(&mut **state, req, res, next)
            }
            _ => (self.endpoint)(req, res),
        }
    }
}

/// Why [`App::build`] refused the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// The method and pattern refused.
    pub route: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}: {}", self.route, self.reason)
    }
}

impl std::error::Error for RouteError {}

/// An application being put together: routes, middleware, a fallback.
pub struct App<S = ()> {
    state: Box<dyn Fn(usize) -> S + Send + Sync>,
    routes: Vec<RouteSpec<S>>,
    layers: Vec<Box<dyn Layer>>,
    fallback: Option<BoxedHandler<S>>,
    /// `with_body` came before any route.
    orphan_body_policy: bool,
}

/// A route as added, before `build` checks it.
struct RouteSpec<S> {
    method: String,
    pattern: String,
    handler: BoxedHandler<S>,
    body: Option<BodyPolicy>,
}

impl<S> fmt::Debug for App<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> =
            self.routes.iter().map(|r| format!("{} {}", r.method, r.pattern)).collect();
        f.debug_struct("App")
            .field("routes", &routes)
            .field("middleware", &self.layers.len())
            .finish()
    }
}

impl App<()> {
    /// An application without per-loop state.
    pub fn new() -> App<()> {
        App::with_state(|_slot| ())
    }
}

impl Default for App<()> {
    fn default() -> Self {
        App::new()
    }
}

impl<S: 'static> App<S> {
    /// An application whose handlers get per-loop state made by `state`
    /// (called on each loop's thread with its slot, and again for each
    /// replacement loop): no lock is needed to use it.
    pub fn with_state(state: impl Fn(usize) -> S + Send + Sync + 'static) -> App<S> {
        App {
            state: Box::new(state),
            routes: Vec::new(),
            layers: Vec::new(),
            fallback: None,
            orphan_body_policy: false,
        }
    }

    /// Routes `method` requests for `pattern` to `handler`. Patterns are
    /// matchit's: `/users/{id}` (one segment), `/static/{*path}` (the rest
    /// of the path).
    pub fn route<K>(mut self, method: &str, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.routes.push(RouteSpec {
            method: method.to_string(),
            pattern: pattern.to_string(),
            handler: boxed(handler),
            body: None,
        });
        self
    }

    /// How the route added last takes its request bodies (the server's
    /// `max_body_bytes`, buffered, unless set):
    ///
    /// ```
    /// use std::io::Read;
    /// use vigil::app::App;
    /// use vigil::{BodyPolicy, Request, Response};
    ///
    /// fn upload(req: &Request<'_>, res: &mut Response) {
    ///     let Some(mut body) = req.body_reader() else {
    ///         res.status(400).body_static(b"a body, please\n");
    ///         return;
    ///     };
    ///     // Read on the offload pool: the loop goes on serving meanwhile,
    ///     // and reads the socket only as fast as this reads the body.
    ///     res.offload(move |res| match std::io::copy(&mut body, &mut std::io::sink()) {
    ///         Ok(n) => { res.body(format!("{n} bytes\n")); }
    ///         Err(e) => { res.status(400).body(format!("{e}\n")); }
    ///     });
    /// }
    ///
    /// let app = App::new()
    ///     .post("/upload", upload)
    ///     .with_body(BodyPolicy::Stream(u64::MAX))
    ///     .post("/comments", |_req: &Request<'_>, res: &mut Response| {
    ///         res.body_static(b"thanks\n");
    ///     })
    ///     .with_body(BodyPolicy::Buffer(16 * 1024))
    ///     .build()
    ///     .expect("routes are valid");
    /// # drop(app);
    /// ```
    pub fn with_body(mut self, policy: BodyPolicy) -> Self {
        match self.routes.last_mut() {
            Some(route) => route.body = Some(policy),
            None => self.orphan_body_policy = true,
        }
        self
    }

    /// `route("GET", ...)`: also answers HEAD.
    pub fn get<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route("GET", pattern, handler)
    }

    /// `route("POST", ...)`.
    pub fn post<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route("POST", pattern, handler)
    }

    /// `route("PUT", ...)`.
    pub fn put<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route("PUT", pattern, handler)
    }

    /// `route("PATCH", ...)`.
    pub fn patch<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route("PATCH", pattern, handler)
    }

    /// `route("DELETE", ...)`.
    pub fn delete<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route("DELETE", pattern, handler)
    }

    /// Routes every method of `pattern` that has no route of its own to
    /// `handler` (OPTIONS included): the path never answers 405.
    pub fn any<K>(self, pattern: &str, handler: impl Handler<S, K>) -> Self {
        self.route(ANY_METHOD, pattern, handler)
    }

    /// What answers a path no route matches (404 by default).
    pub fn fallback<K>(mut self, handler: impl Handler<S, K>) -> Self {
        self.fallback = Some(boxed(handler));
        self
    }

    /// Adds a middleware: it runs after those added before it.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.layers.push(Box::new(middleware));
        self
    }

    /// Adds a stateless middleware function `fn(req, res, next)`.
    pub fn wrap(
        self,
        middleware: impl Fn(&Request<'_>, &mut Response, Next<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.middleware(FnMiddleware(middleware))
    }

    /// Checks and compiles the routes. A pattern matchit refuses, two
    /// patterns that conflict, the same method twice on one path or an
    /// invalid method token is an error.
    pub fn build(self) -> Result<AppFactory<S>, RouteError> {
        if self.orphan_body_policy {
            return Err(RouteError {
                route: "with_body".into(),
                reason: "with_body follows the route it applies to".into(),
            });
        }
        let mut router = matchit::Router::new();
        let mut paths: Vec<PathRoutes<S>> = Vec::new();
        let body_policies = self.routes.iter().any(|route| route.body.is_some());
        for RouteSpec { method, pattern, handler, body } in self.routes {
            let refuse =
                |reason: String| RouteError { route: format!("{method} {pattern}"), reason };
            let token = !method.is_empty() && method.bytes().all(crate::http::is_tchar);
            if !token && method != ANY_METHOD {
                return Err(refuse("the method is not a token (RFC 9110 9.1)".into()));
            }
            if !pattern.starts_with('/') {
                return Err(refuse("a pattern starts with /".into()));
            }
            let index = match paths.iter().position(|p| p.pattern == pattern) {
                Some(index) => index,
                None => {
                    router
                        .insert(pattern.clone(), paths.len())
                        .map_err(|e| refuse(e.to_string()))?;
                    paths.push(PathRoutes {
                        pattern: pattern.clone(),
                        methods: Vec::new(),
                        allow: String::new(),
                    });
                    paths.len() - 1
                }
            };
            let path = &mut paths[index];
            if path.methods.iter().any(|route| route.method == method) {
                return Err(refuse("routed twice".into()));
            }
            path.methods.push(Route { method, handler, body });
        }
        for path in &mut paths {
            let methods =
                path.methods.iter().map(|route| route.method.as_str()).filter(|m| *m != ANY_METHOD);
            path.allow = allow_header(methods);
        }
        let fallback = self.fallback.unwrap_or_else(|| boxed(not_found));
        let patterns = paths.iter().map(|p| p.pattern.clone()).collect();
        Ok(AppFactory {
            routes: Arc::new(Routes {
                router,
                paths,
                layers: self.layers,
                fallback,
                state: self.state,
                counters: metrics::RouteMetrics::new(patterns),
                body_policies,
            }),
        })
    }
}

/// The method of [`App::any`]'s routes: not a token, so no request has it.
const ANY_METHOD: &str = "*";

fn not_found(_req: &Request<'_>, res: &mut Response) {
    res.status(404).header("Content-Type", "text/plain").body_static(b"404 Not Found\n");
}

/// The `Allow` value of a path with handlers for `methods`: those methods,
/// HEAD when GET is there, and OPTIONS, in a fixed order (the usual
/// methods first, others after in the order routed).
fn allow_header<'a>(methods: impl Iterator<Item = &'a str> + Clone) -> String {
    const ORDER: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let has = |name: &str| {
        methods.clone().any(|m| m == name)
            || (name == "HEAD" && methods.clone().any(|m| m == "GET"))
            || name == "OPTIONS"
    };
    let mut allow: Vec<&str> = ORDER.iter().copied().filter(|m| has(m)).collect();
    let options = allow.pop(); // OPTIONS goes last, after the others
    allow.extend(methods.filter(|m| !ORDER.contains(m)));
    allow.extend(options);
    allow.join(", ")
}

/// The handlers of one path pattern.
struct PathRoutes<S> {
    pattern: String,
    methods: Vec<Route<S>>,
    allow: String,
}

/// One method's route on a path.
struct Route<S> {
    method: String,
    handler: BoxedHandler<S>,
    body: Option<BodyPolicy>,
}

impl<S> PathRoutes<S> {
    fn route(&self, method: &str) -> Option<&Route<S>> {
        // Compared a byte at a time: a method is a few bytes, where a call
        // to memcmp costs more than the comparison.
        let same =
            |m: &str| m.len() == method.len() && m.bytes().zip(method.bytes()).all(|(a, b)| a == b);
        self.methods.iter().find(|route| same(&route.method))
    }

    /// The route that answers `method`, as `Routes::endpoint` picks it.
    fn answering(&self, method: &str) -> Option<&Route<S>> {
        self.route(method)
            .or_else(|| if method == "HEAD" { self.route("GET") } else { None })
            .or_else(|| self.route(ANY_METHOD))
    }
}

/// A built application, shared by every loop.
struct Routes<S> {
    router: matchit::Router<usize>,
    paths: Vec<PathRoutes<S>>,
    layers: Vec<Box<dyn Layer>>,
    fallback: BoxedHandler<S>,
    state: Box<dyn Fn(usize) -> S + Send + Sync>,
    counters: Arc<metrics::RouteMetrics>,
    /// Some route has a body policy of its own.
    body_policies: bool,
}

impl<S> Routes<S> {
    /// The end of the chain: the route's handler, or 405, OPTIONS, HEAD,
    /// the fallback.
    fn endpoint(&self, index: Option<usize>, state: &mut S, req: &Request<'_>, res: &mut Response) {
        let Some(path) = index.map(|index| &self.paths[index]) else {
            return (self.fallback)(state, req, res);
        };
        let method = req.method();
        if let Some(route) = path.answering(method) {
            return (route.handler)(state, req, res);
        }
        if method == "OPTIONS" {
            res.status(204).header("Allow", path.allow.clone());
            return;
        }
        res.status(405)
            .header("Allow", path.allow.clone())
            .header("Content-Type", "text/plain")
            .body_static(b"405 Method Not Allowed\n");
    }
}

/// A built application: give it to [`Server::new`](crate::Server::new).
pub struct AppFactory<S> {
    routes: Arc<Routes<S>>,
}

impl<S> fmt::Debug for AppFactory<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let patterns: Vec<&str> = self.routes.paths.iter().map(|p| p.pattern.as_str()).collect();
        f.debug_struct("AppFactory").field("paths", &patterns).finish()
    }
}

impl<S: 'static> ServiceFactory for AppFactory<S> {
    type Service = AppService<S>;

    fn new_service(&self, slot: usize) -> AppService<S> {
        let routes = self.routes.clone();
        AppService {
            state: (routes.state)(slot),
            layer_states: routes.layers.iter().map(|layer| layer.state(slot)).collect(),
            counters: Arc::new(routes.counters.recorder()),
            routes,
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.routes.counters.render(out);
        for layer in &self.routes.layers {
            layer.render_metrics(out);
        }
    }
}

/// One loop's instance of an application.
pub struct AppService<S> {
    routes: Arc<Routes<S>>,
    state: S,
    layer_states: Vec<Box<dyn Any>>,
    counters: Arc<Recorder>,
}

impl<S> fmt::Debug for AppService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppService").finish_non_exhaustive()
    }
}

impl<S: 'static> Service for AppService<S> {
    fn body_policy(&mut self, req: &Request<'_>) -> Option<BodyPolicy> {
        let routes = &*self.routes;
        if !routes.body_policies {
            return None;
        }
        let index = *routes.router.at(req.path()).ok()?.value;
        routes.paths[index].answering(req.method())?.body
    }

    fn call(&mut self, req: &Request<'_>, res: &mut Response) {
        let routes = &*self.routes;
        let found = routes.router.at(req.path()).ok();
        let index = found.as_ref().map(|found| *found.value);
        let routed_req;
        let req = match &found {
            Some(found) => {
                routed_req = req.routed(&routes.paths[*found.value].pattern, &found.params);
                &routed_req
            }
            None => req,
        };
        // A handler that panics is answered 500 by the loop: count it so.
        let panicked =
            CountIfPanicking { counters: &self.counters, index, received: req.received() };
        let state = &mut self.state;
        let mut endpoint =
            |req: &Request<'_>, res: &mut Response| routes.endpoint(index, state, req, res);
        Next { layers: &routes.layers, states: &mut self.layer_states, endpoint: &mut endpoint }
            .run(req, res);
        std::mem::forget(panicked);
        // By route and status class. Offloaded work's status is known only
        // once it is sent: counted then, by a hook. Any other response is
        // counted now, without the allocations of a hook.
        if res.offload.is_some() {
            let counters = self.counters.clone();
            res.on_finish(move |done| counters.record(index, done.status, done.duration));
        } else {
            self.counters.record(index, res.status_code(), since(req.received()));
        }
    }
}

/// How long since the loop read the request (zero when unknown).
fn since(received: Option<std::time::Instant>) -> std::time::Duration {
    received.map_or(std::time::Duration::ZERO, |at| at.elapsed())
}

/// Counts a 500 for the route when dropped by a panic's unwinding.
struct CountIfPanicking<'a> {
    counters: &'a Recorder,
    index: Option<usize>,
    received: Option<std::time::Instant>,
}

impl Drop for CountIfPanicking<'_> {
    fn drop(&mut self) {
        self.counters.record(self.index, 500, since(self.received));
    }
}

/// Route matching without a server, for the router's own tests and
/// benchmarks: the pattern and parameters `path` matches.
impl<S> AppFactory<S> {
    /// The pattern `path` matches, if any.
    pub fn matched_pattern(&self, path: &str) -> Option<&str> {
        let found = self.routes.router.at(path).ok()?;
        Some(self.routes.paths[*found.value].pattern.as_str())
    }
}

#[cfg(test)]
mod tests;
