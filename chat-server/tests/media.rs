//! Media (DESIGN.md v2, "Media (images)") over real sockets on 127.0.0.1:
//! `POST /upload` (each answer code, in the contract's order), `GET
//! /media/...` (headers, names, traversal), content addressing, the
//! magic-byte check, 413 before the body, the upload slots and deadline,
//! image messages in rooms and private messages, `unknown_media`, and the
//! index surviving a restart. Every socket read is bounded.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer until the server closes (every answer here is
/// `Connection: close`), within `WAIT`.
fn read_answer(s: &mut TcpStream) -> Answer {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut all = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 16 << 10];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading the answer: {e} after {:?}",
                String::from_utf8_lossy(&all)
            ),
        }
    }
    parse_answer(&all)
}

fn parse_answer(all: &[u8]) -> Answer {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(all)));
    let head = std::str::from_utf8(&all[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: all[end + 4..].to_vec(),
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body`, and reads the answer.
fn request(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("{head}\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    // The server may answer (and close) before the body is all sent.
    let _ = s.write_all(body);
    read_answer(&mut s)
}

fn upload(addr: SocketAddr, token: &str, mime: &str, body: &[u8]) -> Answer {
    request(
        addr,
        &format!(
            "POST /upload HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: {mime}\r\nContent-Length: {}",
            body.len()
        ),
        body,
    )
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, &format!("GET {path} HTTP/1.1"), b"")
}

// --- Small real images -----------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid `w` × `h` RGB PNG of one colour (stored, uncompressed deflate).
fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    };
    // Each row: filter type 0, then the pixels.
    let row: Vec<u8> = std::iter::once(0)
        .chain(rgb.iter().copied().cycle().take(3 * w as usize))
        .collect();
    let raw = row.repeat(h as usize);
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&(b << 16 | a).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", b"");
    out
}

/// A JPEG head (SOI, APP0, SOF0 with the size), enough for a header check.
fn jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    out.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xFF, 0xD9]);
    out
}

fn gif(w: u16, h: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0x3B]);
    out
}

fn token(w: &Value) -> String {
    w["token"].as_str().unwrap().to_owned()
}

fn media_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

// --- The tests -------------------------------------------------------------

/// Each answer of the contract, and that each check comes before the next:
/// a request failing several checks gets the first one's answer (401, 411,
/// 413, 415, 429).
#[test]
fn answers_come_in_the_contract_order() {
    let server = start(|c| {
        c.upload_rate = 2;
        c.max_upload_bytes = 64 << 10;
    });
    let addr = server.addr;
    let (mut alice, w) = Client::join(addr, "alice");
    let t = token(&w);
    let img = png(3, 2, [200, 30, 30]);

    // 401: no Authorization; another scheme; an unknown token. Each request
    // also fails every later check (no length, too large, wrong type).
    for auth in [
        "",
        "Authorization: Basic YWxpY2U6eA==\r\n",
        "Authorization: Bearer nope\r\n",
    ] {
        let a = request(
            addr,
            &format!("POST /upload HTTP/1.1\r\n{auth}Content-Type: text/html"),
            b"",
        );
        assert_eq!(a.status, 401, "{auth:?}");
        assert_eq!(a.header("WWW-Authenticate"), Some("Bearer"));
        assert_eq!(a.json()["error"], "unauthorized");
    }
    // The scheme is case-insensitive (RFC 6750 §2.1).
    let a = request(
        addr,
        &format!("POST /upload HTTP/1.1\r\nAuthorization: bearer {t}\r\nContent-Type: image/png\r\nContent-Length: {}", img.len()),
        &img,
    );
    assert_eq!(a.status, 201, "{:?}", String::from_utf8_lossy(&a.body));

    // 411: no length (and too large a type), or a chunked body.
    let a = request(
        addr,
        &format!("POST /upload HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Type: text/html"),
        b"",
    );
    assert_eq!(a.status, 411);
    let a = request(
        addr,
        &format!("POST /upload HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked"),
        b"0\r\n\r\n",
    );
    assert_eq!(a.status, 411);

    // 413 before 415: over the limit with a type not listed.
    let a = request(
        addr,
        &format!("POST /upload HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Type: text/html\r\nContent-Length: {}", (64 << 10) + 1),
        b"",
    );
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"], "too_large");

    // 415: a type not listed (with good PNG bytes), no type, image/svg+xml.
    for mime in ["text/html", "image/svg+xml", "image/jpg"] {
        assert_eq!(upload(addr, &t, mime, &img).status, 415, "{mime}");
    }
    let a = request(
        addr,
        &format!(
            "POST /upload HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Length: {}",
            img.len()
        ),
        &img,
    );
    assert_eq!(a.status, 415);
    // 415: bytes that are not the declared type (magic number), or no
    // image at all, or a header that does not decode.
    for (mime, bytes) in [
        ("image/jpeg", img.clone()),
        ("image/gif", img.clone()),
        ("image/png", jpeg(4, 4)),
        ("image/png", b"<svg onload=alert(1)>".to_vec()),
        ("image/png", b"\x89PNG".to_vec()),
        ("image/png", Vec::new()),
        ("image/gif", gif(0, 5)),
        ("image/png", png(1, 1, [0; 3])[..20].to_vec()),
    ] {
        let a = upload(addr, &t, mime, &bytes);
        assert_eq!(a.status, 415, "{mime} {bytes:?}");
        assert!(a.json()["message"].is_string());
    }
    // A size that would decode to gigabytes is refused like a bad header.
    let mut bomb = png(1, 1, [0; 3]);
    bomb[16..24].copy_from_slice(&[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60]);
    assert_eq!(upload(addr, &t, "image/png", &bomb).status, 415);

    // 429: rate 2 per minute, the first 201 above counts, so one more is
    // accepted; 415s did not count. Past the rate, bad bytes still get 415
    // (checked first) and good ones 429 with Retry-After.
    assert_eq!(upload(addr, &t, "image/gif", &gif(7, 9)).status, 201);
    let a = upload(addr, &t, "image/png", &png(2, 2, [1, 2, 3]));
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["error"], "rate_limited");
    let retry: u64 = a.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(upload(addr, &t, "image/jpeg", &img).status, 415);
    // The rate is per session: another member uploads.
    let (_bob, wb) = Client::join(addr, "bob");
    assert_eq!(
        upload(addr, &token(&wb), "image/png", &png(2, 2, [1, 2, 3])).status,
        201
    );

    // A session that left: its token is refused.
    alice.ws.close(wsproto::CloseCode::NORMAL, "bye").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let a = upload(addr, &t, "image/png", &img);
        if a.status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "token still accepted: {}",
            a.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // GET /upload is 405 naming POST; POST elsewhere is 405 naming GET.
    let a = get(addr, "/upload");
    assert_eq!((a.status, a.header("Allow")), (405, Some("POST")));
    let a = request(addr, "POST /ws HTTP/1.1\r\nContent-Length: 0", b"");
    assert_eq!((a.status, a.header("Allow")), (405, Some("GET")));
}

/// 413 comes from the `Content-Length` alone: the client sends only the
/// head and gets its answer, no body byte sent.
#[test]
fn too_large_is_refused_before_the_body_is_read() {
    let server = start(|_| {});
    let (_alice, w) = Client::join(server.addr, "alice");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            token(&w),
            (5 << 20) + 1
        )
        .as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(a.json()["message"].as_str().unwrap().contains("5242880"));
    // Exactly the limit is fine (it is a limit, not a bound below it):
    // the head alone then gets no answer until the body comes.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            token(&w),
            5 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Identical bytes give 201 and the same URL, one file on disk; other
/// bytes another URL. The file is served with the contract's headers.
#[test]
fn content_addressing_and_the_served_file() {
    let server = start(|_| {});
    let addr = server.addr;
    let (_a, wa) = Client::join(addr, "alice");
    let (_b, wb) = Client::join(addr, "bob");
    let img = png(5, 4, [10, 120, 250]);
    let first = upload(addr, &token(&wa), "image/png", &img);
    assert_eq!(
        first.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&first.body)
    );
    let j = first.json();
    let url = j["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/media/") && url.ends_with(".png"), "{url}");
    let hex = &url[7..71];
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(
        (
            j["type"].as_str(),
            j["bytes"].as_u64(),
            j["width"].as_u64(),
            j["height"].as_u64()
        ),
        (Some("image/png"), Some(img.len() as u64), Some(5), Some(4))
    );
    assert_eq!(first.header("Location"), Some(url.as_str()));
    let again = upload(addr, &token(&wb), "image/png", &img);
    assert_eq!(again.status, 201);
    assert_eq!(again.json()["url"], url.as_str());
    let other = upload(addr, &token(&wa), "image/png", &png(5, 4, [10, 120, 251]));
    assert_ne!(other.json()["url"], url.as_str());
    let files = media_files(server.handle().media_dir());
    assert_eq!(
        files.len(),
        2,
        "one file per content, no temporary left: {files:?}"
    );

    let a = get(addr, &url);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, img);
    assert_eq!(a.header("Content-Type"), Some("image/png"));
    assert_eq!(a.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(
        a.header("Content-Security-Policy"),
        Some("default-src 'none'")
    );
    assert_eq!(
        a.header("Cache-Control"),
        Some("public, max-age=31536000, immutable")
    );
    // The same hash with another extension is not the file.
    assert_eq!(get(addr, &format!("/media/{hex}.jpg")).status, 404);
    assert_eq!(get(addr, &format!("/media/{hex}.gif")).status, 404);
}

/// Only `^[0-9a-f]{64}\.(png|jpg|gif|webp)$` is looked up: every other
/// name is 404, whatever it points at.
#[test]
fn media_names_cannot_traverse() {
    let server = start(|_| {});
    let addr = server.addr;
    let (_a, w) = Client::join(addr, "alice");
    let url = upload(addr, &token(&w), "image/gif", &gif(2, 2)).json()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = &url[7..71];
    // A file beside the media directory that traversal would reach.
    let dir = server.handle().media_dir().to_path_buf();
    std::fs::write(dir.join(format!("{hex}.png.bak")), b"secret").unwrap();
    for path in [
        "/media/".to_owned(),
        "/media/..".to_owned(),
        "/media/../Cargo.toml".to_owned(),
        "/media/..%2fCargo.toml".to_owned(),
        "/media/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/media//etc/passwd".to_owned(),
        "/media/....//....//etc/passwd".to_owned(),
        format!("/media/{}.gif", hex.to_uppercase()),
        format!("/media/{hex}.GIF"),
        format!("/media/{hex}.png.bak"),
        format!("/media/{hex}.gif/"),
        format!("/media/{hex}.gif%00.png"),
        format!("/media/./{hex}.gif"),
        format!("/media/x/../{hex}.gif"),
        format!("/media/{}.gif", &hex[..63]),
        format!("/media/{}0.gif", hex),
        format!("/media/{}.gif", "0".repeat(64)),
        "/media/.tmp-00".to_owned(),
    ] {
        let a = get(addr, &path);
        assert_eq!(a.status, 404, "{path}");
        assert!(!a.body.windows(6).any(|w| w == b"secret"), "{path}");
    }
    assert_eq!(get(addr, &url).status, 200);
    // With a query string the path is still the name.
    assert_eq!(get(addr, &format!("{url}?x=1")).status, 200);
}

/// Image messages: in the lobby and a room (caption optional), in private
/// messages, in history; `unknown_media` for anything the server does not
/// hold, checked after `too_long`.
#[test]
fn image_messages_in_rooms_and_privates() {
    let server = start(|c| c.max_text = 50);
    let addr = server.addr;
    let (mut alice, wa) = Client::join(addr, "alice");
    let (mut bob, _) = Client::join(addr, "bob");
    alice.recv_type("joined");
    let url = upload(addr, &token(&wa), "image/png", &png(6, 3, [0, 0, 0])).json()["url"]
        .as_str()
        .unwrap()
        .to_owned();

    // No text: the broadcast carries the image, its size and "text":"".
    alice.send(json!({"type": "message", "image": url}));
    for c in [&mut alice, &mut bob] {
        let m = c.recv_type("message");
        assert_eq!(
            (
                m["room"].as_str(),
                m["from"].as_str(),
                m["text"].as_str(),
                m["image"].as_str()
            ),
            (Some("lobby"), Some("alice"), Some(""), Some(url.as_str())),
            "{m}"
        );
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(6), Some(3))
        );
        assert!(m["id"].is_u64() && m["ts"].is_u64());
    }
    // Empty text and a caption.
    alice.send(json!({"type": "message", "room": "lobby", "image": url, "text": ""}));
    assert_eq!(bob.recv_type("message")["text"], "");
    alice.send(json!({"type": "message", "image": url, "text": "look 👀"}));
    let m = bob.recv_type("message");
    assert_eq!(
        (m["text"].as_str(), m["image"].as_str()),
        (Some("look 👀"), Some(url.as_str()))
    );

    // In a room.
    for c in [&mut alice, &mut bob] {
        c.send(json!({"type": "enter", "room": "pics"}));
        c.recv_type("entered");
    }
    bob.send(json!({"type": "message", "room": "pics", "image": url, "text": "again"}));
    let m = alice.recv_type("message");
    assert_eq!(
        (m["room"].as_str(), m["image"].as_str(), m["width"].as_u64()),
        (Some("pics"), Some(url.as_str()), Some(6))
    );
    bob.recv_type("message");

    // Private, both ends.
    alice.send(json!({"type": "private", "to": "bob", "image": url}));
    for c in [&mut alice, &mut bob] {
        let p = c.recv_type("private");
        assert_eq!(
            (
                p["to"].as_str(),
                p["image"].as_str(),
                p["height"].as_u64(),
                p["text"].as_str()
            ),
            (Some("bob"), Some(url.as_str()), Some(3), Some("")),
            "{p}"
        );
    }

    // History keeps the image fields.
    alice.send(json!({"type": "history", "room": "pics"}));
    let h = alice.recv_type("history");
    assert_eq!(h["messages"][0]["image"], url.as_str());
    assert_eq!(h["messages"][0]["width"], 6);

    // Refusals, in order.
    let error = |c: &mut Client, msg: Value| {
        c.send(msg);
        let v = c.recv_type("error");
        v["code"].as_str().unwrap().to_owned()
    };
    let hex = &url[7..71];
    for bad in [
        format!("/media/{}.png", "0".repeat(64)),
        format!("/media/{hex}.jpg"),
        format!("/media/{}.png", hex.to_uppercase()),
        format!("http://{addr}{url}"),
        format!("{url}?x"),
        format!("/media/../{hex}.png"),
        "javascript:alert(1)".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            error(&mut alice, json!({"type": "message", "image": bad})),
            "unknown_media",
            "{bad}"
        );
        assert_eq!(
            error(
                &mut alice,
                json!({"type": "private", "to": "bob", "image": bad})
            ),
            "unknown_media",
            "{bad}"
        );
    }
    let unknown = format!("/media/{}.png", "0".repeat(64));
    let long = "x".repeat(51);
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "message", "image": unknown, "text": long})
        ),
        "too_long"
    );
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "private", "to": "bob", "image": unknown, "text": long})
        ),
        "too_long"
    );
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "private", "to": "nobody", "image": unknown})
        ),
        "unknown_user"
    );
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "message", "room": "nope", "image": unknown})
        ),
        "not_in_room"
    );
    assert_eq!(
        error(&mut alice, json!({"type": "message", "image": 5})),
        "bad_request"
    );
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "message", "image": url, "text": 5})
        ),
        "bad_request"
    );
    // Without an image, text is still required and non-empty (v1).
    assert_eq!(error(&mut alice, json!({"type": "message"})), "bad_request");
    assert_eq!(
        error(&mut alice, json!({"type": "message", "text": ""})),
        "bad_request"
    );
    assert_eq!(
        error(
            &mut alice,
            json!({"type": "message", "image": null, "text": ""})
        ),
        "bad_request"
    );
}

/// The index is the media directory: a restarted server on the same
/// directory serves and accepts what the last one stored, and a temporary
/// file a crash left behind is removed.
#[test]
fn stored_media_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("chat-media-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url;
    {
        let server = start(|c| c.media_dir = Some(dir.clone()));
        let (_a, w) = Client::join(server.addr, "alice");
        url = upload(server.addr, &token(&w), "image/jpeg", &jpeg(640, 480)).json()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.ends_with(".jpg"));
        server.stop().unwrap();
    }
    std::fs::write(dir.join(".tmp-deadbeef"), b"half an upload").unwrap();
    let server = start(|c| c.media_dir = Some(dir.clone()));
    assert_eq!(media_files(&dir), vec![url[7..].to_owned()]);
    let a = get(server.addr, &url);
    assert_eq!(
        (a.status, a.header("Content-Type")),
        (200, Some("image/jpeg"))
    );
    let (mut alice, _) = Client::join(server.addr, "alice");
    alice.send(json!({"type": "message", "image": url}));
    let m = alice.recv_type("message");
    assert_eq!(
        (m["width"].as_u64(), m["height"].as_u64()),
        (Some(640), Some(480))
    );
    server.stop().unwrap();
    assert!(dir.is_dir(), "a given directory is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With storage (`data`), images live in `DIR/media` beside the database,
/// and image messages (room and private) are stored with their image
/// fields: after a restart the welcome, `entered` and `history` replay
/// them as they were sent, and the image is still served.
#[test]
fn image_messages_are_stored_and_replayed_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("chat-media-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (url, sent_room, sent_lobby);
    {
        let d = dir.clone();
        let server = start(move |c| c.data = Some(d));
        assert_eq!(server.handle().media_dir(), dir.join("media"));
        let (mut alice, w) = Client::join(server.addr, "alice");
        let (mut bob, _) = Client::join(server.addr, "bob");
        url = upload(server.addr, &token(&w), "image/png", &png(3, 2, [1, 2, 3])).json()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(media_files(&dir.join("media")), vec![url[7..].to_owned()]);
        alice.send(json!({"type": "enter", "room": "pics"}));
        alice.recv_type("entered");
        alice.send(json!({"type": "message", "room": "pics", "image": url, "text": "a pixel"}));
        sent_room = alice.recv_type("message");
        alice.send(json!({"type": "message", "image": url}));
        sent_lobby = alice.recv_type("message");
        alice.send(json!({"type": "private", "to": "bob", "image": url}));
        let p = bob.recv_type("private");
        assert_eq!(
            (p["image"].as_str(), p["width"].as_u64()),
            (Some(&*url), Some(3))
        );
        drop((alice, bob));
        server.stop().unwrap();
    }
    let stored: i64 = rusqlite::Connection::open(dir.join("chat.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE image = ?1 AND width = 3 AND height = 2",
            [&url],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 3, "two room messages and a private one");
    let d = dir.clone();
    let server = start(move |c| c.data = Some(d));
    let (mut carol, w) = Client::join(server.addr, "carol");
    assert_eq!(
        w["history"].as_array().unwrap().last(),
        Some(&sent_lobby),
        "{w}"
    );
    carol.send(json!({"type": "enter", "room": "pics"}));
    let e = carol.recv_type("entered");
    assert_eq!(e["history"], json!([sent_room.clone()]), "{e}");
    carol.send(json!({"type": "history", "room": "pics"}));
    let h = carol.recv_type("history");
    assert_eq!(h["messages"], json!([sent_room]), "{h}");
    let a = get(server.addr, &url);
    assert_eq!(
        (a.status, a.header("Content-Type")),
        (200, Some("image/png"))
    );
    // And the index knows it: a new message may name it.
    carol.send(json!({"type": "message", "image": url}));
    assert_eq!(carol.recv_type("message")["height"], 2);
    drop(carol);
    server.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Uploads past `--max-concurrent-uploads` get 503 before their body is
/// read; a body that does not arrive within `--upload-timeout` gets 408
/// and frees its slot.
#[test]
fn upload_slots_and_the_body_deadline() {
    let server = start(|c| {
        c.max_concurrent_uploads = 1;
        c.upload_timeout = Duration::from_secs(1);
    });
    let addr = server.addr;
    let (_a, w) = Client::join(addr, "alice");
    let t = token(&w);
    let img = png(4, 4, [9, 9, 9]);
    // A slow client: the head and 10 bytes, then nothing.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            img.len()
        )
        .as_bytes(),
    )
    .unwrap();
    slow.write_all(&img[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let busy = upload(addr, &t, "image/png", &img);
    assert_eq!(busy.status, 503);
    assert!(busy.header("Retry-After").is_some());
    let started = Instant::now();
    let a = read_answer(&mut slow);
    assert_eq!(a.status, 408);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(upload(addr, &t, "image/png", &img).status, 201);
    let files = media_files(server.handle().media_dir());
    assert_eq!(
        files.len(),
        1,
        "the timed-out upload left nothing: {files:?}"
    );
}

/// One session cannot hold every upload slot: past two uploads in flight
/// its next one gets 503 while another member's upload still gets 201.
#[test]
fn one_session_cannot_take_every_upload_slot() {
    let server = start(|c| {
        c.max_concurrent_uploads = 32;
        c.upload_timeout = Duration::from_secs(2);
    });
    let addr = server.addr;
    let (_a, wa) = Client::join(addr, "alice");
    let (_b, wb) = Client::join(addr, "bob");
    let (ta, tb) = (token(&wa), token(&wb));
    let img = png(4, 4, [7, 7, 7]);
    // Two slow uploads of alice's: the head and 10 bytes, then nothing.
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                format!(
                    "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                    img.len()
                )
                .as_bytes(),
            )
            .unwrap();
            s.write_all(&img[..10]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let third = upload(addr, &ta, "image/png", &img);
    assert_eq!(
        third.status, 503,
        "a third upload in flight for one session"
    );
    assert_eq!(upload(addr, &tb, "image/png", &img).status, 201);
    // Once alice's stalled uploads time out, her slots come back.
    for mut s in slow {
        assert_eq!(read_answer(&mut s).status, 408);
    }
    assert_eq!(upload(addr, &ta, "image/png", &img).status, 201);
}

/// The page's policy names its own inline script and style by hash and
/// allows images only from the server and data:/blob: (the preview).
#[test]
fn the_page_has_a_strict_content_security_policy() {
    let server = start(|_| {});
    let a = get(server.addr, "/");
    assert_eq!(a.status, 200);
    let csp = a.header("Content-Security-Policy").unwrap().to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("img-src 'self' data: blob:"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let script = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert_eq!(script.matches("'sha256-").count(), 1, "{csp}");
    // The hash is of the script's text: a sha256 in base64 is 44 characters.
    let hash = script
        .split("'sha256-")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'');
    assert_eq!(hash.len(), 44, "{hash}");
}

/// The media flags are in `--help`, and values out of their ranges are
/// refused (exit code 2) before anything listens.
#[test]
fn media_flags_and_their_ranges() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_chat-server");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--max-upload-bytes",
        "--upload-rate",
        "--max-concurrent-uploads",
        "--upload-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for (flag, value) in [
        ("--max-upload-bytes", "0"),
        ("--max-upload-bytes", "1023"),
        ("--max-upload-bytes", "1073741825"),
        ("--upload-rate", "0"),
        ("--max-concurrent-uploads", "0"),
        ("--upload-timeout", "0"),
        ("--upload-timeout", "3601"),
    ] {
        // Bounded: a value wrongly accepted starts a server, killed here.
        let mut child = Command::new(bin)
            .args(["--addr", "127.0.0.1:0", flag, value])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{flag} {value} was accepted");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag));
    }
}
