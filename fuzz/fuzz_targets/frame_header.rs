//! The frame header parser on arbitrary bytes: a complete header re-encodes
//! to exactly the bytes it came from (the length encoding is minimal, so it
//! is canonical), violations are documented ones, and a verdict never
//! changes as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsproto::frame::{parse_header, ParsedHeader, Role, MAX_HEADER_LEN};
use wsproto_fuzz::check_protocol_error;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    let role = if selector & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let allowed_rsv = (selector >> 1) & 0b111;
    let verdict = parse_header(buf, role, allowed_rsv);
    match &verdict {
        Ok(ParsedHeader::Complete(h, n)) => {
            assert!(*n <= MAX_HEADER_LEN && *n <= buf.len());
            assert_eq!(*n, h.encoded_len());
            let mut out = [0; MAX_HEADER_LEN];
            assert_eq!(h.encode(&mut out), *n);
            assert_eq!(&out[..*n], &buf[..*n], "re-encoding is the identity");
            assert_eq!(
                h.mask.is_some(),
                role == Role::Server,
                "masking follows the role"
            );
            assert_eq!(h.rsv & !allowed_rsv, 0);
            assert!(h.payload_len >> 63 == 0);
            if h.opcode.is_control() {
                assert!(h.fin && h.payload_len <= 125);
            }
        }
        Ok(ParsedHeader::NeedMore) => assert!(buf.len() < MAX_HEADER_LEN),
        Err(e) => check_protocol_error(e),
    }
    // A prefix is either still undecided or already has the same verdict.
    for cut in 0..buf.len() {
        match parse_header(&buf[..cut], role, allowed_rsv) {
            Ok(ParsedHeader::NeedMore) => {}
            other => {
                if let Ok(ParsedHeader::Complete(_, n)) = other {
                    assert!(n <= cut);
                }
                assert_eq!(
                    &other,
                    &verdict,
                    "verdict changed between {} and {} bytes",
                    cut,
                    buf.len()
                );
                break;
            }
        }
    }
});
