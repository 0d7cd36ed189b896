//! permessage-deflate (RFC 7692): negotiation, and the compressor and
//! decompressor a [`Connection`](crate::Connection) uses once it is agreed.
//!
//! - [`DeflateConfig`] says what we want: for a server, what it accepts and
//!   asks of the client; for a client, what it offers.
//! - A server picks the first acceptable offer with
//!   [`Request::negotiate_deflate`](crate::handshake::Request::negotiate_deflate);
//!   a client offers with
//!   [`ClientRequest::deflate`](crate::handshake::ClientRequest::deflate) and
//!   the answer is checked by `parse_response`. Either way the outcome is a
//!   [`DeflateParams`], handed to
//!   [`Connection::enable_deflate`](crate::Connection::enable_deflate)
//!   (the [`blocking`](crate::blocking) functions do all of this when
//!   [`Config::deflate`](crate::Config::deflate) is set).
//!
//! Negotiation is compiled in always; compressing needs the `deflate` cargo
//! feature (on by default; it brings in `zlib-rs`, pure Rust). Without it
//! no offer is made or accepted.
//!
//! Receiving is bounded: a compressed message is inflated into a buffer that
//! grows as output comes, and inflating stops with close 1009 the moment the
//! output would pass [`Config::max_message_size`](crate::Config::max_message_size)
//! — a frame that would inflate to 1 GiB costs at most the limit (plus,
//! while the buffer last doubles, the half-size one a moving realloc
//! copies from).
//!
//! ## Memory per connection
//!
//! Measured (`tests/deflate_bomb.rs`, counting allocations, both directions
//! used once): with context takeover and 15-bit windows, 321 KiB — the
//! compressor ~270 KiB (zlib-rs: a 64 KiB window, 64 KiB of chains, a fixed
//! 128 KiB hash table, a 14 KiB literal buffer at `memLevel` 5) and the
//! decompressor ~45 KiB with its 32 KiB window; with 9-bit windows, 195 KiB
//! (the hash table does not shrink). Without context takeover the same
//! state is reset per message and freed by
//! [`Connection::shrink_buffers`](crate::Connection::shrink_buffers):
//! 304 bytes held by an idle connection. For broadcast, a
//! [`PreparedMessage`] is compressed once for every connection.

#[cfg(feature = "deflate")]
mod codec;
mod negotiate;
mod prepared;

#[cfg(feature = "deflate")]
pub(crate) use codec::Codec;
pub(crate) use negotiate::negotiate as negotiate_offers;
pub use negotiate::{offer_header, parse_answer, DeflateAccept};
pub use prepared::PreparedMessage;

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, Opcode};

/// True when built with the `deflate` feature (compression available).
pub const ENABLED: bool = cfg!(feature = "deflate");

/// What we want from permessage-deflate.
///
/// Window sizes are in bits (a window of `1 << bits` bytes, 8..=15). The
/// defaults compress with context takeover and a 32 KiB window both ways,
/// as browsers do.
///
/// ```
/// use wsproto::deflate::DeflateConfig;
/// // A server with many connections: no context kept between messages in
/// // either direction, so an idle connection holds no compression state.
/// let lean = DeflateConfig::default().no_context_takeover(true).request_peer_no_context_takeover(true);
/// assert!(lean.no_context_takeover);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Our compressor's window, 9..=15 (a smaller window saves memory and
    /// ratio). A server answers `server_max_window_bits` with it when it is
    /// under 15; a client offers `client_max_window_bits=N`.
    pub window_bits: u8,
    /// The window we ask the peer to keep to, 8..=15: a server answers
    /// `client_max_window_bits=N` (when the client allowed it), a client
    /// asks `server_max_window_bits=N`. 15 asks nothing.
    pub peer_window_bits: u8,
    /// Reset our compressor after every message (RFC 7692 §7.1.1): less
    /// memory, a lower ratio. A server answers `server_no_context_takeover`;
    /// a client offers `client_no_context_takeover`.
    pub no_context_takeover: bool,
    /// Ask the peer to reset its compressor after every message, so that
    /// our decompressor keeps nothing between messages. A server answers
    /// `client_no_context_takeover`; a client asks
    /// `server_no_context_takeover` (a server that will not must decline).
    pub request_peer_no_context_takeover: bool,
    /// zlib compression level, 1..=9.
    pub level: u8,
    /// Messages shorter than this are sent uncompressed (RSV1 is chosen per
    /// message, RFC 7692 §6). See [`DEFAULT_MIN_SIZE`] and
    /// [`NO_CONTEXT_MIN_SIZE`].
    pub min_size: usize,
}

