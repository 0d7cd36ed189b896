//! The compressor and the bounded decompressor, over `zlib-rs`.
//!
//! Why `zlib-rs` directly rather than `flate2`: `flate2`'s default backend
//! (miniz_oxide) ignores window bits; with its `zlib-rs` feature it
//! supports 9..=15 but asserts on 8 for inflating too, and hides
//! `mem_level`. `zlib-rs` is what `flate2` would call, without the layer:
//! raw inflate with any window 8..=15, and the compressor's buffers sized
//! by `mem_level`. Pure Rust, so no C compiler is needed.

use super::DeflateParams;
use crate::error::ProtocolError;
use bytes::Bytes;
use zlib_rs::{Deflate, DeflateFlush, Inflate, InflateFlush, Status};

/// The 4 bytes a sync flush ends with, which RFC 7692 §7.2.1 strips from
/// every compressed message and §7.2.2 appends again before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib's `memLevel` for our compressor. In zlib-rs it only sizes the
/// literal buffer (1 << (memLevel + 6) symbols, 7 bytes each; the hash
/// table is fixed at 128 KiB): 8, zlib's default, costs 112 KiB, 5 costs
/// 14 KiB. Measured with zlib at level 6 (ratio, 8 vs 5): 300 chat JSON
/// messages of 93 B-3.7 KiB 5.26 vs 5.25 with context takeover, 3.08 vs
/// 3.08 without; 64 KiB slices of Autobahn's JSON 22.19 vs 22.20.
const MEM_LEVEL: i32 = 5;

/// The negotiated permessage-deflate state of one connection: a
/// compressor for what we send and a decompressor for what we receive,
/// each made on first use.
pub(crate) struct Codec {
    params: DeflateParams,
    /// `None` until the first compressed message, and again after
    /// `shrink` without context takeover.
    tx: Option<Deflate>,
    rx: Option<Inflate>,
    /// Compressed output, reused between messages. Its length is its
    /// usable size (kept zeroed past what was written, for the safe API).
    scratch: Vec<u8>,
    /// The sending half was moved to another connection (split).
    send_moved: bool,
    /// The receiving half belongs to another connection (split writer).
    recv_moved: bool,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("params", &self.params)
            .field("tx", &self.tx.is_some())
            .field("rx", &self.rx.is_some())
            .finish()
    }
}

impl Codec {
    pub(crate) fn new(mut params: DeflateParams) -> Self {
        // The fields are public: whatever a caller put there, never hand
        // zlib-rs a value its constructors panic on. A send window outside
        // 9..=15 means no compression (8 is the RFC's own case), a receive
        // window is read with at least 9 and at most 15 bits.
        if !(9..=15).contains(&params.send_window_bits) {
            params.send_window_bits = 8;
        }
        params.recv_window_bits = params.recv_window_bits.clamp(9, 15);
        params.level = params.level.clamp(1, 9);
        Self {
            params,
            tx: None,
            rx: None,
            scratch: Vec::new(),
            send_moved: false,
            recv_moved: false,
        }
    }

    /// True if RSV1 may arrive on this connection.
    pub(crate) fn receives(&self) -> bool {
        !self.recv_moved
    }

    /// True if this connection compresses what it sends.
    pub(crate) fn sends(&self) -> bool {
        !self.send_moved && self.params.compresses()
    }

    pub(crate) fn send_window_bits(&self) -> u8 {
        self.params.send_window_bits
    }

    /// Makes the compressor start afresh (a message compressed elsewhere
    /// went out in between).
    pub(crate) fn forget(&mut self) {
        if let Some(z) = self.tx.as_mut() {
            if !self.params.send_no_context_takeover {
                z.reset();
            }
        }
    }

    pub(crate) fn split_sender(&mut self) -> Codec {
        let mut sender = Codec::new(self.params.clone());
        sender.tx = self.tx.take();
        sender.recv_moved = true;
        self.send_moved = true;
        sender
    }

