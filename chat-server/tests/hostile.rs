//! Hostile clients against the real binary (issue 10, "Then go further").
//!
//! Each scenario starts its own `chat-server` child process on 127.0.0.1
//! (port 0, `--quiet`), attacks it with raw TCP clients, and asserts:
//!
//! 1. the server's RSS (`VmRSS` of `/proc/<pid>/status`, sampled every
//!    20 ms) stays under the bound stated in the scenario;
//! 2. a healthy pair in the room keeps working: 50 probes at 20/s all reach
//!    both the receiver and the sender (its ack), p99 latency of the 100
//!    samples under 50 ms. A miss is not counted when the machine was
//!    overloaded meanwhile: the test process (a canary thread) or one of
//!    the server's threads (`/proc/<pid>/task/*/schedstat`) waited 25 ms or
//!    more for a CPU; it still fails past 500 ms;
//! 3. the hostile client gets a defined answer: a close code, an HTTP
//!    status, or TCP dropped within a stated time;
//! 4. the `--quiet` server writes nothing to stderr (no per-connection log
//!    line, no panic).
//!
//! Scenarios run one at a time (about 70 s for the file on two cores).
//! `HOSTILE_P99_MS` sets the latency bound; `HOSTILE_SERVER_BIN` runs the
//! suite against another build of the server (e.g. release).
//!
//! Limits and answers are DESIGN.md "Limits and timeouts" and "Fan-out and
//! slow clients", plus issue 10. Every socket read has a deadline and every
//! loop a bound; the server is killed when its guard drops, also on panic.
//! Run with `-- --nocapture` to see the measured bounds (`hostile: ...`).

#[macro_use]
#[path = "common/hostile_kit.rs"]
mod kit;

use kit::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1024; // in KiB, as /proc reports RSS

/// A flood is stopped when the server passes this, to spare the machine
/// (before issue 10 the server grew without bound under a ping flood).
const ABORT_RSS_KIB: u64 = 512 * MIB;

/// Scenarios run one at a time: each measures a healthy client's latency,
/// which another scenario's attack on the same two cores would distort,
/// and the 2,000-socket ones need the descriptors and ports to themselves.
/// Serial, the whole file takes about a minute.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // The test process needs ~2,100 descriptors; CI runners often start
    // with a soft limit of 1024 and a higher hard limit.
    let _ = chat_server::raise_fd_limit();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Joins `nick` (unless empty), then floods `batch` without ever reading
/// until the connection fails or `for_` passes. Returns the client (to drain later),
/// the flood's start and when the socket failed.
fn never_reading_flood(
    addr: SocketAddr,
    nick: &str,
    batch: Vec<u8>,
    for_: Duration,
    abort: Arc<AtomicBool>,
) -> JoinHandle<(Ws, Instant, Option<Instant>, u64)> {
    let mut ws = if nick.is_empty() {
        Ws::connect(addr)
    } else {
        Ws::join(addr, nick).0
    };
    std::thread::spawn(move || {
        let start = Instant::now();
        let (bytes, failed) = flood(&mut ws.stream, &batch, start + for_, &|| {
            abort.load(Ordering::Acquire)
        });
        (ws, start, failed, bytes)
    })
}

