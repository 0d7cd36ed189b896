//! The binary: `--help`, bad flags and out-of-range values, and Ctrl-C
//! (SIGINT) closing every client with 1001 before a clean exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wsproto::{blocking, Event};

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

#[test]
fn help_and_bad_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--history",
        "--max-connections",
        "--max-message-bytes",
        "--max-text",
        "--ping-interval",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["--history", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Runs the binary with `args` (after `--addr 127.0.0.1:0`, so a flag that is
/// wrongly accepted starts a harmless server); returns its exit code and
/// stderr. A server still running after 10 s is killed and fails the test.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--ephemeral"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} was accepted: the server started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 10 item 11: zero or out-of-range values of every numeric flag are
/// refused with exit code 2 and a message naming the flag, before anything
/// listens.
#[test]
fn zero_and_out_of_range_values_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["--history", "1000001"], "--history"),
        (&["--history", "18446744073709551616"], "--history"),
        (&["--history", "-1"], "--history"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-connections", "1048577"], "--max-connections"),
        (&["--max-message-bytes", "0"], "--max-message-bytes"),
        (&["--max-message-bytes", "1023"], "--max-message-bytes"),
        (&["--max-message-bytes", "67108865"], "--max-message-bytes"),
        (&["--max-text", "0"], "--max-text"),
        (&["--max-text", "65537"], "--max-text"),
        (
            &["--max-text", "2000", "--max-message-bytes", "1024"],
            "--max-text",
        ),
        (&["--max-header-bytes", "0"], "--max-header-bytes"),
        (&["--max-header-bytes", "1023"], "--max-header-bytes"),
        (&["--max-header-bytes", "1048577"], "--max-header-bytes"),
        (&["--control-burst", "0"], "--control-burst"),
        (&["--control-per-sec", "0"], "--control-per-sec"),
        (&["--max-queue-bytes", "0"], "--max-queue-bytes"),
        (&["--max-queue-bytes", "4096"], "--max-queue-bytes"),
        (&["--max-queue-bytes", "65535"], "--max-queue-bytes"),
        (&["--max-queue-bytes", "1073741825"], "--max-queue-bytes"),
        (
            &["--max-text", "60000", "--max-queue-bytes", "300000"],
            "--max-queue-bytes",
        ),
        (&["--handshake-timeout", "0"], "--handshake-timeout"),
        (&["--handshake-timeout", "3601"], "--handshake-timeout"),
        (&["--join-timeout", "0"], "--join-timeout"),
        (&["--join-timeout", "3601"], "--join-timeout"),
        (&["--ping-interval", "0"], "--ping-interval"),
        (&["--ping-interval", "86401"], "--ping-interval"),
        (
            &["--ping-interval", "18446744073709551615"],
            "--ping-interval",
        ),
        (&["--pong-timeout", "0"], "--pong-timeout"),
        (&["--pong-timeout", "86401"], "--pong-timeout"),
        (&["--rate-burst", "0"], "--rate-burst"),
        (&["--rate-burst", "1000001"], "--rate-burst"),
        (&["--rate-per-sec", "0"], "--rate-per-sec"),
        (&["--rate-per-sec", "1000001"], "--rate-per-sec"),
        (&["--reactor-threads", "0"], "--reactor-threads"),
        (&["--reactor-threads", "65"], "--reactor-threads"),
    ];
    for (args, flag) in cases {
        let (code, stderr) = run_bounded(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("chat-server: {flag}")),
            "{args:?}: {stderr}"
        );
    }
}

/// The bounds themselves are accepted: a server started with every flag at
/// its least (then at its greatest) value listens and stops on SIGINT.
#[test]
fn boundary_values_are_accepted() {
    // (flag, least, greatest)
    let bounds = [
        ("--history", "0", "1000000"),
        ("--max-connections", "1", "1048576"),
        ("--max-message-bytes", "1024", "67108864"),
        ("--max-text", "1", "67108864"),
        ("--max-header-bytes", "1024", "1048576"),
        ("--max-queue-bytes", "65536", "1073741824"),
        ("--handshake-timeout", "1", "3600"),
        ("--join-timeout", "1", "3600"),
        ("--ping-interval", "1", "86400"),
        ("--pong-timeout", "1", "86400"),
        ("--rate-burst", "1", "1000000"),
        ("--rate-per-sec", "1", "1000000"),
        ("--control-burst", "1", "1000000"),
        ("--control-per-sec", "1", "1000000"),
        ("--reactor-threads", "1", "64"),
    ];
    let least: Vec<&str> = bounds.iter().flat_map(|&(f, lo, _)| [f, lo]).collect();
    let greatest: Vec<&str> = bounds.iter().flat_map(|&(f, _, hi)| [f, hi]).collect();
    for args in [least, greatest] {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--ephemeral"])
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = lines
            .by_ref()
            .take(20)
            .map_while(Result::ok)
            .any(|l| l.starts_with("chat: listening on"));
        // SAFETY: sending a signal to our own child process by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: no exit after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(listening, "{args:?} did not start");
        assert!(status.success(), "{args:?}: {status}");
    }
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_cleanly() {
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--ephemeral"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited early").unwrap();
        if let Some(rest) = line.strip_prefix("chat: listening on http://") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let (mut ws, _) = blocking::connect(&format!("ws://{addr}/ws")).unwrap();
    ws.set_idle_timeout(Some(Duration::from_secs(5)));
    ws.send(r#"{"type":"join","nick":"a"}"#).unwrap();
    assert!(matches!(ws.read().unwrap(), Event::Text(t) if t.as_str().contains("welcome")));
    // SAFETY: sending a signal to our own child process by its pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let code = loop {
        match ws.read().unwrap() {
            Event::Close(f) => break f.code.as_u16(),
            _ => continue,
        }
    };
    assert_eq!(code, 1001);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log = log.join().unwrap();
    assert!(log.iter().any(|l| l.contains("connected")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
}