    pub(crate) fn shrink(&mut self) {
        if self.params.send_no_context_takeover {
            self.tx = None;
            self.scratch = Vec::new();
        }
        if self.params.recv_no_context_takeover {
            self.rx = None;
        }
    }

    /// Compresses one message (RFC 7692 §7.2.1): deflate with a sync
    /// flush, minus the final `00 00 ff ff`. `None` when the message goes
    /// out as it is.
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        // The 8-bit trap (RFC 7692 §7.1.2.1 lets a client ask for 8):
        // zlib-rs cannot make a raw deflater with a 256-byte window (its
        // constructor panics), so with 8 agreed nothing is compressed.
        let no_context = self.params.send_no_context_takeover;
        let min = if no_context {
            self.params.min_size.max(super::NO_CONTEXT_MIN_SIZE)
        } else {
            self.params.min_size
        };
        if !self.sends() || payload.len() < min {
            return None;
        }
        let len = self.deflate_sync(payload);
        let shrank = len.is_some_and(|len| {
            len >= 4 && self.scratch[len - 4..len] == TAIL && len - 4 < payload.len()
        });
        if no_context || !shrank {
            // Without context takeover every message starts afresh. And a
            // message we do not send compressed is not in the peer's
            // window, so our compressor must forget it too.
            if let Some(z) = self.tx.as_mut() {
                z.reset();
            }
        }
        let len = len?;
        shrank.then(|| &self.scratch[..len - 4])
    }

    /// Compresses one fragment of a message the caller fragments itself
    /// (RFC 7692 §6.1: the message is compressed as a whole, then split;
    /// here each fragment's bytes are deflated with a sync flush as they
    /// come, so a fragment can leave before the next is known). Only the
    /// last fragment drops the flush's `00 00 ff ff` (§7.2.1: the tail of
    /// the message); inside a message it is an empty stored block, valid
    /// deflate. The caller decided to compress on the first fragment and
    /// must send every fragment of the message through here.
    ///
    /// `None` only if zlib fails, which with room for its output and
    /// never an empty flush it does not.
    pub(crate) fn compress_fragment(&mut self, payload: &[u8], fin: bool) -> Option<&[u8]> {
        // No input, no call: a second sync flush in a row with nothing new
        // is zlib's Z_BUF_ERROR, and the stream is already byte-aligned
        // after the last flush (or fresh), so nothing is a valid fragment.
        // Except the last: the receiver appends `00 00 ff ff` (LEN and
        // NLEN of an empty stored block), so the message must end with a
        // stored block's header — one zero byte (BFINAL 0, BTYPE 00, then
        // padding to the byte).
        if payload.is_empty() {
            if fin && self.params.send_no_context_takeover {
                if let Some(z) = self.tx.as_mut() {
                    z.reset();
                }
            }
            return Some(if fin { &[0] } else { &[] });
        }
        let len = self.deflate_sync(payload);
        let len = match len {
            Some(len) if fin && len >= 4 && self.scratch[len - 4..len] == TAIL => Some(len - 4),
            Some(len) if fin && len > 0 => None, // a sync flush always ends with TAIL
            other => other,
        };
        if fin && self.params.send_no_context_takeover || len.is_none() {
            if let Some(z) = self.tx.as_mut() {
                z.reset();
            }
        }
        len.map(|len| &self.scratch[..len])
    }

    /// Deflates `payload` with a sync flush into `scratch`; the length
    /// written, `None` if zlib failed.
    fn deflate_sync(&mut self, payload: &[u8]) -> Option<usize> {
        let bits = self.params.send_window_bits;
        let level = i32::from(self.params.level);
        let z = self.tx.get_or_insert_with(|| {
            Deflate::new_with_config(zlib_rs::DeflateConfig {
                level,
                method: zlib_rs::Method::Deflated,
                window_bits: -i32::from(bits), // negative: raw deflate
                mem_level: MEM_LEVEL,
                strategy: zlib_rs::Strategy::Default,
            })
        });
        // Deflate's worst case is 5 bytes per 16 KiB stored block plus the
        // flush; start there and grow if ever needed.
        let want = payload.len() + payload.len() / 1024 + 64;
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
        let (start_in, start_out) = (z.total_in(), z.total_out());
        loop {
            let read = (z.total_in() - start_in) as usize;
            let written = (z.total_out() - start_out) as usize;
            let out = &mut self.scratch[written..];
            let room = out.len();
            if z.compress(&payload[read..], out, DeflateFlush::SyncFlush)
                .is_err()
            {
                return None;
            }
            let produced = (z.total_out() - start_out) as usize - written;
            if (z.total_in() - start_in) as usize == payload.len() && produced < room {
                break; // all input read and the flush fit
            }
            let len = self.scratch.len();
            self.scratch.resize(len * 2, 0);
        }
        Some((z.total_out() - start_out) as usize)
    }

    /// Inflates one message (RFC 7692 §7.2.2), appending the stripped
    /// `00 00 ff ff`, into a buffer that grows as output comes and never
    /// past `max` bytes.
    pub(crate) fn inflate(&mut self, data: &[u8], max: usize) -> Result<Bytes, ProtocolError> {
        // A window smaller than the sender's fails on a far distance; 9 is
        // the least zlib ever sends with (it turns 8 into 9): `new` made
        // this 9..=15.
        let bits = self.params.recv_window_bits;
        let z = self.rx.get_or_insert_with(|| Inflate::new(false, bits));
        let mut out = Vec::new();
        // Room for a typical ratio at first, then doubling: a small frame
        // that inflates hugely reaches `max` in a few steps, never past it.
        let first = data.len().saturating_mul(4).clamp(256, 64 << 10);
        let mut filled = 0;
        let mut result = Ok(());
        // True right after a final block: the appended tail is then not
        // part of any stream (it only completes a sync flush).
        let mut ended = false;
        'parts: for part in [data, &TAIL[..]] {
            if ended {
                break;
            }
            let mut read = 0;
            loop {
                if filled == out.len() {
                    if out.len() > max {
                        result = Err(ProtocolError::MessageTooLarge {
                            len: out.len() as u64,
                            max,
                        });
                        break 'parts;
                    }
                    // Doubling, to one byte past `max` (which tells
                    // "exactly max" from "more") and never beyond: exact
                    // reservations, so the buffer's capacity is its length.
                    let grow = out.len().max(first);
                    let mut len = out.len().saturating_add(grow);
                    if len >= max {
                        len = max.saturating_add(1);
                    }
                    out.reserve_exact(len - out.len());
                    out.resize(len, 0);
                }
                ended = false;
                let (in0, out0) = (z.total_in(), z.total_out());
                let status =
                    z.decompress(&part[read..], &mut out[filled..], InflateFlush::SyncFlush);
                let progress = (z.total_in() - in0) + (z.total_out() - out0) > 0;
                read += (z.total_in() - in0) as usize;
                filled += (z.total_out() - out0) as usize;
                match status {
                    Ok(Status::StreamEnd) => {
                        // A final block (allowed, §7.2.3.3): the next bytes,
                        // and the next message, start a new stream.
                        z.reset(false);
                        if read == part.len() {
                            ended = true;
                            break;
                        }
                    }
                    Ok(_) if read == part.len() && filled < out.len() => break,
                    // No progress with input and room left: zlib wants
                    // nothing more of this part.
                    Ok(_) if !progress && filled < out.len() => break,
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(ProtocolError::InvalidCompressedData(e.as_str()));
                        break 'parts;
                    }
                }
            }
        }
        if filled > max {
            result = Err(ProtocolError::MessageTooLarge {
                len: filled as u64,
                max,
            });
        }
        if result.is_err() || self.params.recv_no_context_takeover {
            // No context to keep; after an error the connection is closed.
            z.reset(false);
        }
        result?;
        out.truncate(filled);
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(params: DeflateParams) -> (Codec, Codec) {
        (Codec::new(params.clone()), Codec::new(params))
    }

    #[test]
    fn round_trip_with_and_without_context() {
        for nct in [false, true] {
            let params = DeflateParams {
                send_no_context_takeover: nct,
                recv_no_context_takeover: nct,
                ..DeflateParams::default()
            };
            let (mut tx, mut rx) = pair(params);
            let msg = b"{\"type\":\"message\",\"room\":\"lobby\",\"text\":\"hello hello hello\"}"
                .repeat(5);
            let msg = &msg[..];
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let c = tx.compress(msg).expect("compresses").to_vec();
                sizes.push(c.len());
                assert_eq!(&rx.inflate(&c, 1 << 20).unwrap()[..], msg);
            }
            // With context takeover, repeats shrink to a back-reference.
            assert_eq!(sizes[1] < sizes[0], !nct, "{sizes:?}");
        }
    }

    #[test]
    fn out_of_range_params_never_reach_a_panicking_constructor() {
        for bits in [0, 7, 8, 16, 255] {
            let p = DeflateParams {
                send_window_bits: bits,
                recv_window_bits: bits,
                level: bits,
                ..DeflateParams::default()
            };
            let (mut tx, mut rx) = pair(p);
            assert!(tx.compress(&[b'a'; 1000]).is_none(), "{bits}");
            let _ = rx.inflate(&[0xff; 8], 100);
        }
    }

    #[test]
    fn eight_bit_window_never_compresses() {
        let (mut tx, _) = pair(DeflateParams {
            send_window_bits: 8,
            ..DeflateParams::default()
        });
        assert!(tx.compress(&[b'a'; 10_000]).is_none());
        assert!(tx.tx.is_none(), "no deflater was made");
    }

    #[test]
    fn tiny_and_incompressible_messages_go_out_as_they_are() {
        let (mut tx, mut rx) = pair(DeflateParams::default());
        assert!(tx.compress(b"hi").is_none());
        // Without context takeover the floor is higher.
        let (mut nct, _) = pair(DeflateParams {
            send_no_context_takeover: true,
            ..DeflateParams::default()
        });
        assert!(nct.compress(&[b'a'; 255]).is_none());
        assert!(nct.compress(&[b'a'; 256]).is_some());
        let mut noise = vec![0u8; 4096];
        crate::random::fill(&mut noise);
        assert!(tx.compress(&noise).is_none());
        // The compressor forgot the noise: the next message still inflates.
        let text = [b'x'; 500];
        let c = tx.compress(&text).unwrap().to_vec();
        assert_eq!(&rx.inflate(&c, 1000).unwrap()[..], &text);
    }

    #[test]
    fn inflate_stops_at_the_limit() {
        let (mut tx, mut rx) = pair(DeflateParams::default());
        let big = vec![0u8; 1 << 20];
        let c = tx.compress(&big).unwrap().to_vec();
        assert!(c.len() < 2048, "{}", c.len());
        let err = rx.inflate(&c, 100_000).unwrap_err();
        assert!(
            matches!(err, ProtocolError::MessageTooLarge { max: 100_000, .. }),
            "{err:?}"
        );
        // Exactly at the limit is fine.
        let (mut tx, mut rx) = pair(DeflateParams::default());
        let c = tx.compress(&big).unwrap().to_vec();
        assert_eq!(rx.inflate(&c, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn garbage_is_invalid_compressed_data() {
        let (_, mut rx) = pair(DeflateParams::default());
        let err = rx.inflate(&[0xff; 16], 1000).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidCompressedData(_)),
            "{err:?}"
        );
    }

    #[test]
    fn a_final_block_is_accepted() {
        // "Hello" compressed with BFINAL set (RFC 7692 §7.2.3.3 allows it),
        // then a second message on a new stream.
        let (mut tx, mut rx) = pair(DeflateParams::default());
        let hello = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(&rx.inflate(&hello, 100).unwrap()[..], b"Hello");
        let c = tx.compress(&[b'z'; 100]).unwrap().to_vec();
        assert_eq!(&rx.inflate(&c, 100).unwrap()[..], &[b'z'; 100]);
    }
}
