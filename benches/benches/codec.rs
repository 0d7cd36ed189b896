//! Frame-codec throughput, side by side: wsproto, tungstenite and
//! fastwebsockets on the same bytes in the same run, with memcpy and a fused
//! copy+unmask loop as baselines. Every column is checked to produce the
//! exact expected messages before it is timed.
//!
//! Run one group: `cargo bench -p benches --bench codec -- decode/binary/16384`.

use benches::{
    copy_unmask_baseline, copy_xor, decode_workloads, memcpy_baseline, MemStream, Rng, Workload,
    TOTAL_PAYLOAD,
};
use criterion::{black_box, criterion_group, BenchmarkGroup, Criterion, Throughput};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

// ---- peer adapters ---------------------------------------------------------

/// [`MemStream`] as a tokio stream, for fastwebsockets. Every poll is ready.
struct AsyncMem<'a>(MemStream<'a>);

impl tokio::io::AsyncRead for AsyncMem<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.0.read_into(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for AsyncMem<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            self.0.written.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

// ---- decode columns --------------------------------------------------------
// Each takes a message sink, so the same code is checked once and timed after.

/// wsproto through `next_event_ref`: each message borrowed from the
/// connection until the next call (as fastwebsockets' frames are).
fn decode_wsproto(w: &Workload, mut sink: impl FnMut(bool, &[u8])) {
    use wsproto::{Config, Connection, EventRef, Role};
    let mut conn = Connection::new(Role::Server, Config::default());
    let mut src = MemStream::new(&w.stream, 0);
    while let Some(chunk) = src.next_chunk() {
        conn.receive(chunk);
        while let Some(event) = conn.next_event_ref().expect("valid stream") {
            match event {
                EventRef::Text(t) => sink(true, t.as_bytes()),
                EventRef::Binary(b) => sink(false, b),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// wsproto as the blocking API reads: `receive_from` a reader (here the
/// stream itself, so the read is one copy, as `recv` is) in reads of
/// `Config::read_size` (16 KiB), each message borrowed.
fn decode_wsproto_reader(w: &Workload, mut sink: impl FnMut(bool, &[u8])) {
    use wsproto::{Config, Connection, EventRef, Role};
    let mut conn = Connection::new(Role::Server, Config::default());
    let mut src: &[u8] = &w.stream;
    while !src.is_empty() {
        conn.receive_from(&mut src, 16 << 10)
            .expect("a slice reads");
        while let Some(event) = conn.next_event_ref().expect("valid stream") {
            match event {
                EventRef::Text(t) => sink(true, t.as_bytes()),
                EventRef::Binary(b) => sink(false, b),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// wsproto through `next_event`: each message owned (`Bytes`, as
/// tungstenite's messages are).
fn decode_wsproto_owned(w: &Workload, mut sink: impl FnMut(bool, &[u8])) {
    use wsproto::{Config, Connection, Event, Role};
    let mut conn = Connection::new(Role::Server, Config::default());
    let mut src = MemStream::new(&w.stream, 0);
    while let Some(chunk) = src.next_chunk() {
        conn.receive(chunk);
        while let Some(event) = conn.next_event().expect("valid stream") {
            match event {
                Event::Text(t) => sink(true, t.as_bytes()),
                Event::Binary(b) => sink(false, &b),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn decode_tungstenite(w: &Workload, mut sink: impl FnMut(bool, &[u8])) {
    use tungstenite::protocol::{Role, WebSocket};
    use tungstenite::Message;
    let mut ws = WebSocket::from_raw_socket(MemStream::new(&w.stream, 0), Role::Server, None);
    for _ in 0..w.messages.len() {
        match ws.read().expect("valid stream") {
            Message::Text(t) => sink(true, t.as_bytes()),
            Message::Binary(b) => sink(false, &b),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// fastwebsockets at frame level: fragments are handed out as they come; the
/// sink sees each frame's payload (and the check concatenates them).
fn decode_fws_frames(
    rt: &tokio::runtime::Runtime,
    w: &Workload,
    mut sink: impl FnMut(bool, bool, &[u8]),
) {
    use fastwebsockets::{OpCode, Role, WebSocket};
    rt.block_on(async {
        let mut ws =
            WebSocket::after_handshake(AsyncMem(MemStream::new(&w.stream, 0)), Role::Server);
        for _ in 0..w.frames.len() {
            let frame = ws.read_frame().await.expect("valid stream");
            let text = match frame.opcode {
                OpCode::Text => true,
                OpCode::Binary => false,
                OpCode::Continuation => w.kind.is_text(),
                other => panic!("unexpected {other:?}"),
            };
            sink(text, frame.fin, &frame.payload);
        }
    });
}

fn decode_fws_collector(
    rt: &tokio::runtime::Runtime,
    w: &Workload,
    mut sink: impl FnMut(bool, &[u8]),
) {
    use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
    rt.block_on(async {
        let ws = WebSocket::after_handshake(AsyncMem(MemStream::new(&w.stream, 0)), Role::Server);
        let mut ws = FragmentCollector::new(ws);
        for _ in 0..w.messages.len() {
            let frame = ws.read_frame().await.expect("valid stream");
            let text = match frame.opcode {
                OpCode::Text => true,
                OpCode::Binary => false,
                other => panic!("unexpected {other:?}"),
            };
            sink(text, &frame.payload);
        }
    });
}

fn check_decoders(rt: &tokio::runtime::Runtime, w: &Workload) {
    let mut c = w.checker();
    decode_wsproto(w, |t, d| c.message(t, d));
    c.finish();
    let mut c = w.checker();
    decode_wsproto_owned(w, |t, d| c.message(t, d));
    c.finish();
    let mut c = w.checker();
    decode_wsproto_reader(w, |t, d| c.message(t, d));
    c.finish();
    let mut c = w.checker();
    decode_tungstenite(w, |t, d| c.message(t, d));
    c.finish();
    let mut c = w.checker();
    decode_fws_collector(rt, w, |t, d| c.message(t, d));
    c.finish();
    let mut c = w.checker();
    let mut pending = Vec::new();
    decode_fws_frames(rt, w, |t, fin, d| {
        pending.extend_from_slice(d);
        if fin {
            c.message(t, &pending);
            pending.clear();
        }
    });
    c.finish();
    let mut dst = vec![0; w.stream.len()];
    let n = copy_unmask_baseline(&mut dst, &w.stream, &w.frames);
    assert_eq!(dst[..n], w.messages.concat()[..], "{}: copy+unmask", w.name);
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(10);
}

/// What a timed column does with each message: hand it to `black_box`.
#[inline]
fn consume(text: bool, data: &[u8]) {
    black_box((text, data));
}

fn decode(c: &mut Criterion) {
    let rt = runtime();
    for w in decode_workloads() {
        check_decoders(&rt, &w);
        let mut group = c.benchmark_group(format!("decode/{}", w.name));
        configure(&mut group);
        group.throughput(Throughput::Bytes(w.payload_bytes()));
        let mut dst = vec![0u8; w.stream.len()];
        group.bench_function("memcpy", |b| {
            b.iter(|| memcpy_baseline(black_box(&mut dst), black_box(&w.stream)))
        });
        group.bench_function("copy_unmask", |b| {
            b.iter(|| copy_unmask_baseline(black_box(&mut dst), black_box(&w.stream), &w.frames))
        });
        group.bench_function("wsproto", |b| b.iter(|| decode_wsproto(&w, consume)));
        group.bench_function("wsproto_owned", |b| {
            b.iter(|| decode_wsproto_owned(&w, consume))
        });
        group.bench_function("tungstenite", |b| {
            b.iter(|| decode_tungstenite(&w, consume))
        });
        group.bench_function("fastwebsockets_frame", |b| {
            b.iter(|| decode_fws_frames(&rt, &w, |t, _, d| consume(t, d)))
        });
        group.bench_function("fastwebsockets_collector", |b| {
            b.iter(|| decode_fws_collector(&rt, &w, consume))
        });
        group.finish();
    }
}

// ---- encode ----------------------------------------------------------------
// Every column appends whole frames to a caller-owned `Vec<u8>` (cleared, not
// freed, between iterations): that buffer is what any writer must produce
// before the bytes go to a socket.

/// The encode payload sizes (issue 12's table).
const ENCODE_SIZES: [usize; 4] = [16, 1 << 10, 16 << 10, 1 << 20];

/// The fixed masking key of every masked column, so all of them do the same
/// work on the same bytes.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Binary messages of `size` bytes, about [`TOTAL_PAYLOAD`] in all.
fn encode_messages(size: usize) -> Vec<bytes::Bytes> {
    let mut rng = Rng(size as u64 + 1);
    (0..(TOTAL_PAYLOAD / size).max(1))
        .map(|_| {
            let mut m = Vec::with_capacity(size + 8);
            while m.len() < size {
                m.extend_from_slice(&rng.next().to_le_bytes());
            }
            m.truncate(size);
            bytes::Bytes::from(m)
        })
        .collect()
}

fn out_capacity(msgs: &[bytes::Bytes]) -> usize {
    msgs.iter().map(|m| m.len() + 14).sum()
}

/// A wsproto connection whose client keys are reproducible (a fixed seed).
fn wsproto_conn(client: bool) -> wsproto::Connection {
    use wsproto::{Config, Connection, MaskKeys, Role};
    let role = if client { Role::Client } else { Role::Server };
    Connection::new(role, Config::default().mask_keys(MaskKeys::Seeded(1)))
}

/// wsproto `Connection`, frames appended straight to the caller's buffer
/// (`send_binary_into`).
fn encode_wsproto(conn: &mut wsproto::Connection, msgs: &[bytes::Bytes], out: &mut Vec<u8>) {
    out.clear();
    for m in msgs {
        conn.send_binary_into(m, out).expect("an open connection");
    }
}

/// wsproto `Connection` the old way: `send_binary` into the connection's
/// own buffer, then the caller copies `pending_output` out.
fn encode_wsproto_send(conn: &mut wsproto::Connection, msgs: &[bytes::Bytes], out: &mut Vec<u8>) {
    out.clear();
    for m in msgs {
        conn.send_binary(m).expect("room in the output buffer");
    }
    let n = conn.pending_output().len();
    out.extend_from_slice(conn.pending_output());
    conn.consume_output(n);
}

/// wsproto's stateless frame encoder, `frame::encode_frame_into`.
fn encode_wsproto_frame(msgs: &[bytes::Bytes], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.clear();
    for m in msgs {
        wsproto::frame::encode_frame_into(out, true, wsproto::Opcode::Binary, m, mask);
    }
}

/// tungstenite at frame level: `Frame::format` into the `Vec` (`io::Write`).
fn encode_tungstenite_frame(msgs: &[bytes::Bytes], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    out.clear();
    for m in msgs {
        let mut frame = Frame::message(m.clone(), OpCode::Data(Data::Binary), true);
        frame.header_mut().mask = mask;
        frame.format(out).expect("a Vec takes every write");
    }
}

/// fastwebsockets at frame level: `Frame::fmt_head`, then the payload copied
/// after it (and masked in place with `fastwebsockets::unmask`: its public
/// API has no fused copy+mask).
fn encode_fws_frame(msgs: &[bytes::Bytes], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    use fastwebsockets::{Frame, OpCode, Payload};
    out.clear();
    let mut head = [0u8; 16];
    for m in msgs {
        let mut frame = Frame::new(true, OpCode::Binary, mask, Payload::Borrowed(m));
        let n = frame.fmt_head(&mut head);
        out.extend_from_slice(&head[..n]);
        let start = out.len();
        out.extend_from_slice(m);
        if let Some(key) = mask {
            fastwebsockets::unmask(&mut out[start..], key);
        }
    }
}

/// Decodes `wire` as the peer of `client` and checks it holds `msgs`.
fn check_encoded(name: &str, wire: &[u8], client: bool, msgs: &[bytes::Bytes]) {
    use wsproto::{Config, Connection, Event, Role};
    let role = if client { Role::Server } else { Role::Client };
    let mut conn = Connection::new(role, Config::default());
    conn.receive(wire);
    for (i, m) in msgs.iter().enumerate() {
        match conn.next_event() {
            Ok(Some(Event::Binary(b))) => assert!(b == *m, "{name}: message {i} differs"),
            other => panic!("{name}: message {i}: {other:?}"),
        }
    }
    assert_eq!(conn.next_event(), Ok(None), "{name}: trailing bytes");
}

fn encode(c: &mut Criterion) {
    for size in ENCODE_SIZES {
        let msgs = encode_messages(size);
        let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let cap = out_capacity(&msgs);
        for client in [false, true] {
            let role = if client {
                "client_masked"
            } else {
                "server_unmasked"
            };
            let mask = client.then_some(KEY);
            let mut conn = wsproto_conn(client);
            let mut out = Vec::with_capacity(cap);
            // Check every column once before timing it.
            encode_wsproto(&mut wsproto_conn(client), &msgs, &mut out);
            check_encoded("wsproto", &out, client, &msgs);
            encode_wsproto_send(&mut wsproto_conn(client), &msgs, &mut out);
            check_encoded("wsproto_send", &out, client, &msgs);
            encode_wsproto_frame(&msgs, mask, &mut out);
            check_encoded("wsproto_frame", &out, client, &msgs);
            encode_tungstenite_frame(&msgs, mask, &mut out);
            check_encoded("tungstenite_frame", &out, client, &msgs);
            encode_fws_frame(&msgs, mask, &mut out);
            check_encoded("fastwebsockets_frame", &out, client, &msgs);

            let mut group = c.benchmark_group(format!("encode/{role}/{size}"));
            configure(&mut group);
            group.throughput(Throughput::Bytes(total));
            let mut dst = vec![0u8; cap];
            group.bench_function("memcpy", |b| {
                b.iter(|| {
                    let mut at = 0;
                    for m in &msgs {
                        dst[at..at + m.len()].copy_from_slice(m);
                        at += m.len();
                    }
                    black_box(&dst);
                })
            });
            group.bench_function("copy_mask", |b| {
                b.iter(|| {
                    let mut at = 0;
                    for m in &msgs {
                        copy_xor(&mut dst[at..at + m.len()], m, KEY);
                        at += m.len();
                    }
                    black_box(&dst);
                })
            });
            group.bench_function("wsproto", |b| {
                b.iter(|| encode_wsproto(&mut conn, &msgs, black_box(&mut out)))
            });
            if client {
                // The default key source: the OS CSPRNG, drawn in batches
                // (every other wsproto column uses a fixed seed).
                let mut conn =
                    wsproto::Connection::new(wsproto::Role::Client, wsproto::Config::default());
                group.bench_function("wsproto_random", |b| {
                    b.iter(|| encode_wsproto(&mut conn, &msgs, black_box(&mut out)))
                });
            }
            group.bench_function("wsproto_send", |b| {
                b.iter(|| encode_wsproto_send(&mut conn, &msgs, black_box(&mut out)))
            });
            group.bench_function("wsproto_frame", |b| {
                b.iter(|| encode_wsproto_frame(&msgs, mask, black_box(&mut out)))
            });
            group.bench_function("tungstenite_frame", |b| {
                b.iter(|| encode_tungstenite_frame(&msgs, mask, black_box(&mut out)))
            });
            group.bench_function("fastwebsockets_frame", |b| {
                b.iter(|| encode_fws_frame(&msgs, mask, black_box(&mut out)))
            });
            group.finish();
        }
    }
}

criterion_group! {
    name = codec;
    // No plots: rendering them took a large share of the run's time.
    config = Criterion::default().without_plots();
    targets = decode, encode
}

// ---- interleaved check ------------------------------------------------------
// Criterion times one column after another (1.5 s each): on a machine shared
// with other builds, load that comes and goes between two columns moves
// their ratio by 2x. `CODEC_INTERLEAVED=<rounds>` instead runs issue 12's
// key rows in rounds, every column of a workload once per round, back to
// back, and keeps each column's fastest round (the least disturbed).

/// A column: its name and one pass over the workload.
type Column<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Times `cols` in `rounds` interleaved rounds; the fastest time of each.
/// Each round starts at the next column, so none always runs right after
/// the same other one (whose leftovers in cache could favor it).
fn fastest(rounds: usize, cols: &mut [Column<'_>]) -> Vec<f64> {
    let n = cols.len();
    let mut best = vec![f64::INFINITY; n];
    for r in 0..rounds {
        for i in (0..n).map(|k| (k + r) % n) {
            let t = std::time::Instant::now();
            (cols[i].1)();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    best
}

/// One table row: wsproto GB/s, the best peer, the reference column.
fn row(name: &str, bytes: u64, cols: &[Column<'_>], best: &[f64], peers: &[&str], reference: &str) {
    let gbs = |col: &str| {
        let i = cols.iter().position(|(n, _)| *n == col).expect("a column");
        bytes as f64 / best[i] / 1e9
    };
    let ws = gbs("wsproto");
    let (peer_name, peer) =
        peers
            .iter()
            .map(|p| (*p, gbs(p)))
            .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let r = gbs(reference);
    println!(
        "| {name} | {ws:.2} | {peer:.2} ({peer_name}) | {:.2} | {reference} {r:.2} | {:.2} |",
        ws / peer,
        ws / r
    );
}

fn interleaved(rounds: usize) {
    let rt = runtime();
    println!(
        "| workload | wsproto GB/s | best peer GB/s | ×best peer | reference GB/s | ×reference |"
    );
    println!("|---|---|---|---|---|---|");
    // Decode sizes: `CODEC_INTERLEAVED_SIZES` (comma-separated), by default
    // the 16 B, 16 KiB and 1 MiB.
    let sizes =
        std::env::var("CODEC_INTERLEAVED_SIZES").unwrap_or_else(|_| "16,16384,1048576".to_string());
    let keep = |name: &str| {
        let size = name.rsplit('/').next().unwrap_or("");
        (name.starts_with("binary/") || name.starts_with("ascii/"))
            && sizes.split(',').any(|s| s == size)
    };
    for w in decode_workloads().into_iter().filter(|w| keep(&w.name)) {
        check_decoders(&rt, &w);
        let mut dst = vec![0u8; w.stream.len()];
        let wr = &w;
        let rt = &rt;
        let mut cols: Vec<Column<'_>> = vec![
            (
                "copy_unmask",
                Box::new(|| {
                    copy_unmask_baseline(black_box(&mut dst), black_box(&wr.stream), &wr.frames);
                }),
            ),
            ("wsproto", Box::new(move || decode_wsproto(wr, consume))),
            (
                "wsproto_reader",
                Box::new(move || decode_wsproto_reader(wr, consume)),
            ),
            (
                "tungstenite",
                Box::new(move || decode_tungstenite(wr, consume)),
            ),
            (
                "fastwebsockets_frame",
                Box::new(move || decode_fws_frames(rt, wr, |t, _, d| consume(t, d))),
            ),
            (
                "fastwebsockets_collector",
                Box::new(move || decode_fws_collector(rt, wr, consume)),
            ),
        ];
        let best = fastest(rounds, &mut cols);
        let peers = [
            "tungstenite",
            "fastwebsockets_frame",
            "fastwebsockets_collector",
        ];
        let name = format!("decode/{}", w.name);
        row(
            &name,
            w.payload_bytes(),
            &cols,
            &best,
            &peers,
            "copy_unmask",
        );
        let at = |col: &str| best[cols.iter().position(|(n, _)| *n == col).expect("a column")];
        println!(
            "| {name} via receive_from, 16 KiB reads | {:.2} | | | | {:.2} |",
            w.payload_bytes() as f64 / at("wsproto_reader") / 1e9,
            at("copy_unmask") / at("wsproto_reader")
        );
    }
    for size in ENCODE_SIZES {
        let msgs = encode_messages(size);
        let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let cap = out_capacity(&msgs);
        for client in [false, true] {
            let mask = client.then_some(KEY);
            let msgs = &msgs;
            let mut conn = wsproto_conn(client);
            let (mut o1, mut o2, mut o3) = (
                Vec::with_capacity(cap),
                Vec::with_capacity(cap),
                Vec::with_capacity(cap),
            );
            let mut dst = vec![0u8; cap];
            let reference: Column<'_> = if client {
                (
                    "copy_mask",
                    Box::new(move || {
                        let mut at = 0;
                        for m in msgs {
                            copy_xor(&mut dst[at..at + m.len()], m, KEY);
                            at += m.len();
                        }
                        black_box(&dst);
                    }),
                )
            } else {
                (
                    "memcpy",
                    Box::new(move || {
                        let mut at = 0;
                        for m in msgs {
                            dst[at..at + m.len()].copy_from_slice(m);
                            at += m.len();
                        }
                        black_box(&dst);
                    }),
                )
            };
            let ref_name = reference.0;
            let mut cols: Vec<Column<'_>> = vec![
                reference,
                (
                    "wsproto",
                    Box::new(move || encode_wsproto(&mut conn, msgs, black_box(&mut o1))),
                ),
                (
                    "tungstenite_frame",
                    Box::new(move || encode_tungstenite_frame(msgs, mask, black_box(&mut o2))),
                ),
                (
                    "fastwebsockets_frame",
                    Box::new(move || encode_fws_frame(msgs, mask, black_box(&mut o3))),
                ),
            ];
            let best = fastest(rounds, &mut cols);
            let role = if client {
                "client_masked"
            } else {
                "server_unmasked"
            };
            let peers = ["tungstenite_frame", "fastwebsockets_frame"];
            row(
                &format!("encode/{role}/{size}"),
                total,
                &cols,
                &best,
                &peers,
                ref_name,
            );
        }
    }
}

fn main() {
    if let Ok(rounds) = std::env::var("CODEC_INTERLEAVED") {
        interleaved(rounds.parse().expect("CODEC_INTERLEAVED=<rounds>"));
        return;
    }
    codec();
    Criterion::default().configure_from_args().final_summary();
}