/// Messages under this many bytes are not worth compressing.
///
/// Measured (zlib-rs level 6, chat-like JSON messages of 40-80 bytes with
/// Faust as text, context takeover): thresholds 0, 16 and 32 give the same
/// ratio (5.7) and CPU (1.2 µs a message); 48 drops the ratio to 3.3, as
/// short messages compress well against earlier ones. Under 32 bytes the
/// few bytes saved do not pay for a compressor call. Without context
/// takeover the floor is [`NO_CONTEXT_MIN_SIZE`].
pub const DEFAULT_MIN_SIZE: usize = 32;

/// Without context takeover, messages under this many bytes go out
/// uncompressed whatever `min_size` says: each message then starts a fresh
/// stream (zlib-rs clears a 128 KiB hash table for it), and measured on the
/// same chat messages the ratio is 1.02 at 64 bytes (3.2 µs each) and 1.31
/// at 256 bytes (7.6 µs), against 5.9 and 2.6 with context takeover.
pub const NO_CONTEXT_MIN_SIZE: usize = 256;

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            window_bits: 15,
            peer_window_bits: 15,
            no_context_takeover: false,
            request_peer_no_context_takeover: false,
            level: 6,
            min_size: DEFAULT_MIN_SIZE,
        }
    }
}

impl DeflateConfig {
    /// Sets [`window_bits`](Self::window_bits) (clamped to 9..=15).
    #[must_use]
    pub fn window_bits(mut self, bits: u8) -> Self {
        self.window_bits = bits.clamp(9, 15);
        self
    }

    /// Sets [`peer_window_bits`](Self::peer_window_bits) (clamped to 8..=15).
    #[must_use]
    pub fn peer_window_bits(mut self, bits: u8) -> Self {
        self.peer_window_bits = bits.clamp(8, 15);
        self
    }

    /// Sets [`no_context_takeover`](Self::no_context_takeover).
    #[must_use]
    pub fn no_context_takeover(mut self, yes: bool) -> Self {
        self.no_context_takeover = yes;
        self
    }

    /// Sets [`request_peer_no_context_takeover`](Self::request_peer_no_context_takeover).
    #[must_use]
    pub fn request_peer_no_context_takeover(mut self, yes: bool) -> Self {
        self.request_peer_no_context_takeover = yes;
        self
    }

    /// Sets [`level`](Self::level) (clamped to 1..=9).
    #[must_use]
    pub fn level(mut self, level: u8) -> Self {
        self.level = level.clamp(1, 9);
        self
    }

    /// Sets [`min_size`](Self::min_size).
    #[must_use]
    pub fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }
}

/// What was agreed, from our side: how we compress what we send, and how
/// the peer compresses what we receive.
///
/// ```
/// use wsproto::deflate::DeflateParams;
/// let p = DeflateParams::default();
/// assert_eq!((p.send_window_bits, p.recv_window_bits), (15, 15));
/// assert!(p.compresses());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateParams {
    /// Our compressor's window, 8..=15. With 8 we never compress: zlib
    /// cannot write a raw deflate stream with a 256-byte window, and
    /// sending with a 512-byte one would break the agreement (RFC 7692
    /// §7.1.2.1); RSV1 is per message, so uncompressed messages are valid.
    pub send_window_bits: u8,
    /// We reset our compressor after every message.
    pub send_no_context_takeover: bool,
    /// The peer's window, 8..=15.
    pub recv_window_bits: u8,
    /// The peer resets its compressor after every message, so ours resets
    /// its decompressor too.
    pub recv_no_context_takeover: bool,
    /// Compression level, 1..=9.
    pub level: u8,
    /// Messages under this many bytes go out uncompressed (under
    /// [`NO_CONTEXT_MIN_SIZE`] too without context takeover).
    pub min_size: usize,
}

