//! Regressions found by the fuzz targets (fuzz/), one test per finding,
//! each named after what it pins. The reproducers are also in the seed
//! corpora as `seed-regress-*`.

use wsproto::{Config, Connection, Opcode, ProtocolError, Role};

/// fuzz `connection_server` / `frame_header`: an oversized control frame
/// reported `len: 126` when only the 7-bit length had arrived and the real
/// length when the extended bytes were there, so the error depended on how
/// the stream was split. It now always reports the announced length.
#[test]
fn oversized_control_frame_error_does_not_depend_on_chunking() {
    let wire = [0x88u8, 0xFE, 0x00, 0x7F, 1, 2, 3, 4];
    let whole = {
        let mut c = Connection::new(Role::Server, Config::default());
        c.receive(&wire);
        c.next_event()
    };
    let mut c = Connection::new(Role::Server, Config::default());
    let mut bytewise = Ok(None);
    for b in wire {
        c.receive(&[b]);
        bytewise = c.next_event();
        if bytewise.is_err() {
            break;
        }
    }
    let expected = Err(ProtocolError::ControlFrameTooLong {
        opcode: Opcode::Close,
        len: 127,
    });
    assert_eq!(whole, expected);
    assert_eq!(bytewise, expected);
}
