//! Micro benchmarks of the HTTP/1.1 hot path: head parsing, chunked
//! decoding and response encoding. `cargo bench --bench http`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::__bench;

/// What `wrk -c.. -t.. http://host:port/` sends.
const WRK: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A browser navigation: 10 header fields.
const BROWSER: &[u8] = b"GET /docs/index.html?lang=en&theme=dark HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Connection: keep-alive\r\n\
Cookie: session=6a1f0c2e9b7d4e3a8f5c1d2b0e9f8a7c; theme=dark; consent=yes\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Priority: u=0, i\r\n\r\n";

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_head");
    for (name, req) in [("wrk", WRK), ("browser_10_fields", BROWSER)] {
        assert_eq!(__bench::parse_head(req), req.len(), "{name} must parse");
        group.throughput(Throughput::Bytes(req.len() as u64));
        group.bench_function(name, |b| b.iter(|| __bench::parse_head(black_box(req))));
    }
    group.finish();
}

fn chunked(c: &mut Criterion) {
    // 16 chunks of 1 KiB, one with an extension, then a trailer.
    let mut input = Vec::new();
    for i in 0..16 {
        input.extend_from_slice(if i == 3 { b"400;ext=\"v\"\r\n".as_slice() } else { b"400\r\n" });
        input.extend(std::iter::repeat(b'x').take(1024));
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b"0\r\nX-Checksum: abc\r\n\r\n");
    let mut body = Vec::with_capacity(16 * 1024);
    assert_eq!(__bench::decode_chunked(&input, &mut body), input.len());

    let mut group = c.benchmark_group("chunked");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("16x1KiB", |b| {
        b.iter(|| __bench::decode_chunked(black_box(&input), &mut body))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let encoder = __bench::Encoder::hello_world();
    let mut out = Vec::with_capacity(4096);
    encoder.encode(&mut out);
    let len = out.len();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("hello_world", |b| {
        b.iter(|| {
            out.clear();
            black_box(encoder.encode(&mut out))
        })
    });
    group.finish();
}

criterion_group!(benches, parse, chunked, encode);
criterion_main!(benches);