impl Default for DeflateParams {
    fn default() -> Self {
        Self {
            send_window_bits: 15,
            send_no_context_takeover: false,
            recv_window_bits: 15,
            recv_no_context_takeover: false,
            level: 6,
            min_size: DEFAULT_MIN_SIZE,
        }
    }
}

impl DeflateParams {
    /// True if we compress outgoing messages (the agreed window is not 8).
    pub fn compresses(&self) -> bool {
        (9..=15).contains(&self.send_window_bits)
    }
}

/// The RSV bit permessage-deflate owns (RFC 7692 §6: "Per-Message
/// Compressed" bit, RSV1), as `FrameHeader::rsv` holds it.
pub(crate) const RSV1: u8 = 0b100;

/// The deflate state a [`Connection`](crate::Connection) holds: nothing
/// unless negotiated. Every hook in `connection.rs` goes through it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    #[cfg(feature = "deflate")]
    codec: Option<Box<Codec>>,
    /// The data message being received has RSV1 set on its first frame.
    compressed: bool,
    /// The fragmented message being sent is compressed (decided on its
    /// first fragment).
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
    sending_compressed: bool,
}

impl Slot {
    /// Turns compression on with what was negotiated.
    #[allow(unused_variables)]
    pub(crate) fn enable(&mut self, params: DeflateParams) {
        #[cfg(feature = "deflate")]
        {
            self.codec = Some(Box::new(Codec::new(params)));
        }
    }

    /// The RSV bits the header parser lets through.
    #[inline]
    pub(crate) fn allowed_rsv(&self) -> u8 {
        #[cfg(feature = "deflate")]
        if self.codec.as_ref().is_some_and(|c| c.receives()) {
            return RSV1;
        }
        0
    }

    /// Checks RSV1 on a frame whose header parsed (RFC 7692 §6.1): only the
    /// first frame of a data message may set it; on a control frame or a
    /// continuation it fails the connection (1002). Records whether the
    /// message that a Text/Binary frame starts is compressed.
    #[inline]
    pub(crate) fn on_frame(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        let rsv1 = h.rsv & RSV1 != 0;
        match h.opcode {
            Opcode::Text | Opcode::Binary => self.compressed = rsv1,
            _ if !rsv1 => {}
            Opcode::Continuation => return Err(ProtocolError::CompressedContinuation),
            op => return Err(ProtocolError::CompressedControlFrame(op)),
        }
        Ok(())
    }

    /// True while the data message being received is compressed: its
    /// payload is not UTF-8 until inflated.
    #[inline]
    pub(crate) fn receiving_compressed(&self) -> bool {
        self.compressed
    }

