//! vigil: a supervised HTTP/1.1 server.
//!
//! One event loop per core, all accepting from one shared socket; a
//! supervisor thread watches every loop's heartbeat and memory and replaces
//! loops that stall, die or bloat, so one runaway handler never takes the
//! server down.
//!
//! # Examples
//!
//! ```no_run
//! use vigil::{Request, Response, Server};
//!
//! let handle = Server::new(|_slot: usize| {
//!     |req: &Request<'_>, res: &mut Response| {
//!         res.header("Content-Type", "text/plain");
//!         res.body(format!("you asked for {}\n", req.path()));
//!     }
//! })
//! .start()
//! .expect("listen on 127.0.0.1:8080");
//! handle.wait();
//! ```
#![deny(unreachable_pub)]
#![warn(missing_debug_implementations)]

mod admin;
mod config;
mod conn;
mod event_loop;
mod http;
mod memory;
mod server;
mod service;
mod shared;
pub mod signals;
mod supervisor;
mod sys;

pub use config::{default_loops, parse_duration, parse_size, Config, ConfigError};
pub use http::{Limits, Request, Response, Version, MAX_HEADERS_CAP};
pub use memory::{ArenaStats, ProcessMemory};
pub use server::{
    Control, LoopSnapshot, Outcome, Server, ServerHandle, Snapshot, StartError, UnknownSlot,
};
pub use service::{Service, ServiceFactory};
pub use shared::LoopState;
