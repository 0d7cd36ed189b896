//! When a message goes out zero-copy: its header framed by the connection,
//! its payload written from the caller's buffer as a second `IoSlice`.
//! One rule for the blocking and the tokio adapters.

use crate::connection::Connection;
use crate::error::Error;
use crate::frame::{self, Opcode, Role};

/// Smallest payload written vectored rather than copied into the output
/// buffer. Below it a copy costs less than the kernel's walk over a
/// second iovec (a judgment, not measured here: a 1 KiB copy is ~30 ns).
pub(crate) const VECTORED_MIN: usize = 1 << 10;

/// The frame header for sending `payload` as one unmasked message with
/// the payload written by the caller, if that is how it should go: a
/// server's payload (a client must mask, which is a copy anyway) of
/// [`VECTORED_MIN`] bytes or more, to a stream that writes vectored,
/// without compression (a compressed message is a new buffer anyway).
/// `None`: queue it on the connection as usual. The header passes the
/// same checks as [`Connection::send_binary`].
pub(crate) fn header(
    conn: &mut Connection,
    writes_vectored: bool,
    opcode: Opcode,
    payload_len: usize,
) -> Option<Result<([u8; frame::MAX_HEADER_LEN], usize), Error>> {
    // (deflate hook: a compressed message is a new buffer anyway.)
    if conn.role() != Role::Server
        || payload_len < VECTORED_MIN
        || conn.deflate_enabled()
        || !writes_vectored
    {
        return None;
    }
    Some(conn.unmasked_message_header(opcode, payload_len))
}
