//! The binary: `--help`, a bad flag, and Ctrl-C (SIGINT) closing every
//! client with 1001 before a clean exit.

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

#[test]
fn sigint_closes_clients_with_1001_and_exits_cleanly() {
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0"])
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
