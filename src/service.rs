//! The user's side: a [`Service`] answers requests; a [`ServiceFactory`]
//! makes one per loop, so per-loop state needs no locks.

use crate::{BodyPolicy, Request, Response};

/// Answers requests. One instance lives in each loop; it is rebuilt from its
/// factory when a call panics.
///
/// An instance lives only as long as its loop. A slot gets a new loop (and
/// so a new instance) when its loop is handed off (busy on one request past
/// the handoff threshold: the old instance finishes that request on the old
/// thread, then is dropped), recycled or abandoned. Keep in an instance
/// only what can be rebuilt: caches, buffers, per-loop statistics.
pub trait Service {
    /// Fills in `res` for `req`. `res` starts as `200`, no headers, empty body.
    fn call(&mut self, req: &Request<'_>, res: &mut Response);

    /// How the body of `req` is received, asked once its head is in and
    /// only when it has a body (`req.body()` is empty here). `None`, the
    /// default: buffered up to the server's
    /// [`Limits::max_body_bytes`](crate::Limits::max_body_bytes).
    ///
    /// [`BodyPolicy::Stream`] calls [`call`](Self::call) at once, before
    /// any of the body is read (after `100 Continue`, when the client
    /// asked for one), and the handler reads the body through
    /// [`Request::body_reader`] as it arrives.
    fn body_policy(&mut self, _req: &Request<'_>) -> Option<BodyPolicy> {
        None
    }
}

/// Makes the [`Service`] of each loop (and of each replacement loop).
pub trait ServiceFactory: Send + Sync + 'static {
    /// The service this factory makes.
    type Service: Service;

    /// Called on the loop's own thread; `slot` is the loop's core slot.
    fn new_service(&self, slot: usize) -> Self::Service;

    /// Appends the service's own metrics, in the Prometheus text format, to
    /// the admin plane's `/metrics` page (nothing by default).
    fn render_metrics(&self, _out: &mut String) {}
}

impl<F, S> ServiceFactory for F
where
    F: Fn(usize) -> S + Send + Sync + 'static,
    S: Service,
{
    type Service = S;

    fn new_service(&self, slot: usize) -> S {
        self(slot)
    }
}

impl<F> Service for F
where
    F: FnMut(&Request<'_>, &mut Response),
{
    fn call(&mut self, req: &Request<'_>, res: &mut Response) {
        self(req, res)
    }
}
