//! The incremental UTF-8 validator against `std::str::from_utf8` under
//! arbitrary splits, including the fail-fast property: after each chunk,
//! the validator has failed exactly when the bytes so far can no longer be
//! the start of valid UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsproto::utf8::Utf8Validator;
use wsproto_fuzz::Splitter;

/// True if `bytes` is valid UTF-8 or a valid prefix of it.
fn valid_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, text)) = data.split_first() else {
        return;
    };
    let mut split = Splitter::new(u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut v = Utf8Validator::new();
    let mut fed = 0;
    let mut failed = false;
    while fed < text.len() {
        let end = (fed + split.next(if seed & 1 == 0 { 4 } else { 200 })).min(text.len());
        let result = v.feed(&text[fed..end]);
        fed = end;
        match result {
            Ok(()) => assert!(valid_prefix(&text[..fed]), "missed an error by byte {fed}"),
            Err(e) => {
                assert!(!valid_prefix(&text[..fed]), "false error at {}", e.offset);
                let valid = std::str::from_utf8(text).unwrap_err().valid_up_to();
                assert!(e.offset as usize >= valid && e.offset as usize <= fed);
                failed = true;
                break;
            }
        }
    }
    if !failed {
        assert_eq!(v.is_boundary(), std::str::from_utf8(text).is_ok());
        assert_eq!(v.finish().is_ok(), std::str::from_utf8(text).is_ok());
    }
});
