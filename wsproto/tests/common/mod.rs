//! Helpers shared by the interop tests that run Python `websockets` as the
//! peer (`deflate_interop.rs`, `tls_interop.rs`): finding a Python that has
//! it, and running a Python client or server as a child process that never
//! outlives its test.

use std::io::{BufRead, BufReader};
use std::panic::UnwindSafe;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python to run: the one `WSPROTO_INTEROP_PYTHON` names (CI sets it to
/// a venv with `websockets`), else `python3`, whichever can `import`
/// `imports` first. None (and a note on stderr saying `what` is not run)
/// if neither can: the test then passes without running.
pub fn python(imports: &str, what: &str) -> Option<String> {
    let candidates = std::env::var("WSPROTO_INTEROP_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", &format!("import {imports}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!("no Python with `websockets`: {what} not run (set WSPROTO_INTEROP_PYTHON)");
    None
}

/// Waits for `child` at most `limit`, killing it past that.
pub fn wait(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs the Python client `script` with `args` (killed after `limit`),
/// asserts that it exited successfully and returns what it printed.
pub fn run_client(py: &str, script: &str, args: &[&str], limit: Duration) -> String {
    let child = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait(child, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Starts the Python server `script` with `args`, which prints its port
/// on its first line, and runs `test` with that port; the server is
/// killed afterwards, whether `test` passed or panicked.
pub fn with_server(py: &str, script: &str, args: &[&str], test: impl FnOnce(u16) + UnwindSafe) {
    let mut child = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // A server that dies before printing gives an empty line: the parse
    // below fails the test (after the kill).
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let result = std::panic::catch_unwind(|| {
        let port: u16 = line.trim().parse().expect("the server's port");
        test(port);
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
