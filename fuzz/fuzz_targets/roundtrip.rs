//! Arbitrary messages and fragmentations (with control frames between the
//! fragments) encoded by one role and decoded by the other, in arbitrary
//! chunks, come back identical, ending with the sender's Close.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsproto::{Bytes, CloseFrame, Config, Connection, Event, Opcode, Role};
use wsproto_fuzz::{sendable_code, Splitter};

#[derive(Arbitrary, Debug)]
enum Msg {
    Text(String, Vec<u16>),
    Binary(Vec<u8>, Vec<u16>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    client_sends: bool,
    msgs: Vec<Msg>,
    ping_between_fragments: bool,
    code: u16,
    reason: String,
    seed: u64,
}

fn control(p: &[u8]) -> &[u8] {
    &p[..p.len().min(125)]
}

fuzz_target!(|input: Input| {
    let (from, to) = if input.client_sends {
        (Role::Client, Role::Server)
    } else {
        (Role::Server, Role::Client)
    };
    let mut sender = Connection::new(from, Config::default());
    let mut expected = Vec::new();
    for msg in &input.msgs {
        let (opcode, data, cuts) = match msg {
            Msg::Ping(p) => {
                sender.ping(control(p)).unwrap();
                expected.push(Event::Ping(Bytes::copy_from_slice(control(p))));
                continue;
            }
            Msg::Pong(p) => {
                sender.pong(control(p)).unwrap();
                expected.push(Event::Pong(Bytes::copy_from_slice(control(p))));
                continue;
            }
            Msg::Text(s, cuts) => (Opcode::Text, s.as_bytes(), cuts),
            Msg::Binary(b, cuts) => (Opcode::Binary, &b[..], cuts),
        };
        let mut cuts: Vec<usize> = cuts
            .iter()
            .map(|&c| usize::from(c).min(data.len()))
            .collect();
        cuts.sort_unstable();
        cuts.truncate(16);
        if cuts.is_empty() {
            // Unfragmented messages go through the one-call senders.
            match msg {
                Msg::Text(s, _) => sender.send_text(s).unwrap(),
                _ => sender.send_binary(data).unwrap(),
            }
            expected.push(match msg {
                Msg::Text(s, _) => Event::Text(s.as_str().into()),
                _ => Event::Binary(Bytes::copy_from_slice(data)),
            });
            continue;
        }
        let mut op = opcode;
        let mut start = 0;
        for cut in cuts {
            sender.send_fragment(op, &data[start..cut], false).unwrap();
            if input.ping_between_fragments {
                sender.ping(b"between").unwrap();
                expected.push(Event::Ping(Bytes::from_static(b"between")));
            }
            op = Opcode::Continuation;
            start = cut;
        }
        sender.send_fragment(op, &data[start..], true).unwrap();
        expected.push(match opcode {
            Opcode::Text => Event::Text(std::str::from_utf8(data).unwrap().into()),
            _ => Event::Binary(Bytes::copy_from_slice(data)),
        });
    }
    let code = sendable_code(input.code);
    let mut reason = input.reason.as_str();
    while reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    sender.close(code, reason).unwrap();
    expected.push(Event::Close(CloseFrame {
        code,
        reason: reason.to_owned(),
    }));

    let wire = sender.take_output();
    let mut receiver = Connection::new(to, Config::default());
    let mut split = Splitter::new(input.seed);
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let end = (pos + split.next(300)).min(wire.len());
        receiver.receive(&wire[pos..end]);
        pos = end;
        while let Some(e) = receiver.next_event().expect("our own frames decode") {
            got.push(e);
        }
    }
    assert_eq!(got, expected);
    assert!(receiver.is_closed());
    // The receiver echoed the close code (no echo for 1005, which is never sent).
    assert_eq!(
        wsproto_fuzz::last_close_code(to, receiver.pending_output()),
        Some(code.as_u16())
    );
});
