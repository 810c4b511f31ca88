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
    let mut app = App::new();
    for pattern in &patterns {
        app = app.get(pattern, hello);
    }
    let app = app.middleware(RequestId).middleware(Cors::any_origin()).build().unwrap();
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