    /// Inflates a whole compressed message (its frames' payloads joined),
    /// producing at most `max` bytes.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::MessageTooLarge`] (1009) as soon as the output
    /// would pass `max`; [`ProtocolError::InvalidCompressedData`] (1007)
    /// for a stream zlib refuses.
    #[allow(unused_variables)]
    pub(crate) fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
    ) -> Result<bytes::Bytes, ProtocolError> {
        self.compressed = false;
        #[cfg(feature = "deflate")]
        if let Some(c) = self.codec.as_mut() {
            return c.inflate(compressed, max);
        }
        // invariant: RSV1 only passes the header parser when a codec receives.
        Err(ProtocolError::ReservedBits(RSV1))
    }

    /// The compressed payload for a message, or `None` to send it as it is
    /// (not negotiated, the 8-bit window, under `min_size`, or it did not
    /// shrink).
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        #[cfg(feature = "deflate")]
        if let Some(c) = self.codec.as_mut() {
            return c.compress(payload);
        }
        None
    }

    /// One fragment of a message the caller fragments itself (RFC 7692
    /// §6.1): `Ok(Some((payload, rsv)))` to send compressed (RSV1 on the
    /// first fragment only), `Ok(None)` as it is. A message is compressed
    /// as a whole or not at all, decided on its first fragment: a lone
    /// final fragment is a whole message (`min_size` and "did it shrink"
    /// apply); otherwise every fragmented message is compressed when we
    /// compress at all, as its size is not known yet and its first bytes
    /// may already have left.
    ///
    /// # Errors
    ///
    /// `Err(())` if the compressor failed inside a compressed message (it
    /// does not with the output room and calls `Codec` makes).
    #[allow(unused_variables)]
    pub(crate) fn fragment(
        &mut self,
        first: bool,
        payload: &[u8],
        fin: bool,
    ) -> Result<Option<(&[u8], u8)>, ()> {
        #[cfg(feature = "deflate")]
        if let Some(c) = self.codec.as_mut() {
            if first && fin {
                return Ok(c.compress(payload).map(|z| (z, RSV1)));
            }
            if first {
                self.sending_compressed = c.sends();
            }
            if !self.sending_compressed {
                return Ok(None);
            }
            if fin {
                self.sending_compressed = false;
            }
            let rsv = if first { RSV1 } else { 0 };
            return c
                .compress_fragment(payload, fin)
                .map(|z| Some((z, rsv)))
                .ok_or(());
        }
        Ok(None)
    }

    /// Which form of a prepared message to send: its compressed frame if
    /// we compress with a window at least as large as it was made with.
    /// Sending it with context takeover resets our compressor: the peer's
    /// window then holds bytes ours never saw.
    #[allow(unused_variables)]
    pub(crate) fn prepared<'m>(
        &mut self,
        msg: &'m PreparedMessage,
    ) -> Option<(&'m bytes::Bytes, usize)> {
        #[cfg(feature = "deflate")]
        if let Some(c) = self.codec.as_mut().filter(|c| c.sends()) {
            let form = msg.compressed_for(c.send_window_bits());
            if form.is_some() {
                c.forget();
            }
            return form;
        }
        None
    }

    /// Moves the sending half (the compressor) into a new slot, for a
    /// connection that only sends (the split writer); this one keeps
    /// receiving.
    pub(crate) fn split_sender(&mut self) -> Slot {
        Slot {
            #[cfg(feature = "deflate")]
            codec: self
                .codec
                .as_mut()
                .map(|c| Box::new(c.split_sender()))
                .filter(|c| c.sends()),
            compressed: false,
            sending_compressed: false,
        }
    }

    /// Frees compression state that no context takeover makes useless
    /// between messages (it is made again when next needed).
    pub(crate) fn shrink(&mut self) {
        #[cfg(feature = "deflate")]
        if let Some(c) = self.codec.as_mut() {
            c.shrink();
        }
    }

    /// True if permessage-deflate was negotiated.
    pub(crate) fn is_enabled(&self) -> bool {
        #[cfg(feature = "deflate")]
        return self.codec.is_some();
        #[cfg(not(feature = "deflate"))]
        false
    }
}

/// Writes a whole compressed message as one frame with RSV1 set (RFC 7692
/// §6: the bit goes on the first frame of a compressed message).
pub(crate) fn encode_compressed_frame(
    dst: &mut bytes::BytesMut,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    encode_frame_rsv(dst, true, RSV1, opcode, payload, mask);
}

/// Writes one frame with the given RSV bits (a fragment of a compressed
/// message: RSV1 on the first, none on continuations).
pub(crate) fn encode_frame_rsv(
    dst: &mut bytes::BytesMut,
    fin: bool,
    rsv: u8,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut head = [0; crate::frame::MAX_HEADER_LEN];
    let head_len = header.encode(&mut head);
    dst.reserve(head_len + payload.len());
    dst.extend_from_slice(&head[..head_len]);
    match mask {
        None => dst.extend_from_slice(payload),
        Some(key) => {
            let start = dst.len();
            dst.resize(start + payload.len(), 0);
            crate::mask::copy_masked(&mut dst[start..], payload, key, 0);
        }
    }
}
