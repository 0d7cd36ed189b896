//! Micro-benchmarks of the codec's pieces: masking, UTF-8 validation, frame
//! header parsing and handshake parsing.
//!
//! Run one group: `cargo bench -p benches --bench pieces -- mask`.

use benches::{Kind, Workload};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use wsproto::frame::{parse_header, ParsedHeader, Role};
use wsproto::handshake::{parse_request, ParsedRequest};
use wsproto::mask::{apply_mask, copy_masked};
use wsproto::utf8::Utf8Validator;

fn configure<M: criterion::measurement::Measurement>(g: &mut criterion::BenchmarkGroup<'_, M>) {
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(10);
}

fn mask(c: &mut Criterion) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for size in [125usize, 16 << 10, 1 << 20] {
        let mut g = c.benchmark_group(format!("mask/{size}"));
        configure(&mut g);
        g.throughput(Throughput::Bytes(size as u64));
        let src = vec![0x5au8; size];
        let mut buf = src.clone();
        g.bench_function("apply_mask", |b| {
            b.iter(|| apply_mask(black_box(&mut buf), key, 1))
        });
        g.bench_function("copy_masked", |b| {
            b.iter(|| copy_masked(black_box(&mut buf), black_box(&src), key, 1))
        });
        g.bench_function("bytewise", |b| {
            b.iter(|| {
                for (i, x) in black_box(&mut buf).iter_mut().enumerate() {
                    *x ^= key[(i + 1) % 4];
                }
            })
        });
        g.finish();
    }
}

fn utf8(c: &mut Criterion) {
    for kind in [Kind::Ascii, Kind::Cjk] {
        for size in [16usize, 125, 64 << 10] {
            let w = Workload::new(kind, size, 1);
            let text = &w.messages[0];
            let mut g = c.benchmark_group(format!("utf8/{}/{size}", kind.name()));
            configure(&mut g);
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function("wsproto_validator", |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(text)).expect("valid");
                    v.finish().expect("complete")
                })
            });
            g.bench_function("std", |b| {
                b.iter(|| std::str::from_utf8(black_box(text)).is_ok())
            });
            g.bench_function("simdutf8", |b| {
                b.iter(|| simdutf8::basic::from_utf8(black_box(text)).is_ok())
            });
            g.finish();
        }
    }
}

fn header(c: &mut Criterion) {
    // Headers of every length form, masked, as a server parses them.
    let mut g = c.benchmark_group("header");
    configure(&mut g);
    for size in [16usize, 1 << 10, 1 << 20] {
        let w = Workload::new(Kind::Binary, size, 1);
        let head_len = w.frames[0].start;
        let head = w.stream[..head_len].to_vec();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("parse/{head_len}_bytes"), |b| {
            b.iter(|| match parse_header(black_box(&head), Role::Server, 0) {
                Ok(ParsedHeader::Complete(h, n)) => (h.payload_len, n),
                other => panic!("{other:?}"),
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let raw = b"GET /chat HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: bench/1.0\r\n\
        Accept: */*\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let config = wsproto::Config::default();
    let mut g = c.benchmark_group("handshake");
    configure(&mut g);
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("parse_request", |b| {
        b.iter(|| match parse_request(black_box(raw), &config) {
            ParsedRequest::Complete(req, n) => (req, n),
            other => panic!("{other:?}"),
        })
    });
    g.bench_function("parse_and_accept", |b| {
        b.iter(|| match parse_request(black_box(raw), &config) {
            ParsedRequest::Complete(req, _) => req.accept(req.select_protocol(&["chat"])),
            other => panic!("{other:?}"),
        })
    });
    g.finish();
}

criterion_group! {
    name = pieces;
    config = Criterion::default().without_plots();
    targets = mask, utf8, header, handshake
}
criterion_main!(pieces);
