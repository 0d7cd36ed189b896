//! An arbitrary byte stream fed to a client-side `Connection` in arbitrary
//! chunks (down to one byte) must give the same events, the same final
//! error and the same output as feeding it all at once (through
//! `next_event` or `next_event_ref`); every error is a
//! documented one and its Close is queued (see `wsproto_fuzz::drive`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsproto::Role;
use wsproto_fuzz::{drive, Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = drive(Role::Client, stream, &mut || usize::MAX / 2, false);
    let mut split = Splitter::new(u64::from(seed) + 1);
    let max = if seed & 1 == 0 { 3 } else { 64 };
    // Borrowed events (`next_event_ref`) must be the same as owned ones.
    let borrowed = seed & 2 != 0;
    let chunked = drive(Role::Client, stream, &mut || split.next(max), borrowed);
    assert_eq!(whole, chunked);
});
