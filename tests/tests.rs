//! Integration tests over real sockets: one binary, one module per topic.

// As in the binary: per-loop arenas need jemalloc.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod util;

mod admin;
mod app;
mod cli;
mod files;
mod handoff;
mod http;
mod memory;
mod offload;
mod stream;

mod supervisor;
mod upgrade;
mod upload;