/// Issue 10 item 1: a joined client that sends Pings as fast as it can and
/// never reads, the same unjoined, and one that sends unsolicited Pongs.
/// Every byte queued for a client counts toward one bound, and control
/// frames are rate-limited: each is closed 1008 and dropped, the server's
/// memory stays bounded.
///
/// Before issue 10: Pongs bypassed `--max-queue-bytes`, nothing limits the
/// control-frame rate, so a Ping flooder stayed connected while RSS grew
/// (519 MiB in 8 s here) and no flooder got an answer.
#[test]
fn ping_and_pong_floods_that_never_read_are_closed_1008_with_bounded_rss() {
    let sc = "ping-flood";
    let _serial = serial();
    let mut server = Server::start(&["--max-queue-bytes", "262144"]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "pf");
    let abort = Arc::new(AtomicBool::new(false));

    let ping_batch: Vec<u8> = (0..512)
        .flat_map(|_| frame(OP_PING, true, &[b'p'; 125]))
        .collect();
    let pong_batch: Vec<u8> = (0..512)
        .flat_map(|_| frame(OP_PONG, true, &[b'q'; 125]))
        .collect();
    let flood_for = Duration::from_secs(8);
    let floods = [
        ("pinger", ping_batch.clone()),
        ("", ping_batch),
        ("ponger", pong_batch),
    ]
    .map(|(nick, batch)| {
        let f = never_reading_flood(server.addr, nick, batch, flood_for, abort.clone());
        (
            if nick.is_empty() {
                "unjoined pinger"
            } else {
                nick
            },
            f,
        )
    });
    let guard = {
        let abort = abort.clone();
        let peak = watch.shared_peak();
        std::thread::spawn(move || {
            let until = Instant::now() + flood_for;
            while Instant::now() < until && !abort.load(Ordering::Acquire) {
                if peak.load(Ordering::Acquire) > ABORT_RSS_KIB {
                    abort.store(true, Ordering::Release);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // The room stays quiet for 3 s first: the old code only noticed an
    // overgrown queue when a room message is queued behind the Pongs.
    std::thread::sleep(Duration::from_secs(3));
    let probes = healthy.probe_standard();

    let mut v = Verdict::new(sc);
    for (name, flooder) in floods {
        let (mut ws, start, failed, bytes) = flooder.join().unwrap();
        let answer = ws.expect_close(Instant::now() + Duration::from_secs(3));
        let ended = failed.map(|t| t - start);
        note!(
            "{sc}: {name} wrote {} before the server dropped it after {ended:?}; answer {answer:?} (after {} other frames)",
            mib(bytes / 1024),
            ws.skipped
        );
        if !matches!(answer, Answer::Close(1008, _) | Answer::Dropped(_)) {
            v.fail(format!(
                "{name} got no 1008 and was not dropped: {answer:?}"
            ));
        }
        // Closed at once (rate), then dropped within 2 s (DESIGN "Fan-out
        // and slow clients"); 3 s of slack for a loaded CI machine.
        if !ended.is_some_and(|d| d < Duration::from_secs(5)) {
            v.fail(format!(
                "{name} still connected after flooding for {flood_for:?} ({ended:?})"
            ));
        }
    }
    abort.store(true, Ordering::Release);
    let _ = guard.join();
    probes.join().unwrap();
    v.healthy(&healthy, &server);
    let lefts = healthy.wait_lefts(
        &["pinger".into(), "ponger".into()],
        Instant::now() + Duration::from_secs(3),
    );
    v.check(lefts.iter().all(Option::is_some), || {
        format!("no left for a flooder: {lefts:?}")
    });
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.check(server.alive(), || "the server died".into());
    v.quiet(&server);
    v.finish();
}

/// Item 1, second half: a client that reads, but sends more than 20
/// control frames per second after a burst of 40, is closed 1008; one that
/// pings at 15/s for 4 s (60 pings, past the burst, under the refill) is
/// not.
///
/// Before issue 10: nothing counted control frames; 800 Pings or Pongs
/// in 4 s were all accepted.
#[test]
fn control_frames_over_20_per_second_after_a_burst_of_40_are_closed_1008() {
    let sc = "control-rate";
    let _serial = serial();
    let server = Server::start(&[]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "cr");

    // (nick, opcode, period, expect a close)
    let cases = [
        ("ping-fast", OP_PING, Duration::from_millis(5), true),
        ("pong-fast", OP_PONG, Duration::from_millis(5), true),
        ("ping-polite", OP_PING, Duration::from_millis(66), false),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(nick, op, period, hostile)| {
            let (mut ws, _) = Ws::join(server.addr, nick);
            let mut w = ws.stream.try_clone().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let writer = std::thread::spawn(move || {
                let start = Instant::now();
                let mut sent = 0u32;
                while !s.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(4) {
                    if w.write_all(&frame(op, true, b"k")).is_err() {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(
                        (start + period * sent).saturating_duration_since(Instant::now()),
                    );
                }
                sent
            });
            std::thread::spawn(move || {
                let start = Instant::now();
                let deadline = start + Duration::from_secs(5);
                let mut pongs = 0;
                let answer = loop {
                    match ws.next_frame(deadline) {
                        Ok(f) if f.opcode == OP_PONG => pongs += 1,
                        Ok(f) => {
                            if let Some((c, r)) = f.close() {
                                break Answer::Close(c, r);
                            }
                        }
                        Err(End::Timeout) => break Answer::Nothing,
                        Err(e) => break Answer::Dropped(e),
                    }
                };
                let at = start.elapsed();
                stop.store(true, Ordering::Release);
                let sent = writer.join().unwrap();
                (nick, hostile, answer, at, sent, pongs)
            })
        })
        .collect();
    let probes = healthy.probe_standard();
    let mut v = Verdict::new(sc);
    for run in runs {
        let (nick, hostile, answer, at, sent, pongs) = run.join().unwrap();
        note!("{sc}: {nick} sent {sent} control frames, got {pongs} pongs, answer {answer:?} after {at:?}");
        if hostile && !(matches!(answer, Answer::Close(1008, _)) && at < Duration::from_secs(3)) {
            v.fail(format!(
                "{nick} ({sent} frames in {at:?}) was not closed 1008 within 3 s: {answer:?}"
            ));
        }
        if !hostile && (answer != Answer::Nothing || (nick.starts_with("ping") && pongs != sent)) {
            v.fail(format!(
                "{nick} (15/s): {answer:?}, {pongs} pongs for {sent} pings"
            ));
        }
    }
    probes.join().unwrap();
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// One bad-frame case of `each_bad_frame_type_gets_its_close_code`.
struct BadFrame {
    name: &'static str,
    /// Sent (repeated up to 256 KiB) right after the upgrade.
    bytes: Vec<u8>,
    repeat: bool,
    /// Acceptable close codes.
    codes: &'static [u16],
    /// The echoed reason, where one is required.
    reason: Option<&'static str>,
}

/// "Many clients each flooding a different frame type": each gets the close
/// code RFC 6455 and DESIGN.md assign, within 3 s, and TCP is dropped
/// within 2 s after that (no client answers our Close here).
#[test]
fn each_bad_frame_type_gets_its_close_code() {
    let sc = "bad-frames";
    let _serial = serial();
    let server = Server::start(&[]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "bf");
    let who = br#"{"type":"who"}"#;
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    huge.extend_from_slice(&[0u8; 4096]);
    let mut msb = vec![0x81, 0xff];
    msb.extend_from_slice(&u64::MAX.to_be_bytes());
    msb.extend_from_slice(&[1, 2, 3, 4]);
    let mut empty_fragments = frame(OP_TEXT, false, b"x");
    for _ in 0..140_000 {
        empty_fragments.extend(frame(OP_CONT, false, b""));
    }
    let mut interleaved = frame(OP_TEXT, false, b"a");
    interleaved.extend(frame(OP_TEXT, true, b"b"));
    let cases = vec![
        BadFrame {
            name: "binary",
            bytes: frame(OP_BINARY, true, b"xx"),
            repeat: true,
            codes: &[1003],
            reason: None,
        },
        BadFrame {
            name: "continuation-without-start",
            bytes: frame(OP_CONT, true, b"x"),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "length-2^62",
            bytes: huge,
            repeat: false,
            codes: &[1009],
            reason: None,
        },
        BadFrame {
            name: "length-msb-set",
            bytes: msb,
            repeat: false,
            codes: &[1002, 1009],
            reason: None,
        },
        BadFrame {
            name: "oversized-text",
            bytes: frame(OP_TEXT, true, &vec![b'a'; 65537]),
            repeat: false,
            codes: &[1009],
            reason: None,
        },
        BadFrame {
            name: "empty-fragments",
            bytes: empty_fragments,
            repeat: false,
            codes: &[1009],
            reason: None,
        },
        BadFrame {
            name: "unmasked",
            bytes: frame_with(0x81, false, who),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "rsv1",
            bytes: frame_with(0xc1, true, who),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "opcode-3",
            bytes: frame_with(0x83, true, who),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "opcode-0xB",
            bytes: frame_with(0x8b, true, b""),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "fragmented-ping",
            bytes: frame(OP_PING, false, b"p"),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "ping-126-bytes",
            bytes: frame(OP_PING, true, &[0; 126]),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "text-mid-fragment",
            bytes: interleaved,
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "invalid-utf8",
            bytes: frame(OP_TEXT, true, &[0xce, 0xff]),
            repeat: true,
            codes: &[1007],
            reason: None,
        },
        BadFrame {
            name: "close-1005",
            bytes: close_frame(1005, ""),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "close-1-byte",
            bytes: frame(OP_CLOSE, true, &[3]),
            repeat: true,
            codes: &[1002],
            reason: None,
        },
        BadFrame {
            name: "close-bad-utf8",
            bytes: frame(OP_CLOSE, true, &[3, 0xe8, 0xff]),
            repeat: true,
            codes: &[1007],
            reason: None,
        },
        // A close flood: one echo, with the peer's code and reason (issue
        // 10 item 11), then TCP goes.
        BadFrame {
            name: "close-flood",
            bytes: close_frame(1000, "bye now"),
            repeat: true,
            codes: &[1000],
            reason: Some("bye now"),
        },
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|case| {
            let mut ws = Ws::connect(server.addr);
            std::thread::spawn(move || {
                let mut bytes = case.bytes.clone();
                while case.repeat && bytes.len() < 256 << 10 {
                    bytes.extend_from_slice(&case.bytes);
                }
                let start = Instant::now();
                let _ = ws.stream.set_write_timeout(Some(Duration::from_secs(3)));
                let _ = ws.stream.write_all(&bytes);
                let answer = ws.expect_close(start + Duration::from_secs(5));
                let at = start.elapsed();
                let dropped = ws.expect_eof(Instant::now() + Duration::from_secs(5));
                (case, answer, at, dropped, start.elapsed())
            })
        })
        .collect();
    let rate = {
        // Text over the rate: `rate_limited` per refused frame, the 20th
        // refusal within a minute is answered, then close 1008.
        let mut ws = Ws::connect(server.addr);
        std::thread::spawn(move || {
            let start = Instant::now();
            let batch: Vec<u8> = (0..200).flat_map(|_| text(r#"{"type":"who"}"#)).collect();
            ws.send(&batch).unwrap();
            let (mut limited, mut other) = (0, 0);
            let answer = loop {
                match ws.next_json(start + Duration::from_secs(5)) {
                    Ok(v) if v["code"] == "rate_limited" => limited += 1,
                    Ok(_) => other += 1,
                    Err(a) => break a,
                }
            };
            (answer, limited, other, start.elapsed())
        })
    };
    let probes = healthy.probe_standard();
    let mut v = Verdict::new(sc);
    for run in runs {
        let (case, answer, at, dropped, total) = run.join().unwrap();
        note!(
            "{sc}: {} -> {answer:?} after {at:?}, TCP dropped: {dropped} after {total:?}",
            case.name
        );
        let ok = match &answer {
            Answer::Close(c, r) => {
                case.codes.contains(c) && case.reason.map_or(true, |want| want == r)
            }
            _ => false,
        };
        if !ok || at > Duration::from_secs(3) || !dropped {
            v.fail(format!(
                "{}: expected close {:?}{} within 3 s then TCP dropped, got {answer:?} after {at:?}, dropped {dropped}",
                case.name,
                case.codes,
                case.reason.map(|r| format!(" {r:?}")).unwrap_or_default()
            ));
        }
    }
    let (answer, limited, other, at) = rate.join().unwrap();
    note!(
        "{sc}: text-rate -> {limited} rate_limited, {other} other replies, {answer:?} after {at:?}"
    );
    if !(matches!(answer, Answer::Close(1008, _)) && limited >= 1) {
        v.fail(format!(
            "text-rate: expected rate_limited then 1008, got {limited} x rate_limited, {answer:?}"
        ));
    }
    probes.join().unwrap();
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Slow consumers: in a busy room (four members posting 4,096
/// CJK characters 20 times a second each, ~1 MiB/s), a member that reads
/// one byte per second, one that never reads, and one that only sends Pings
/// and looks for Pongs (reading 64 bytes per Ping) are each closed 1008 once
/// their queue passes `--max-queue-bytes` (256 KiB here) and dropped within
/// 2 s; the others get their `left` and keep receiving every message.
#[test]
fn slow_and_non_reading_consumers_are_closed_1008_others_unaffected() {
    let sc = "slow-consumers";
    let _serial = serial();
    let server = Server::start(&["--max-queue-bytes", "262144"]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "sc");
    let slow: Vec<String> = ["one-byte-per-second", "never-reads", "pong-only"]
        .map(String::from)
        .to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<(Ws, String)>> = slow
        .iter()
        .cloned()
        .map(|nick| {
            let (mut ws, _) = Ws::join(server.addr, &nick);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(25);
                let mut how = String::from("still open");
                while !stop.load(Ordering::Acquire) && Instant::now() < until {
                    let r = match nick.as_str() {
                        "one-byte-per-second" => {
                            std::thread::sleep(Duration::from_secs(1));
                            ws.sip(1, Duration::from_millis(100))
                        }
                        "pong-only" => {
                            std::thread::sleep(Duration::from_millis(500));
                            if ws.send(&frame(OP_PING, true, b"alive?")).is_err() {
                                Err(End::Reset)
                            } else {
                                ws.sip(64, Duration::from_millis(100))
                            }
                        }
                        _ => {
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(0)
                        }
                    };
                    if let Err(e) = r {
                        how = format!("{e:?} while sipping");
                        break;
                    }
                }
                (ws, how)
            })
        })
        .collect();
    let start = Instant::now();
    let cjk: String = "漢".repeat(4096);
    let spammers: Vec<Spammer> = (0..4)
        .map(|i| {
            Spammer::start(
                server.addr,
                &format!("spam-{i}"),
                &cjk,
                Duration::from_millis(50),
            )
        })
        .collect();
    let probes = healthy.probe_standard();
    let lefts = healthy.wait_lefts(&slow, start + Duration::from_secs(25));
    stop.store(true, Ordering::Release);
    probes.join().unwrap();
    let mut v = Verdict::new(sc);
    v.healthy(&healthy, &server);
    drop(spammers);
    for (nick, (client, left)) in slow.iter().zip(clients.into_iter().zip(&lefts)) {
        let (mut ws, how) = client.join().unwrap();
        // Drain what the server sent: its last frame must be Close 1008 (if
        // the Close fitted) and TCP must be gone.
        let answer = ws.expect_close(Instant::now() + Duration::from_secs(10));
        let gone = matches!(answer, Answer::Dropped(_))
            || ws.expect_eof(Instant::now() + Duration::from_secs(5));
        let after = left.map(|t| t - start);
        note!("{sc}: {nick}: left after {after:?}; answer {answer:?} after {} frames; TCP gone {gone}; client saw {how}", ws.skipped);
        let ok = after.is_some_and(|d| d < Duration::from_secs(20))
            && matches!(answer, Answer::Close(1008, _) | Answer::Dropped(_))
            && gone;
        if !ok {
            v.fail(format!(
                "{nick}: left {after:?}, answer {answer:?}, gone {gone}"
            ));
        }
    }
    let (peak, _) = watch.stop();
    v.rss(peak, 96 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Opens `n` sockets on `threads` threads; `open` makes one (and returns
/// when it was opened). Fails the test if any cannot be opened.
fn open_many<T: Send + 'static>(
    n: usize,
    threads: usize,
    open: impl Fn(usize) -> std::io::Result<T> + Send + Sync + 'static,
) -> Vec<Vec<(T, Instant)>> {
    let open = Arc::new(open);
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let open = open.clone();
            std::thread::spawn(move || {
                (t * per..((t + 1) * per).min(n))
                    .map(|i| {
                        let s = open(i).unwrap_or_else(|e| panic!("socket {i}: {e}"));
                        (s, Instant::now())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// 2,000 sockets finish the handshake and never join: each is closed 1008
/// "join timeout" (`--join-timeout 2`), the healthy pair is unaffected, RSS
/// stays under 64 MiB. Twenty sentinels opened last, read at once, time
/// the close precisely (2 s, plus the 1 s timer tick, plus load).
#[test]
fn two_thousand_upgraded_sockets_that_never_join_get_1008_join_timeout() {
    let sc = "never-join";
    let _serial = serial();
    let server = Server::start(&["--join-timeout", "2"]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "nj");
    let addr = server.addr;
    let start = Instant::now();
    let probes = healthy.probe_standard();
    let groups = open_many(2000, 4, move |_| {
        Ws::try_connect(addr, Duration::from_secs(10))
    });
    let opened = start.elapsed();
    let sentinels: Vec<_> = (0..20)
        .map(|_| (Ws::connect(addr), Instant::now()))
        .collect();
    let mut v = Verdict::new(sc);
    let mut sentinel_times = Vec::new();
    for (mut ws, at) in sentinels {
        let answer = ws.expect_close(at + Duration::from_secs(10));
        sentinel_times.push(at.elapsed());
        v.check(answer == Answer::Close(1008, "join timeout".into()), || {
            format!("a sentinel got {answer:?}")
        });
    }
    let readers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                let mut latest = Duration::ZERO;
                for (mut ws, at) in group {
                    let a = ws.expect_close(at + Duration::from_secs(12));
                    latest = latest.max(at.elapsed());
                    if a != Answer::Close(1008, "join timeout".into()) {
                        bad.push(a);
                    }
                }
                (bad, latest)
            })
        })
        .collect();
    let mut bad = Vec::new();
    let mut latest = Duration::ZERO;
    for r in readers {
        let (b, l) = r.join().unwrap();
        bad.extend(b);
        latest = latest.max(l);
    }
    probes.join().unwrap();
    let (min, max) = (
        sentinel_times.iter().min().unwrap(),
        sentinel_times.iter().max().unwrap(),
    );
    note!("{sc}: 2000 upgraded in {opened:?}; sentinels closed after {min:?}..{max:?}; every close read within {latest:?} of its upgrade; {} wrong answers", bad.len());
    v.check(bad.is_empty(), || {
        format!("{} sockets got {:?}", bad.len(), &bad[..bad.len().min(5)])
    });
    // 2 s, plus up to 1 s of timer tick, plus load.
    v.check(
        *min >= Duration::from_millis(1900) && *max < Duration::from_secs(4),
        || format!("--join-timeout 2 closed the sentinels after {min:?}..{max:?}"),
    );
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 32 * MIB);
    v.quiet(&server);
    v.finish();
}

/// 2,000 sockets that never finish the HTTP head (plus ten that drip one
/// byte every 250 ms, slowloris) are dropped, without an answer, once
/// `--handshake-timeout 2` passes; afterwards the server's threads are back
/// to the baseline and its RSS near it (no leak per connection).
#[test]
fn two_thousand_unfinished_handshakes_are_dropped_without_leaking() {
    let sc = "never-handshake";
    let _serial = serial();
    let server = Server::start(&["--handshake-timeout", "2"]);
    let mut healthy = Healthy::join(server.addr, "nh");
    std::thread::sleep(Duration::from_millis(200));
    let (base_rss, base_threads) = (server.rss_kib(), server.threads());
    let watch = server.watch();
    let addr = server.addr;
    let partial = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n";
    let start = Instant::now();
    let probes = healthy.probe_standard();
    let drip = std::thread::spawn(move || {
        let mut socks: Vec<(TcpStream, Instant, Option<Duration>)> = (0..10)
            .map(|_| (TcpStream::connect(addr).unwrap(), Instant::now(), None))
            .collect();
        for round in 0..40 {
            if socks.iter().all(|(_, _, d)| d.is_some()) {
                break;
            }
            for (s, at, done) in socks.iter_mut().filter(|(_, _, d)| d.is_none()) {
                let byte = partial[round % partial.len()];
                if s.write_all(&[byte]).is_err() {
                    *done = Some(at.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        socks.iter().map(|(_, _, d)| *d).collect::<Vec<_>>()
    });
    let groups = open_many(2000, 4, move |_| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.write_all(partial)?;
        Ok(s)
    });
    let opened = start.elapsed();
    let during_threads = server.threads();
    // Sentinels opened once the crowd is in, read at once: they time the
    // drop precisely (the crowd is read late, so it only shows that every
    // socket was dropped without an answer).
    let sentinels: Vec<_> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(partial).unwrap();
            (s, Instant::now())
        })
        .collect();
    let mut sentinel_times = Vec::new();
    let mut bad = Vec::new();
    for (s, at) in sentinels {
        let (end, bytes) = read_to_drop(s, at + Duration::from_secs(10));
        sentinel_times.push(at.elapsed());
        if end == "timeout" || bytes > 0 {
            bad.push(format!(
                "sentinel: {end} after {:?}, {bytes} bytes",
                at.elapsed()
            ));
        }
    }
    let readers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for (s, at) in group {
                    let (end, bytes) =
                        read_to_drop(s, at.max(Instant::now()) + Duration::from_secs(8));
                    if end == "timeout" || bytes > 0 {
                        bad.push(format!("{end} after {:?}, {bytes} bytes", at.elapsed()));
                    }
                }
                bad
            })
        })
        .collect();
    for r in readers {
        bad.extend(r.join().unwrap());
    }
    let drips = drip.join().unwrap();
    probes.join().unwrap();
    // Threads end as their connection is dropped; allow the stragglers a
    // moment, bounded.
    let settle = Instant::now() + Duration::from_secs(5);
    while server.threads() > base_threads + 2 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after_rss, after_threads) = (server.rss_kib(), server.threads());
    let (peak, peak_threads) = watch.stop();
    note!(
        "{sc}: 2000 opened in {opened:?}; threads base {base_threads}, during {during_threads}, peak {peak_threads}, after {after_threads}; RSS base {}, peak {}, after {}; sentinels dropped after {:?}..{:?}; drips dropped after {drips:?}",
        mib(base_rss), mib(peak), mib(after_rss),
        sentinel_times.iter().min().unwrap(), sentinel_times.iter().max().unwrap()
    );
    let mut v = Verdict::new(sc);
    v.check(bad.is_empty(), || {
        format!(
            "{} sockets not dropped silently: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        )
    });
    for t in &sentinel_times {
        v.check(
            *t >= Duration::from_millis(1900) && *t < Duration::from_secs(4),
            || format!("--handshake-timeout 2 dropped a sentinel after {t:?}"),
        );
    }
    // A drip notices the drop at its next write, up to 250 ms late.
    v.check(
        drips
            .iter()
            .all(|d| d.is_some_and(|d| d < Duration::from_secs(4))),
        || format!("a slowloris drip outlived the 2 s deadline: {drips:?}"),
    );
    v.check(after_threads <= base_threads + 2, || {
        format!("threads {base_threads} -> {after_threads} once every socket went")
    });
    v.healthy(&healthy, &server);
    v.rss(peak, 128 * MIB);
    // glibc keeps up to 40 MiB of exited threads' stacks cached; past that,
    // memory must have gone back.
    v.check(after_rss < base_rss + 48 * MIB, || {
        format!(
            "RSS {} -> {} after every socket went",
            mib(base_rss),
            mib(after_rss)
        )
    });
    v.quiet(&server);
    v.finish();
}

/// Found while writing the scenario above: a burst of connections
/// overflows the listen backlog (std's `listen(fd, 128)`) while the
/// acceptor spawns a handshake thread per connection, and every connect
/// that arrives meanwhile, a healthy client's included, waits for a SYN
/// retransmit (1 s, then 3 s). 2,000 connects from four threads must each
/// complete in under 0.9 s.
///
/// Measured with the backlog at 128: 30-32 of 2,000 connects took 1.0 s;
/// with `listen(fd, 4096)`, none, and 68 ms for all 2,000.
#[test]
fn a_burst_of_2000_connects_never_waits_for_a_syn_retransmit() {
    let sc = "connect-burst";
    let _serial = serial();
    let server = Server::start(&["--handshake-timeout", "2"]);
    let addr = server.addr;
    let stalls = Arc::new(Mutex::new(Vec::new()));
    let st = stalls.clone();
    let start = Instant::now();
    let groups = open_many(2000, 4, move |_| {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        if t.elapsed() > Duration::from_millis(900) {
            st.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t.elapsed());
        }
        Ok(s)
    });
    let opened = start.elapsed();
    drop(groups);
    let stalls = stalls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    note!(
        "{sc}: 2000 connected in {opened:?}; {} waited for a SYN retransmit: {stalls:?}",
        stalls.len()
    );
    let mut v = Verdict::new(sc);
    v.check(stalls.is_empty(), || {
        format!(
            "{} of 2000 connects stalled >= 0.9 s (listen backlog overflow): {stalls:?}",
            stalls.len()
        )
    });
    v.quiet(&server);
    v.finish();
}

/// Reads until the server drops the connection: ("eof" | "reset" |
/// "timeout", bytes received).
fn read_to_drop(mut s: TcpStream, deadline: Instant) -> (&'static str, usize) {
    let mut got = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ("timeout", got);
        }
        let _ = s.set_read_timeout(Some(left));
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return ("eof", got),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return ("reset", got),
        }
    }
}

/// Pipelined garbage after a valid frame, in the same write: the join is
/// processed (welcome) and then the garbage gets a close 1002, and TCP goes
/// within 2 s. Also through the handshake's early-data path (upgrade
/// request, join and garbage in one write).
#[test]
fn garbage_pipelined_after_a_valid_join_gets_welcome_then_1002() {
    let sc = "pipelined-garbage";
    let _serial = serial();
    let server = Server::start(&[]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "pg");
    let join = |nick: &str| text(&json!({"type": "join", "nick": nick}).to_string());
    let mut random = garbage(0x5eed, 4096);
    random[0] |= 0x70; // RSV bits: a violation at the first byte (§5.2)
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("rsv-bits", false, [0xf1, 0x80, 1, 2, 3, 4].to_vec()),
        ("unmasked", false, frame_with(0x81, false, b"{}")),
        (
            "http-request",
            false,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("random", false, random.clone()),
        ("early-data-random", true, random),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, early, junk)| {
            let mut bytes = join(name);
            bytes.extend_from_slice(&junk);
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut ws = if early {
                    let mut ws = Ws::tcp(addr, Duration::from_secs(5)).unwrap();
                    let mut all = upgrade_request().into_bytes();
                    all.extend_from_slice(&bytes);
                    ws.send(&all).unwrap();
                    ws.read_upgrade(Instant::now() + Duration::from_secs(5))
                        .unwrap();
                    ws
                } else {
                    let mut ws = Ws::connect(addr);
                    ws.send(&bytes).unwrap();
                    ws
                };
                let start = Instant::now();
                let first = ws.next_json(start + Duration::from_secs(5));
                let answer = ws.expect_close(start + Duration::from_secs(5));
                let gone = ws.expect_eof(Instant::now() + Duration::from_secs(5));
                (name, first, answer, gone, start.elapsed())
            })
        })
        .collect();
    let probes = healthy.probe_standard();
    let mut v = Verdict::new(sc);
    for r in runs {
        let (name, first, answer, gone, at) = r.join().unwrap();
        note!(
            "{sc}: {name}: first {:?}, then {answer:?}, TCP gone {gone} after {at:?}",
            first.as_ref().map(|v| v["type"].clone())
        );
        let welcomed = first.as_ref().is_ok_and(|v| v["type"] == "welcome");
        if !welcomed || answer.code() != Some(1002) || !gone || at > Duration::from_secs(5) {
            v.fail(format!("{name}: {first:?} / {answer:?} / gone {gone}"));
        }
    }
    probes.join().unwrap();
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Joins `nick` and reads the welcome slowly (1,460-byte sips, a real
/// network's MSS, 1 ms apart), as a client whose receive window is small.
fn slow_join(addr: SocketAddr, nick: &str) -> (Ws, Result<(Value, usize), Answer>) {
    let mut ws = Ws::connect(addr);
    ws.send_json(&json!({"type": "join", "nick": nick}))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(f) = ws.buffered_frame() {
            if let Some((c, r)) = f.close() {
                return (ws, Err(Answer::Close(c, r)));
            }
            if let Some(v) = f.json() {
                return (ws, Ok((v, f.payload.len())));
            }
            continue;
        }
        if Instant::now() >= deadline {
            return (ws, Err(Answer::Nothing));
        }
        if let Err(e) = ws.sip(1460, Duration::from_millis(200)) {
            return (ws, Err(Answer::Dropped(e)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Fills the history with 100 messages of `text` (each acked before the
/// next, so the filler is never a slow consumer); returns the last id.
fn fill_history(ws: &mut Ws, text_: &str) -> u64 {
    let mut last = 0;
    for _ in 0..100 {
        ws.send_json(&json!({"type": "message", "text": text_}))
            .unwrap();
        loop {
            let v = ws
                .next_json(Instant::now() + Duration::from_secs(10))
                .unwrap_or_else(|a| panic!("filler: {a:?}"));
            if v["type"] == "message" && v["from"] == "filler" {
                last = v["id"].as_u64().unwrap();
                break;
            }
        }
    }
    last
}

/// Issue 10 item 5: 100 history messages of 4,096 CJK characters (a
/// 1.24 MB welcome before the fix) or of 4,096 x U+0001 (6 JSON bytes each, 2.46 MB)
/// no longer get a fresh joiner closed 1008: the welcome carries the newest
/// messages that fit in 256 KiB and says `"more":true`, `history` pages the
/// same way, and the joiner stays connected.
///
/// Before issue 10: the welcome carried all 100 (1.24 MB and 2.44 MB, no
/// `more`).
#[test]
fn welcome_and_history_fit_256_kib_say_more_and_never_trip_the_queue() {
    let sc = "big-welcome";
    let _serial = serial();
    let server = Server::start(&["--rate-burst", "400", "--rate-per-sec", "200"]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "bw");
    let (mut filler, _) = Ws::join(server.addr, "filler");
    const CAP: usize = 256 << 10;
    let mut v = Verdict::new(sc);
    for (kind, body) in [("cjk", "漢".repeat(4096)), ("u0001", "\u{1}".repeat(4096))] {
        let last = fill_history(&mut filler, &body);
        let probes = healthy.probe_standard();
        let nick = format!("fresh-{kind}");
        let (mut ws, welcome) = slow_join(server.addr, &nick);
        probes.join().unwrap();
        let (w, len) = match welcome {
            Ok(w) => w,
            Err(a) => {
                v.fail(format!("{kind}: no welcome, got {a:?}"));
                continue;
            }
        };
        let history = w["history"].as_array().cloned().unwrap_or_default();
        note!(
            "{sc}: {kind}: welcome {len} bytes, {} history messages, more {}",
            history.len(),
            w["more"]
        );
        if w["type"] != "welcome"
            || len > CAP
            || w["more"] != json!(true)
            || history.is_empty()
            || !history.iter().any(|m| m["id"].as_u64() == Some(last))
        {
            v.fail(format!(
                "{kind}: welcome of {len} bytes (cap {CAP}), more {}, {} messages, newest id {:?} (want it to hold {last})",
                w["more"],
                history.len(),
                history.last().map(|m| m["id"].clone())
            ));
            continue;
        }
        // `history` before the oldest one shown pages the same way.
        let oldest = history[0]["id"].as_u64().unwrap();
        ws.send_json(&json!({"type": "history", "before": oldest, "limit": 100}))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            match ws.next_frame(deadline) {
                Ok(f) => match f.json() {
                    Some(v) if v["type"] == "history" => break Ok((v, f.payload.len())),
                    Some(_) => {}
                    None => {
                        if let Some((c, r)) = f.close() {
                            break Err(Answer::Close(c, r));
                        }
                    }
                },
                Err(e) => break Err(Answer::Dropped(e)),
            }
        };
        match reply {
            Ok((page, len)) => {
                let n = page["messages"].as_array().map_or(0, Vec::len);
                let more = &page["more"];
                note!("{sc}: {kind}: history page {len} bytes, {n} messages, more {more}");
                if len > CAP || n == 0 || *more != json!(true) {
                    v.fail(format!(
                        "{kind}: history page of {len} bytes, {n} messages, more {more}"
                    ));
                }
            }
            Err(a) => v.fail(format!("{kind}: history request answered {a:?}")),
        }
    }
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Sends a raw HTTP request; returns the status line and how long the
/// answer took (bounded).
fn http(addr: SocketAddr, request: &[u8]) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 << 10 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&out);
    (
        head.lines().next().unwrap_or("").to_owned(),
        start.elapsed(),
    )
}

/// The HTTP-level answers of the limits table, for hostile requests:
/// a foreign Origin (403), an upgrade carrying a body (400), a bare-LF head
/// (400 at once, not a 5 s drop), a head over 8 KiB (431), a non-GET (405),
/// the absolute form served like the origin form, and the connection
/// limit (503 with Retry-After).
#[test]
fn hostile_http_requests_get_their_status() {
    let sc = "http";
    let server = Server::start(&["--max-connections", "8"]);
    let addr = server.addr;
    let up = |extra: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    let big = format!("X-Big: {}\r\n", "a".repeat(9000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "foreign origin",
            up("Origin: http://evil.example\r\n"),
            " 403 ",
        ),
        ("null origin", up("Origin: null\r\n"), " 403 "),
        (
            "same-host origin",
            up(&format!("Origin: http://{addr}\r\n")),
            " 101 ",
        ),
        ("no origin (not a browser)", up(""), " 101 "),
        (
            "upgrade with Content-Length",
            up("Content-Length: 10\r\n") + "0123456789",
            " 400 ",
        ),
        (
            "upgrade with Transfer-Encoding",
            up("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n",
            " 400 ",
        ),
        (
            "bare LF head",
            "GET /healthz HTTP/1.1\nHost: x\n\n".into(),
            " 400 ",
        ),
        (
            "head over 8 KiB",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{big}\r\n"),
            " 431 ",
        ),
        (
            "POST",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
            " 405 ",
        ),
        (
            "absolute form",
            format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
            " 200 ",
        ),
        (
            "garbage",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".into(),
            " 400 ",
        ),
    ];
    let mut v = Verdict::new(sc);
    for (name, req, want) in cases {
        let (status, took) = http(addr, req.as_bytes());
        note!("{sc}: {name}: {status:?} in {took:?}");
        if !status.contains(want) || took > Duration::from_secs(2) {
            v.fail(format!(
                "{name}: want{want}within 2 s, got {status:?} after {took:?}"
            ));
        }
    }
    // Fill --max-connections with idle upgraded sockets (retrying while
    // the sockets above are still being released): the next gets 503.
    let _held: Vec<Ws> = (0..8)
        .map(|_| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Ws::try_connect(addr, Duration::from_secs(5)) {
                    Ok(ws) => break ws,
                    Err(e) if Instant::now() < deadline => {
                        note!("{sc}: retrying a held connection: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("{sc}: cannot hold a connection: {e}"),
                }
            }
        })
        .collect();
    let (status, took) = http(addr, up("").as_bytes());
    note!("{sc}: over --max-connections: {status:?} in {took:?}");
    if !status.contains(" 503 ") {
        v.fail(format!("over --max-connections: want 503, got {status:?}"));
    }
    v.quiet(&server);
    v.finish();
}

/// Replies the client asked for are bounded per reply, not exempt from the
/// queue: a member that asks for 256 KiB `history` pages 40 times (the
/// rate burst) and never reads is closed 1008 and dropped like any slow
/// consumer, and the server's memory stays bounded (a reply exemption
/// would turn `history` into a 10 MB-per-second amplifier).
#[test]
fn history_requests_that_are_never_read_are_closed_1008() {
    let sc = "reply-flood";
    let _serial = serial();
    let server = Server::start(&["--rate-burst", "200", "--rate-per-sec", "200"]);
    let watch = server.watch();
    let mut healthy = Healthy::join(server.addr, "rf");
    let (mut filler, _) = Ws::join(server.addr, "filler");
    fill_history(&mut filler, &"漢".repeat(4096));
    let (mut greedy, _) = Ws::join(server.addr, "greedy");
    let asks: Vec<u8> = (0..40)
        .flat_map(|_| text(r#"{"type":"history","limit":100}"#))
        .collect();
    let start = Instant::now();
    greedy.send(&asks).unwrap();
    let probes = healthy.probe_standard();
    let left = healthy.wait_lefts(&["greedy".into()], start + Duration::from_secs(10))[0];
    probes.join().unwrap();
    let answer = greedy.expect_close(Instant::now() + Duration::from_secs(10));
    let gone = matches!(answer, Answer::Dropped(_))
        || greedy.expect_eof(Instant::now() + Duration::from_secs(5));
    let after = left.map(|t| t - start);
    note!("{sc}: 40 x 256 KiB history asked, never read: left after {after:?}, answer {answer:?} after {} replies, TCP gone {gone}", greedy.skipped);
    let mut v = Verdict::new(sc);
    v.check(after.is_some_and(|d| d < Duration::from_secs(5)), || {
        format!("the greedy member was not dropped in 5 s: left {after:?}")
    });
    v.check(
        matches!(answer, Answer::Close(1008, _) | Answer::Dropped(_)) && gone,
        || format!("the greedy member got {answer:?}, TCP gone {gone}"),
    );
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Join/leave churn: four threads connect, join, close and start over for
/// as long as the healthy probes run (at most 2,000 cycles each). Every
/// session is cleaned up (the nicks are free again, the welcome lists only
/// the healthy pair and the newcomer), the healthy pair keeps its latency,
/// and threads and memory return to the baseline.
#[test]
fn join_leave_churn_leaks_nothing() {
    let sc = "churn";
    let _serial = serial();
    let server = Server::start(&[]);
    let mut healthy = Healthy::join(server.addr, "ch");
    std::thread::sleep(Duration::from_millis(200));
    let (base_rss, base_threads) = (server.rss_kib(), server.threads());
    let watch = server.watch();
    let addr = server.addr;
    let probes = healthy.probe_standard();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                let mut cycles = 0;
                while cycles < 2000 && !stop.load(Ordering::Acquire) {
                    let (mut ws, _) = Ws::join(addr, &format!("churn-{t}-{cycles}"));
                    ws.send(&close_frame(1000, "bye")).unwrap();
                    let a = ws.expect_close(Instant::now() + Duration::from_secs(5));
                    if !matches!(a, Answer::Close(1000, _)) {
                        bad.push(a);
                    }
                    cycles += 1;
                }
                (bad, cycles)
            })
        })
        .collect();
    probes.join().unwrap();
    stop.store(true, Ordering::Release);
    let mut bad = Vec::new();
    let mut cycles = 0;
    for w in workers {
        let (b, c) = w.join().unwrap();
        bad.extend(b);
        cycles += c;
    }
    let took = start.elapsed();
    let mut v = Verdict::new(sc);
    v.check(bad.is_empty(), || {
        format!(
            "{} cycles ended badly: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        )
    });
    v.healthy(&healthy, &server);
    // Every nick is free again.
    let (mut again, w) = Ws::join(addr, "CHURN-3-0");
    let users = w["users"].as_array().map_or(0, Vec::len);
    v.check(users == 3, || {
        format!("the welcome after the churn lists {users} users: {w}")
    });
    let _ = again.send(&close_frame(1000, ""));
    let settle = Instant::now() + Duration::from_secs(5);
    while server.threads() > base_threads + 2 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after_rss, after_threads) = (server.rss_kib(), server.threads());
    let (peak, _) = watch.stop();
    note!(
        "{sc}: {cycles} cycles in {took:?}; threads {base_threads} -> {after_threads}; RSS base {}, peak {}, after {}",
        mib(base_rss), mib(peak), mib(after_rss)
    );
    v.check(after_threads <= base_threads + 2, || {
        format!("threads {base_threads} -> {after_threads}")
    });
    v.check(after_rss < base_rss + 16 * MIB, || {
        format!(
            "RSS {} -> {} after the churn",
            mib(base_rss),
            mib(after_rss)
        )
    });
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// A message left unfinished: 1,000 members each send a 60 KiB non-final
/// text fragment and hold it. The server keeps what it must (the partial
/// message, at most `--max-message-bytes` each) and no more: RSS grows by
/// at most 1.5 x the parked bytes, and the healthy pair is unaffected.
/// (Nothing bounds how long a started message may stay unfinished: a client
/// that answers Pings can hold one forever. See the report.)
#[test]
fn parked_partial_messages_cost_what_they_hold() {
    let sc = "parked-fragments";
    let _serial = serial();
    let server = Server::start(&[]);
    let mut healthy = Healthy::join(server.addr, "pk");
    std::thread::sleep(Duration::from_millis(200));
    let base_rss = server.rss_kib();
    let watch = server.watch();
    let addr = server.addr;
    const PARKED: usize = 60 << 10;
    let groups = open_many(1000, 4, move |i| {
        let (mut ws, _) = Ws::join(addr, &format!("park-{i}"));
        ws.send(&frame(OP_TEXT, false, &vec![b'x'; PARKED]))?;
        Ok(ws)
    });
    // Probe while the messages are parked (the join storm before it is
    // the churn scenario's business).
    let probes = healthy.probe_standard();
    probes.join().unwrap();
    let held = server.rss_kib();
    let mut v = Verdict::new(sc);
    v.healthy(&healthy, &server);
    // Still open: a parked message is not a violation.
    let mut open = 0;
    for g in &groups {
        for (ws, _) in g {
            let mut buf = [0u8; 1];
            let _ = ws.stream.set_nonblocking(true);
            match ws.stream.peek(&mut buf) {
                Ok(0) => {}
                Ok(_) => open += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => {}
            }
        }
    }
    drop(groups);
    let (peak, _) = watch.stop();
    let parked_kib = (1000 * PARKED / 1024) as u64;
    note!(
        "{sc}: 1000 x {} KiB parked: RSS {} -> {} (peak {}), {open} still open",
        PARKED / 1024,
        mib(base_rss),
        mib(held),
        mib(peak)
    );
    v.check(open == 1000, || {
        format!("only {open} of 1000 parked members still open")
    });
    v.rss(peak, base_rss + parked_kib * 3 / 2 + 16 * MIB);
    v.quiet(&server);
    v.finish();
}

/// Presence amplification: five members rename 20 times a second each
/// (their rate limit allows it) in a crowded room, so every rename fans out
/// to every member. The healthy pair still gets every message within the
/// latency bound and memory stays bounded (the silent members' kernel
/// buffers absorb the notices).
///
/// The crowd is 1,000 (100,000 notices/s) in a release build of the tests
/// and 300 (30,000/s) in a debug one, whose server is ~30x slower at
/// fan-out. Measured
/// with 1,000 members: healthy p50 12.5 ms, p99 19 ms (release); p50 211 ms,
/// p99 573 ms (debug). A rename fans out under the room lock, so the
/// others' messages wait behind it: DESIGN's v2 "Presence that scales" is
/// the answer for big rooms.
#[test]
fn rename_storm_in_a_crowded_room_keeps_latency() {
    let sc = "rename-storm";
    let _serial = serial();
    let server = Server::start(&[]);
    let mut healthy = Healthy::join(server.addr, "rs");
    let addr = server.addr;
    let members = if cfg!(debug_assertions) { 300 } else { 1000 };
    let crowd = open_many(members, 4, move |i| Ok(Ws::join(addr, &format!("m-{i}")).0));
    let watch = server.watch();
    let stop = Arc::new(AtomicBool::new(false));
    let renamers: Vec<_> = (0..5)
        .map(|r| {
            let (mut ws, _) = Ws::join(addr, &format!("rn-{r}"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u32;
                while !stop.load(Ordering::Acquire) && n < 200 {
                    let nick = format!("rn-{r}-{}", n % 2);
                    if ws
                        .send_json(&json!({"type": "nick", "nick": nick}))
                        .is_err()
                    {
                        break;
                    }
                    n += 1;
                    std::thread::sleep(
                        (start + Duration::from_millis(50) * n)
                            .saturating_duration_since(Instant::now()),
                    );
                }
                (ws, n)
            })
        })
        .collect();
    let start = Instant::now();
    let probes = healthy.probe_standard();
    probes.join().unwrap();
    stop.store(true, Ordering::Release);
    let renames: u32 = renamers.into_iter().map(|r| r.join().unwrap().1).sum();
    let took = start.elapsed();
    let mut v = Verdict::new(sc);
    v.healthy(&healthy, &server);
    let (peak, _) = watch.stop();
    note!(
        "{sc}: {renames} renames in {took:?} fanned out to {} members ({:.0} notices/s)",
        members + 7,
        f64::from(renames) * (members + 7) as f64 / took.as_secs_f64()
    );
    drop(crowd);
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}

/// `who` amplification: five members ask for the online list of a crowded
/// room 20 times a second each (and read the replies). Every reply
/// serializes the whole list; the healthy pair keeps its latency and memory
/// stays bounded. Same crowd sizes as the rename storm.
#[test]
fn who_storm_in_a_crowded_room_keeps_latency() {
    let sc = "who-storm";
    let _serial = serial();
    let server = Server::start(&[]);
    let mut healthy = Healthy::join(server.addr, "ws");
    let addr = server.addr;
    let members = if cfg!(debug_assertions) { 300 } else { 1000 };
    // Long nicks make the list as heavy as it gets: 32 characters each.
    let crowd = open_many(members, 4, move |i| {
        Ok(Ws::join(addr, &format!("{i:0>4}-{}", "w".repeat(27))).0)
    });
    let watch = server.watch();
    let askers: Vec<Spammer> = (0..5)
        .map(|i| {
            Spammer::sending(
                addr,
                &format!("asker-{i}"),
                &json!({"type": "who"}),
                Duration::from_millis(50),
            )
        })
        .collect();
    let probes = healthy.probe_standard();
    probes.join().unwrap();
    let mut v = Verdict::new(sc);
    v.healthy(&healthy, &server);
    drop(askers);
    let (peak, _) = watch.stop();
    note!("{sc}: 5 x 20 who/s in a room of {}", members + 7);
    drop(crowd);
    v.rss(peak, 64 * MIB);
    v.quiet(&server);
    v.finish();
}
