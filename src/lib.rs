//! vigil: a supervised HTTP/1.1 server.
//!
//! One event loop per core, all accepting from one shared socket; a
//! supervisor thread watches every loop's heartbeat and memory and replaces
//! loops that stall, die or bloat, so one runaway handler never takes the
//! server down.
#![deny(unreachable_pub)]
#![warn(missing_debug_implementations)]

mod http;
mod service;

pub use http::{Limits, Request, Response, Version, MAX_HEADERS_CAP};
pub use service::{Service, ServiceFactory};

