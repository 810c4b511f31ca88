//! The app layer's cost per request: a router of 130 routes and two
//! middleware (request ids, CORS) against a bare `Service` doing the same
//! work, each call followed by what the loop does once the response is
//! written (the `on_finish` hooks: per-route metrics). The difference is
//! the overhead. `cargo bench --bench router`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use vigil::app::middleware::{Cors, RequestId};
use vigil::app::App;
use vigil::{__bench, Request, Response, ServiceFactory};

// The allocator the server runs with (src/main.rs): what an allocation in a
// handler or middleware costs there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn hello(_req: &Request<'_>, res: &mut Response) {
    res.header("Content-Type", "text/plain").body_static(b"Hello World\n");
}

/// 26 resources of 5 routes each, REST-style.
fn patterns() -> Vec<String> {
    (0..26)
        .flat_map(|r| {
            [
                format!("/api/v1/r{r}"),
                format!("/api/v1/r{r}/search"),
                format!("/api/v1/r{r}/{{id}}"),
                format!("/api/v1/r{r}/{{id}}/items"),
                format!("/api/v1/r{r}/{{id}}/items/{{item}}"),
            ]
        })
        .collect()
}

fn router(c: &mut Criterion) {
    let patterns = patterns();
    assert_eq!(patterns.len(), 130);
    let routes = || patterns.iter().fold(App::new(), |app, pattern| app.get(pattern, hello));
    let plain = routes().build().unwrap();
    let with_id = routes().middleware(RequestId).build().unwrap();
    let app = routes().middleware(RequestId).middleware(Cors::any_origin()).build().unwrap();
    let headers = [
        httparse::Header { name: "Host", value: b"api.example.com" },
        httparse::Header { name: "Accept", value: b"*/*" },
    ];
    let mut routed = app.new_service(0);
    let mut bare = |req: &Request<'_>, res: &mut Response| hello(req, res);
    let mut res = Response::new();
    let mut group = c.benchmark_group("per_request");
    for path in ["/api/v1/r13/42/items/7", "/api/v1/r25/search", "/api/v1/nothing"] {
        group.bench_function(format!("bare {path}"), |b| {
            b.iter(|| {
                __bench::call_and_finish(&mut bare, "GET", black_box(path), &headers, &mut res)
            })
        });
        let mut p = plain.new_service(0);
        group.bench_function(format!("plain {path}"), |b| {
            b.iter(|| __bench::call_and_finish(&mut p, "GET", black_box(path), &headers, &mut res))
        });
        let mut p = with_id.new_service(0);
        group.bench_function(format!("with_id {path}"), |b| {
            b.iter(|| __bench::call_and_finish(&mut p, "GET", black_box(path), &headers, &mut res))
        });
        group.bench_function(format!("clock {path}"), |b| {
            b.iter(|| black_box(std::time::Instant::now()).elapsed())
        });
        group.bench_function(format!("routed {path}"), |b| {
            b.iter(|| {
                __bench::call_and_finish(&mut routed, "GET", black_box(path), &headers, &mut res)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
