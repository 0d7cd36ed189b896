//! The sans-IO connection: bytes in, events out, bytes to send.
//!
//! [`Connection`] is the one owner of a WebSocket's state after the
//! handshake. It never touches a socket: the caller hands it received bytes
//! ([`receive`](Connection::receive)), pulls [`Event`]s
//! ([`next_event`](Connection::next_event)), and writes whatever
//! [`pending_output`](Connection::pending_output) holds. The same rules apply to
//! both roles; the role only decides which direction is masked.
//!
//! Protocol duties are automatic: a Ping queues its Pong, a Close queues its
//! echo, and a violation queues a Close with the right code before the error
//! is returned, so an I/O layer only ever has to flush.

use crate::close::{self, CloseCode, CloseFrame};
use crate::config::{Config, MaskKeys};
use crate::deflate::{self, DeflateParams};
use crate::error::{Error, ProtocolError, UsageError};
use crate::frame::{self, FrameHeader, Opcode, ParsedHeader, Role, MAX_CONTROL_PAYLOAD};
use crate::mask::apply_mask;
use crate::message::Text;
use crate::utf8::Utf8Validator;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::{self, Read};

/// Something the peer did, in order of arrival.
///
/// Non-exhaustive: an extension may add events (match with a `_` arm).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A whole text message (validated UTF-8).
    Text(Text),
    /// A whole binary message.
    Binary(Bytes),
    /// A Ping; its Pong has already been queued.
    Ping(Bytes),
    /// A Pong.
    Pong(Bytes),
    /// The connection closed: the peer's Close frame (already answered), or
    /// [`CloseCode::ABNORMAL`] when the transport ended without one. No more
    /// events follow.
    Close(CloseFrame),
}

/// An [`Event`] that borrows its payload from the connection, from
/// [`Connection::next_event_ref`].
///
/// A message that arrived in one frame is handed out as a slice of the
/// receive buffer, unmasked and validated in place: no allocation and no
/// reference count per message. The borrow ends at the next call on the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventRef<'a> {
    /// A whole text message (validated UTF-8).
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A Ping; its Pong has already been queued.
    Ping(&'a [u8]),
    /// A Pong.
    Pong(&'a [u8]),
    /// The connection closed; as [`Event::Close`].
    Close(&'a CloseFrame),
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(event: &'a Event) -> Self {
        match event {
            Event::Text(t) => EventRef::Text(t.as_str()),
            Event::Binary(b) => EventRef::Binary(b),
            Event::Ping(b) => EventRef::Ping(b),
            Event::Pong(b) => EventRef::Pong(b),
            Event::Close(c) => EventRef::Close(c),
        }
    }
}

impl EventRef<'_> {
    /// An owned copy of the event, to keep past the next call.
    pub fn to_event(&self) -> Event {
        match *self {
            EventRef::Text(t) => Event::Text(Text::from(t)),
            EventRef::Binary(b) => Event::Binary(Bytes::copy_from_slice(b)),
            EventRef::Ping(b) => Event::Ping(Bytes::copy_from_slice(b)),
            EventRef::Pong(b) => Event::Pong(Bytes::copy_from_slice(b)),
            EventRef::Close(c) => Event::Close(c.clone()),
        }
    }
}

/// What the receive loop produced.
enum Polled {
    /// An event with its own bytes.
    Event(Event),
    /// A whole unfragmented text message of this many bytes at the front of
    /// the input buffer, already unmasked and validated.
    // (No opcode field: a byte inside this variant made LLVM split the
    // returned event's pointer into piecewise stores, and the caller's
    // wide reload stalled on them.)
    TextInInput(usize),
    /// As `TextInInput`, for a binary message.
    BinaryInInput(usize),
}

/// Where the closing handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a Close and wait for the peer's; received messages are still
    /// delivered, nothing more can be sent.
    Closing,
    /// Both Close frames were exchanged, the peer violated the protocol, or the
    /// transport ended. Flush the output, then drop the transport.
    Closed,
}

/// What the receive side waits for: names follow rustls' `Expect*` states.
#[derive(Debug, Clone, Copy)]
enum Recv {
    /// A frame header (a control frame also waits here until its whole
    /// payload, at most 125 bytes, has arrived).
    AwaitHeader,
    /// The rest of a data frame's payload, which `receive` streams straight
    /// into `Connection::sink`, unmasking as it copies: `received` bytes of
    /// the payload are there, the first `validated` of them UTF-8 checked.
    AwaitPayload {
        header: FrameHeader,
        received: usize,
        validated: usize,
    },
}

/// Where `receive` stands in the frame structure of the bytes it has
/// appended to `Connection::input`. It unmasks every payload while copying
/// it in (a fused copy+xor, one pass over memory), so `poll` finds the
/// payloads in `input` already unmasked and only parses, checks and
/// validates. It reads headers by their layout alone ([`header_layout`]):
/// `poll` checks every rule, and stops at the first header that breaks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// The next byte belongs to a frame header, of which the last `have`
    /// bytes of `input` are the start.
    Header { have: usize },
    /// Inside a payload: `left` more bytes, masked with `key` (if any)
    /// from payload offset `done`. `ascii`: the payload may be text
    /// ([`text_like`]) and its `done` bytes so far were all ASCII, as the
    /// copy saw them go by.
    Payload {
        key: Option<[u8; 4]>,
        done: usize,
        left: u64,
        ascii: bool,
    },
}

/// True if a frame whose first header byte is `b0` may carry text for the
/// UTF-8 check: a Text or Continuation frame with no RSV bit set (a
/// compressed payload is checked once inflated). Only for the scan's ASCII
/// verdicts, which `poll` uses only for frames it has found to be text.
#[inline]
fn text_like(b0: u8) -> bool {
    // Opcode 0 or 1 (low nibble & 0xE clear) and RSV1-3 (0x70) clear.
    b0 & 0x7E == 0
}

/// How many frames ahead of `poll` the scan keeps ASCII verdicts for
/// (the bits of `Connection::ascii_frames`).
const VERDICTS: usize = 64;

/// Payloads up to this size are copied with their header in one go and
/// unmasked in place, in L1, rather than copied and unmasked in one pass.
const SMALL_FRAME: u64 = 64;

/// Length of a frame header from its second byte (RFC 6455 §5.2): 2, plus
/// 2 or 8 for an extended length, plus 4 for a masking key.
#[inline]
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// The layout of the frame header at the start of `buf`, if it is all
/// there: its length, the payload length and the masking key. Only the
/// layout (RFC 6455 §5.2): `poll` checks the rules, and fails the
/// connection at the first header that breaks one, before it looks at
/// anything after it; so for the scan, reading any header by its layout
/// alone is enough.
#[inline]
fn header_layout(buf: &[u8]) -> Option<(usize, u64, Option<[u8; 4]>)> {
    let b1 = *buf.get(1)?;
    let n = header_len(b1);
    let head = buf.get(..n)?;
    let (len, key_at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 4),
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(&head[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        len => (u64::from(len), 2),
    };
    let key = (b1 & 0x80 != 0).then(|| {
        let k = &head[key_at..key_at + 4];
        [k[0], k[1], k[2], k[3]]
    });
    Some((n, len, key))
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    opcode: Opcode,
    data: BytesMut,
    frames: usize,
}

/// A WebSocket connection after the opening handshake, for either role.
///
/// ```
/// use wsproto::{Connection, Config, Event, Role};
/// let mut client = Connection::new(Role::Client, Config::default());
/// let mut server = Connection::new(Role::Server, Config::default());
///
/// client.send_text("hello").unwrap();
/// server.receive(client.pending_output());
/// client.consume_output(client.pending_output().len());
///
/// match server.next_event().unwrap() {
///     Some(Event::Text(t)) => assert_eq!(t, "hello"),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(server.next_event().unwrap(), None); // needs more bytes
/// ```
// Receive-path invariants. Every method keeps them between calls, and
// `debug_check_invariants` checks them whenever `poll` returns (debug
// builds, so the tests and the fuzz targets check them too):
//
// 1. Every payload byte in `input` is already unmasked: `receive` unmasks
//    while copying (`scan_copy`), `receive_from` right after its read
//    (`scan_in_place`). `scan` says where the end of `input` stands in the
//    frame structure; `Scan::Header { have }` has `have` (< 14) header
//    bytes at the end of `input`. The scan reads headers by their layout
//    only; `poll` checks them and fails the connection at the first bad
//    one, so the two agree on every frame boundary `poll` ever reaches.
// 2. `input` starts at a frame header unless `recv` is `AwaitPayload`
//    (then it holds only bytes after the streamed frame, which `receive`
//    put there once the frame was complete).
// 3. `AwaitPayload { header, received, validated }` streams a data frame
//    (never a control frame): `validated <= received <= payload_len`, and
//    the sink holds the `received` bytes, unmasked, after any earlier
//    fragments of the message. With `AwaitHeader` the sink is empty.
//    While streaming, the sink's allocation holds the whole frame (it
//    never moves), and its first `sink_init` bytes are initialized.
// 4. While a fragmented message is being reassembled (`partial`), its
//    bytes are in `partial.data`, or in the sink while a continuation
//    streams; in total at most `max_message_size`.
// 5. The first `lent_len` bytes of `input` are lent out by
//    `next_event_ref` and are dropped at the next call; `input_alloc` is at
//    least `input`'s capacity.
// 6. While `ahead_on`, the scan is inside a Text or Binary frame whose
//    header is the last thing in `input`, and the `done` payload bytes it
//    has passed are in `ahead` (unmasked), not in `input`; the frame is
//    unfinished (a frame the scan finishes goes back to `input` whole).
//    Otherwise `ahead` is empty.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    input: BytesMut,
    /// How far `receive` has unmasked what it appended to `input`.
    scan: Scan,
    /// Frames whose header the scan has passed and `poll` has not yet
    /// taken from `input`.
    scan_ahead: usize,
    /// Bit `i`: the `i`-th of those frames is a text-like frame whose whole
    /// payload the scan unmasked and saw to be ASCII, so valid UTF-8
    /// (RFC 6455 §8.1) without a second pass.
    ascii_frames: u64,
    /// Where a data frame that spans several reads is assembled: its own
    /// buffer, sized once from the announced length, or the fragmented
    /// message's buffer for a continuation. This avoids growing (and
    /// re-copying) the input buffer while a large frame trickles in.
    sink: BytesMut,
    /// While a frame streams into `sink` (whose allocation holds the whole
    /// frame, so it never moves meanwhile): the sink's bytes up to here
    /// are initialized, those past `sink.len()` zeroed or left by an
    /// earlier read. `stream_payload` lends them to a reader without
    /// zeroing them again. Reset to `sink.len()` whenever a frame starts
    /// streaming; any value from there up to the truth is safe.
    sink_init: usize,
    /// The buffer of a Text or Binary frame that `receive` found cut short
    /// by the end of its bytes, while `ahead_on`: the scan copies (and
    /// unmasks) that payload here instead of into `input`, and `poll` takes
    /// it as the frame's sink when it gets there. Without it the part of
    /// the frame that came with its header was copied twice (into `input`,
    /// then into the sink): 12% more copying for 16 KiB frames in 64 KiB
    /// reads.
    ahead: BytesMut,
    ahead_on: bool,
    recv: Recv,
    partial: Option<Partial>,
    utf8: Utf8Validator,
    output: BytesMut,
    /// Opcode of the fragmented message we are sending, if one is unfinished.
    sending_fragmented: Option<Opcode>,
    eof: bool,
    masks: Option<MaskSource>,
    /// Bytes at the front of `input` lent out by `next_event_ref`; dropped
    /// from the buffer at the next call.
    lent_len: usize,
    /// The owned event `next_event_ref` lent out when its payload was not in
    /// the input buffer.
    lent: Option<Event>,
    /// The largest allocation `input` has had since it was last replaced:
    /// what a payload split off it would keep alive (see [`COPY_RATIO`]).
    input_alloc: usize,
    /// Bytes at the end of `input`'s allocation that may be uninitialized;
    /// the spare capacity before them is initialized (zeroed, or bytes an
    /// earlier read left there), so `receive_from` can lend it to a reader
    /// without zeroing it again. Any value at least the true count is safe
    /// (it only costs zeroing); a change of allocation must reset it to the
    /// whole spare capacity, and `input_end` tells `receive_from` if the
    /// allocation under it moved.
    input_uninit_tail: usize,
    /// The end address of `input`'s allocation when `input_uninit_tail` was
    /// last set by `receive_from` (0: not set).
    input_end: usize,
    /// permessage-deflate, when negotiated (all its state and rules live
    /// in `crate::deflate`; the hooks here are marked "deflate hook").
    deflate: deflate::Slot,
}

/// A payload is copied out of the receive buffer, rather than split off it,
/// when it is under `1/COPY_RATIO` of that buffer's allocation: a split-off
/// payload keeps the whole allocation alive (10,000 retained 10-byte
/// messages, each from its own 16 KiB read, held 156 MiB), so memory kept
/// by retained messages stays within `COPY_RATIO` times their size.
///
/// Measured (a timed loop handing out messages from a 16 KiB buffer,
/// release, one pinned core; ns per message, split vs copy): 16 B 19 vs 16,
/// 64 B 20 vs 18, 256 B 24 vs 27, 1 KiB 39 vs 46, 2 KiB 49 vs 62,
/// 4 KiB 81 vs 138, 8 KiB 167 vs 191. Copying is free up to ~512 B (no
/// shared-buffer bookkeeping, and the unique buffer is reused in place) and
/// costs ~10-25% at 1-2 KiB, ~40-70% at 4 KiB; 8 bounds the memory at a
/// copy cost of at most ~25% (a 2 KiB message from a 16 KiB buffer), and
/// only for messages small enough that the per-message overhead dominates.
const COPY_RATIO: usize = 8;

impl Connection {
    /// A connection in the open state, right after a successful handshake.
    pub fn new(role: Role, config: Config) -> Self {
        let masks = (role == Role::Client).then(|| MaskSource::new(config.mask_keys));
        Self {
            role,
            config,
            state: State::Open,
            input: BytesMut::new(),
            scan: Scan::Header { have: 0 },
            scan_ahead: 0,
            ascii_frames: 0,
            sink: BytesMut::new(),
            sink_init: 0,
            ahead: BytesMut::new(),
            ahead_on: false,
            recv: Recv::AwaitHeader,
            partial: None,
            utf8: Utf8Validator::new(),
            output: BytesMut::new(),
            sending_fragmented: None,
            eof: false,
            masks,
            lent_len: 0,
            lent: None,
            input_alloc: 0,
            input_uninit_tail: 0,
            input_end: 0,
            deflate: deflate::Slot::default(),
        }
    }

    /// Turns on permessage-deflate with what the handshake agreed
    /// ([`Request::negotiate_deflate`](crate::handshake::Request::negotiate_deflate)
    /// or [`Response::deflate`](crate::handshake::Response::deflate)); call
    /// it before the first frame. The API stays the same: messages sent are
    /// compressed when it pays, compressed messages received arrive
    /// inflated, within [`Config::max_message_size`].
    ///
    /// ```
    /// # if !wsproto::deflate::ENABLED { return; }
    /// use wsproto::{deflate::DeflateParams, Config, Connection, Event, Role};
    /// let mut client = Connection::new(Role::Client, Config::default());
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// client.enable_deflate(DeflateParams::default());
    /// server.enable_deflate(DeflateParams::default());
    /// let text = "to be or not to be, ".repeat(50);
    /// client.send_text(&text).unwrap();
    /// assert!(client.pending_output().len() < 100); // 1000 bytes, compressed
    /// server.receive(&client.take_output());
    /// assert_eq!(server.next_event().unwrap(), Some(Event::Text(text.into())));
    /// ```
    pub fn enable_deflate(&mut self, params: DeflateParams) {
        self.deflate.enable(params);
    }

    /// True if permessage-deflate is on.
    pub fn deflate_enabled(&self) -> bool {
        self.deflate.is_enabled()
    }

    /// A connection for the sending half of a split socket: same role and
    /// limits, and this connection's compressor (this one keeps receiving).
    pub(crate) fn split_sender(&mut self) -> Connection {
        let mut sender = Connection::new(self.role, self.config.clone());
        sender.deflate = self.deflate.split_sender();
        sender
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the closing handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// True once no more events will come and nothing more can be sent.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True when the transport should be closed now: the connection is closed
    /// and everything queued has been written. (RFC 6455 §7.1.1: the server
    /// closes TCP first; a client should give the server a moment to do so.)
    pub fn should_close_transport(&self) -> bool {
        self.is_closed() && self.output.is_empty()
    }

    // ---- receiving -------------------------------------------------------

    /// Appends received bytes. Call [`next_event`](Self::next_event) until it
    /// returns `Ok(None)` to process them.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.state == State::Closed || self.eof {
            return;
        }
        self.release_lent();
        let taken = self.append_payload(bytes);
        let rest = &bytes[taken..];
        if !rest.is_empty() {
            self.input.reserve(rest.len());
            self.input_alloc = self.input_alloc.max(self.input.capacity());
            self.scan_copy(rest);
            // `flush_ahead` may have grown it past the reservation.
            self.input_alloc = self.input_alloc.max(self.input.capacity());
            // Possibly a new allocation: nothing past the data is known
            // initialized.
            self.input_end = 0;
        }
    }

    /// The RSV bits a negotiated extension owns (RFC 6455 §5.2).
    #[inline]
    fn allowed_rsv(&self) -> u8 {
        // deflate hook: RSV1 passes only when negotiated.
        self.deflate.allowed_rsv()
    }

    /// Appends `src` to `input`, unmasking each payload while copying it.
    #[inline]
    fn scan_copy(&mut self, mut src: &[u8]) {
        if self.scan == (Scan::Header { have: 0 }) {
            if let Some((_, len, _)) = header_layout(src) {
                if len <= SMALL_FRAME {
                    // Small frames: one copy of the whole piece, then
                    // unmask in place while it is in cache; per frame, a
                    // copy call costs more than the second pass saves.
                    let from = self.input.len();
                    self.input.extend_from_slice(src);
                    self.scan_in_place(from);
                    return;
                }
            }
        }
        // The state lives in a local for the loop: kept in memory, each
        // frame's store and reload of it cost 8% at 125-byte frames.
        let mut scan = self.scan;
        while !src.is_empty() {
            match scan {
                Scan::Payload {
                    key,
                    done,
                    left,
                    ascii,
                } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(src.len());
                    if self.ahead_on {
                        if n as u64 == left {
                            // The frame ends here, and `poll` has not taken
                            // it yet: it goes back to `input` as a whole frame.
                            self.flush_ahead();
                        } else {
                            // All of `src` belongs to the frame.
                            self.ahead_piece(src, key, done, left, ascii);
                            return;
                        }
                    }
                    let piece = &src[..n];
                    let ascii = Self::put_payload(&mut self.input, piece, key, done, ascii);
                    src = &src[n..];
                    let left = left - n as u64;
                    if left == 0 && ascii {
                        self.note_ascii();
                    }
                    scan = Self::after_payload(key, done + n, left, ascii);
                }
                Scan::Header { have: 0 } => {
                    // The usual case: the whole header is in `src`.
                    if let Some((n, len, key)) = header_layout(src) {
                        let end = n.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                        if len <= SMALL_FRAME && end <= src.len() {
                            // A whole small frame: one copy, then unmask the
                            // few payload bytes in place while in L1 (for
                            // small frames the per-copy cost dominates).
                            let at = self.input.len() + n;
                            self.input.extend_from_slice(&src[..end]);
                            if let Some(key) = key {
                                apply_mask(&mut self.input[at..], key, 0);
                            }
                            src = &src[end..];
                            self.scan_ahead += 1;
                            continue;
                        }
                        scan = self.enter_payload(src[0], key, len, true);
                        self.input.extend_from_slice(&src[..n]);
                        self.maybe_stream_ahead(src[0], len, src.len() - n);
                        src = &src[n..];
                    } else {
                        self.input.extend_from_slice(src);
                        scan = Scan::Header { have: src.len() };
                        src = &[];
                    }
                }
                Scan::Header { have } => {
                    // A header split across two receives: complete it in
                    // `input` (its length is known from its second byte),
                    // then parse it there.
                    let start = self.input.len() - have;
                    let b1 = if have >= 2 {
                        self.input[start + 1]
                    } else {
                        src[0]
                    };
                    let need = header_len(b1).max(have + 1);
                    let take = (need - have).min(src.len());
                    self.input.extend_from_slice(&src[..take]);
                    src = &src[take..];
                    self.scan = Scan::Header { have: have + take };
                    self.rescan_header(start);
                    scan = self.scan;
                }
            }
        }
        self.scan = scan;
    }

    /// Reads the header that starts at `input[start..]` (all of which is
    /// header bytes) and moves the scan past it if it is complete.
    fn rescan_header(&mut self, start: usize) {
        self.scan = match header_layout(&self.input[start..]) {
            Some((n, len, key)) => {
                debug_assert_eq!(start + n, self.input.len());
                self.enter_payload(self.input[start], key, len, true)
            }
            None => Scan::Header {
                have: self.input.len() - start,
            },
        };
    }

    /// Copies a payload piece to the end of `dst`, unmasking it; with
    /// `ascii`, returns whether it was all ASCII (else false).
    #[inline(always)]
    fn put_payload(
        dst: &mut BytesMut,
        piece: &[u8],
        key: Option<[u8; 4]>,
        done: usize,
        ascii: bool,
    ) -> bool {
        match key {
            // A text payload learns whether it is all ASCII in the copy
            // itself (see `ascii_frames`).
            Some(key) if ascii => frame::put_masked_at_ascii(dst, piece, key, done),
            Some(key) => {
                frame::put_masked_at(dst, piece, key, done);
                false
            }
            None => {
                dst.extend_from_slice(piece);
                false
            }
        }
    }

    /// The scan just put the header of a frame (first byte `b0`, payload
    /// `len`) in `input`, and `rest` bytes of this `receive` follow it: if
    /// the payload will not all be there, and the frame is one `poll` would
    /// stream into a buffer of its own, that buffer starts now (`ahead`).
    #[inline(always)]
    fn maybe_stream_ahead(&mut self, b0: u8, len: u64, rest: usize) {
        // At most once per `receive`: out of the per-frame path.
        if len > rest as u64 && len > SMALL_FRAME {
            self.start_ahead(b0, len);
        }
    }

    #[cold]
    #[inline(never)]
    fn start_ahead(&mut self, b0: u8, len: u64) {
        let data = matches!(b0 & 0x0F, 0x1 | 0x2);
        // Only sizes `check_frame` would accept: a header `poll` rejects
        // must not make us allocate (it fails the connection, and `fail`
        // drops the buffer).
        let limit = self.config.max_frame_size.min(self.config.max_message_size) as u64;
        if data && len <= limit {
            // invariant: len <= limit, a usize.
            self.ahead = BytesMut::with_capacity(len as usize);
            self.ahead_on = true;
        }
    }

    /// The scan, in a frame streaming into `ahead`, copies all of `src`
    /// (which does not finish the frame) there.
    #[inline(never)]
    fn ahead_piece(
        &mut self,
        src: &[u8],
        key: Option<[u8; 4]>,
        done: usize,
        left: u64,
        ascii: bool,
    ) {
        debug_assert!((src.len() as u64) < left);
        let ascii = Self::put_payload(&mut self.ahead, src, key, done, ascii);
        let n = src.len();
        self.scan = Self::after_payload(key, done + n, left - n as u64, ascii);
    }

    /// Ends `ahead`: its bytes go to `input`, after the frame's header
    /// (the last thing there), as if the scan had copied them there.
    #[cold]
    fn flush_ahead(&mut self) {
        if std::mem::take(&mut self.ahead_on) {
            self.input.extend_from_slice(&self.ahead);
            self.ahead = BytesMut::new();
            // Possibly a new allocation (as in `receive`, which also
            // updates `input_alloc` after it).
            self.input_alloc = self.input_alloc.max(self.input.capacity());
            self.input_end = 0;
        }
    }

    /// The scan state once `done` payload bytes are through, `left` to go.
    #[inline]
    fn after_payload(key: Option<[u8; 4]>, done: usize, left: u64, ascii: bool) -> Scan {
        if left == 0 {
            Scan::Header { have: 0 }
        } else {
            Scan::Payload {
                key,
                done,
                left,
                ascii,
            }
        }
    }

    /// The scan has passed a whole header (first byte `b0`): counts the
    /// frame and returns the state at the start of its payload. With
    /// `track`, a text-like masked payload has its ASCII verdict taken
    /// while it is copied.
    #[inline]
    fn enter_payload(&mut self, b0: u8, key: Option<[u8; 4]>, len: u64, track: bool) -> Scan {
        self.scan_ahead += 1;
        let ascii = track && key.is_some() && text_like(b0);
        Self::after_payload(key, 0, len, ascii)
    }

    /// The frame the scan is in (the last it counted) turned out all ASCII.
    #[inline]
    fn note_ascii(&mut self) {
        debug_assert!(self.scan_ahead > 0);
        let i = self.scan_ahead.wrapping_sub(1);
        if i < VERDICTS {
            self.ascii_frames |= 1 << i;
        }
    }

    /// `poll` takes the next frame's header from `input`: its ASCII
    /// verdict (true only if the scan saw its whole payload as ASCII).
    #[inline]
    fn take_verdict(&mut self) -> bool {
        debug_assert!(self.scan_ahead > 0, "poll is ahead of the scan");
        let ascii = self.ascii_frames & 1 != 0;
        self.ascii_frames >>= 1;
        self.scan_ahead = self.scan_ahead.saturating_sub(1);
        ascii
    }

    /// Forgets every verdict (the scan starts over at a header).
    #[inline]
    fn reset_verdicts(&mut self) {
        self.scan_ahead = 0;
        self.ascii_frames = 0;
    }

    /// As [`scan_copy`](Self::scan_copy), for bytes a reader put straight
    /// into `input[from..]`: unmasks their payloads in place, while they
    /// are still in cache from the read.
    fn scan_in_place(&mut self, from: usize) {
        let end = self.input.len();
        let mut pos = from;
        while pos < end {
            match self.scan {
                Scan::Payload {
                    key, done, left, ..
                } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(end - pos);
                    if let Some(key) = key {
                        apply_mask(&mut self.input[pos..pos + n], key, done);
                    }
                    pos += n;
                    self.scan = Self::after_payload(key, done + n, left - n as u64, false);
                }
                Scan::Header { have } => {
                    let start = pos - have;
                    if let Some((n, len, key)) = header_layout(&self.input[start..end]) {
                        pos = start + n;
                        // Unmasked in place: no verdict (poll validates).
                        self.scan = self.enter_payload(self.input[start], key, len, false);
                    } else {
                        self.scan = Scan::Header { have: end - start };
                        pos = end;
                    }
                }
            }
        }
    }

    /// While a data frame's payload is streaming, appends as much of `bytes`
    /// as belongs to it to the sink and unmasks it there (while it is still
    /// in cache). Returns how many bytes it took.
    #[inline]
    fn append_payload(&mut self, bytes: &[u8]) -> usize {
        let take = self.payload_remaining().min(bytes.len());
        if take > 0 {
            if let Recv::AwaitPayload {
                header,
                received,
                validated,
            } = self.recv
            {
                // Text that is validated up to here learns in the copy
                // whether this piece is all ASCII, so valid as it stands
                // (no second pass over it in `poll`).
                let fuse =
                    validated == received && self.is_text(&header) && self.utf8.is_boundary();
                let piece = &bytes[..take];
                let ascii = match header.mask {
                    Some(key) if fuse => {
                        frame::put_masked_at_ascii(&mut self.sink, piece, key, received)
                    }
                    Some(key) => {
                        frame::put_masked_at(&mut self.sink, piece, key, received);
                        false
                    }
                    None => {
                        self.sink.extend_from_slice(piece);
                        false
                    }
                };
                let validated = if ascii {
                    self.utf8.skip_ascii(take);
                    received + take
                } else {
                    validated
                };
                self.recv = Recv::AwaitPayload {
                    header,
                    received: received + take,
                    validated,
                };
            }
        }
        take
    }

    /// As [`append_payload`](Self::append_payload), for a reader: lets
    /// `fill` write up to `max` of the payload's remaining bytes into the
    /// sink. Returns how many bytes `fill` wrote.
    fn stream_payload(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let want = self.payload_remaining().min(max);
        if want == 0 {
            return Ok(0);
        }
        let start = self.sink.len();
        if self.sink.capacity() - start < want {
            // Not expected (the sink holds the whole frame), but then the
            // allocation may move: nothing past the bytes is known.
            debug_assert!(false, "the sink does not hold its frame");
            self.sink.reserve(want);
            self.sink_init = start;
        }
        // Bytes appended by `append_payload` are initialized too.
        let init = self.sink_init.max(start);
        if init < start + want {
            self.sink.spare_capacity_mut()[init - start..want].fill(std::mem::MaybeUninit::new(0));
            self.sink_init = start + want;
        }
        // SAFETY: the capacity is at least `start + want` (checked above),
        // and the bytes from `start` to `start + want` are initialized:
        // zeroed just now, or by an earlier call while this frame streams
        // (`sink_init`, reset when a frame starts; the allocation does not
        // move meanwhile, see above), written since by a reader or by
        // `append_payload`. Covered by tests/connection.rs
        // (streamed_frames_lend_their_buffer_to_a_reader_zeroed_once),
        // with a reader that reads the buffer it is lent and writes past
        // what it reports.
        #[allow(unsafe_code)]
        unsafe {
            self.sink.set_len(start + want)
        };
        let result = fill(&mut self.sink[start..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.sink.truncate(start + n.min(want));
        self.commit_payload(start);
        result.map(|n| n.min(want))
    }

    /// Payload bytes still to come for the frame being streamed (0 if none).
    #[inline]
    fn payload_remaining(&self) -> usize {
        match self.recv {
            // invariant: check_frame bounded payload_len by max_frame_size (a usize).
            Recv::AwaitPayload {
                header, received, ..
            } => header.payload_len as usize - received,
            Recv::AwaitHeader => 0,
        }
    }

    /// Unmasks the payload bytes appended to the sink from `start` on and
    /// counts them as received.
    #[inline]
    fn commit_payload(&mut self, start: usize) {
        if let Recv::AwaitPayload {
            header,
            received,
            validated,
        } = self.recv
        {
            if let Some(key) = header.mask {
                apply_mask(&mut self.sink[start..], key, received);
            }
            self.recv = Recv::AwaitPayload {
                header,
                received: received + (self.sink.len() - start),
                validated,
            };
        }
    }

    /// Reads once from `reader` straight into the input buffer (at most
    /// `max` bytes), avoiding the copy of [`receive`](Self::receive).
    /// A read of 0 bytes is recorded as end of stream.
    ///
    /// # Errors
    ///
    /// Whatever the reader returns.
    pub fn receive_from<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        self.release_lent();
        // A streaming payload is read straight into its sink.
        let result = if self.payload_remaining() > 0 && !self.eof {
            self.stream_payload(max, |dst| reader.read(dst))
        } else {
            // A read lands in `input` (unmasked there by `scan_in_place`).
            self.flush_ahead();
            let start = self.input.len();
            self.ready_spare(max);
            // SAFETY: `ready_spare(max)` left at least `max` bytes of spare
            // capacity, the first `max` of them initialized (zeroed now, or
            // bytes of this same allocation written before: see
            // `input_uninit_tail`). Covered by tests/connection.rs
            // (receive_from_zeroes_the_read_buffer_once), with a reader
            // that reads the buffer it is lent.
            #[allow(unsafe_code)]
            unsafe {
                self.input.set_len(start + max)
            };
            let result = reader.read(&mut self.input[start..]);
            let n = *result.as_ref().unwrap_or(&0);
            self.input.truncate(start + n.min(max));
            self.scan_in_place(start);
            result
        };
        if matches!(result, Ok(0)) && max > 0 {
            self.receive_eof();
        }
        result
    }

    /// Makes room for a read of `max` bytes at the end of `input`, all of it
    /// initialized, zeroing only what never was: the read buffer is not
    /// zero-filled before every read (the blocking API reads
    /// [`Config::read_size`] at a time, and a read usually fills little of
    /// it), only once per allocation.
    fn ready_spare(&mut self, max: usize) {
        let len = self.input.len();
        let end = |b: &BytesMut| b.as_ptr() as usize + b.capacity();
        if self.input_end != end(&self.input) {
            // Not the allocation `input_uninit_tail` describes.
            self.input_uninit_tail = self.input.capacity() - len;
        }
        if self.input.capacity() - len < max {
            let before = end(&self.input);
            // `try_reclaim` never allocates: if it succeeds, the data moved
            // to the front of the same allocation, whose end (and the
            // uninitialized tail before it) stays where it was.
            if !(self.input.try_reclaim(max) && end(&self.input) == before) {
                self.input.reserve(max);
                self.input_uninit_tail = self.input.capacity() - len;
            }
            self.input_alloc = self.input_alloc.max(self.input.capacity());
        }
        let spare = self.input.capacity() - len;
        let init = spare.saturating_sub(self.input_uninit_tail);
        if init < max {
            self.input.spare_capacity_mut()[init..max].fill(std::mem::MaybeUninit::new(0));
            self.input_uninit_tail = spare - max;
        }
        self.input_end = end(&self.input);
    }

    /// Records that the transport ended. Once the buffered bytes are
    /// processed, [`next_event`](Self::next_event) reports
    /// `Event::Close` with [`CloseCode::ABNORMAL`] unless the closing
    /// handshake had completed.
    pub fn receive_eof(&mut self) {
        self.eof = true;
    }

    /// The next event, or `Ok(None)` if more bytes are needed (or the
    /// connection is closed).
    ///
    /// A message that arrived whole is split off the receive buffer without
    /// a copy, unless it is under 1/8 of that buffer's allocation: then it
    /// is copied, so that keeping many small messages keeps their bytes
    /// alive, not the buffers they came in. (To handle each message in
    /// place instead, see [`next_event_ref`](Self::next_event_ref).)
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the peer violated the protocol. A Close frame
    /// with [`ProtocolError::close_code`] is queued before it returns; the
    /// connection is then closed.
    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        self.release_lent();
        let polled = self.poll();
        self.debug_check_invariants();
        Ok(match polled? {
            None => None,
            Some(Polled::Event(event)) => Some(event),
            Some(Polled::TextInInput(len)) => Some(Event::Text(Text::from_validated(
                self.take_input(len).freeze(),
            ))),
            Some(Polled::BinaryInInput(len)) => Some(Event::Binary(self.take_input(len).freeze())),
        })
    }

    /// As [`next_event`](Self::next_event), with the payload borrowed from
    /// the connection instead of owned: for a receiver that handles each
    /// message before asking for the next, this saves an allocation or a
    /// reference count per message.
    ///
    /// ```
    /// use wsproto::{Connection, Config, EventRef, Role};
    /// let mut client = Connection::new(Role::Client, Config::default());
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// client.send_text("one").unwrap();
    /// client.send_binary(&[2]).unwrap();
    /// server.receive(&client.take_output());
    ///
    /// let mut got = Vec::new();
    /// while let Some(event) = server.next_event_ref().unwrap() {
    ///     match event {
    ///         EventRef::Text(t) => got.push(t.len()), // t: &str
    ///         EventRef::Binary(b) => got.push(b.len()), // b: &[u8]
    ///         other => panic!("{other:?}"),
    ///     }
    /// }
    /// assert_eq!(got, [3, 1]);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub fn next_event_ref(&mut self) -> Result<Option<EventRef<'_>>, ProtocolError> {
        self.release_lent();
        let polled = self.poll();
        self.debug_check_invariants();
        match polled? {
            None => Ok(None),
            Some(Polled::BinaryInInput(len)) => {
                self.lent_len = len;
                Ok(Some(EventRef::Binary(&self.input[..len])))
            }
            Some(Polled::TextInInput(len)) => {
                self.lent_len = len;
                let bytes = &self.input[..len];
                Ok(Some({
                    // SAFETY: `poll` returns `TextInInput(len)` only after
                    // `validate_text` fed exactly these bytes to the
                    // UTF-8 validator and `finish` accepted the end of the
                    // message; the buffer is not touched until the borrow
                    // ends. Covered by tests/connection.rs (borrowed_events_*).
                    #[allow(unsafe_code)]
                    EventRef::Text(unsafe { std::str::from_utf8_unchecked(bytes) })
                }))
            }
            Some(Polled::Event(event)) => Ok(Some(EventRef::from(&*self.lent.insert(event)))),
        }
    }

    /// The event the last [`next_event_ref`](Self::next_event_ref) lent,
    /// again (for a caller whose borrow had to end, such as the blocking
    /// read loop); `text` is whether that event was [`EventRef::Text`].
    pub(crate) fn relend(&self, text: bool) -> EventRef<'_> {
        if let Some(event) = &self.lent {
            return EventRef::from(event);
        }
        let bytes = &self.input[..self.lent_len];
        if !text {
            return EventRef::Binary(bytes);
        }
        // SAFETY: with no owned event lent, the last `next_event_ref`
        // lent exactly these `lent_len` bytes of the input, and `text` says
        // it lent them as `EventRef::Text`, which it does only after the
        // UTF-8 validator accepted them (see `next_event_ref`); nothing
        // has touched the input since (every method that changes the
        // input starts with `release_lent`, which also ends the loan).
        // Covered by tests/blocking.rs (read_ref_*).
        #[allow(unsafe_code)]
        EventRef::Text(unsafe { std::str::from_utf8_unchecked(bytes) })
    }

    /// Checks the receive-path invariants (see the comment on
    /// [`Connection`]) in debug builds; compiled out in release.
    #[inline]
    fn debug_check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        if let Scan::Header { have } = self.scan {
            assert!(have < frame::MAX_HEADER_LEN && have <= self.input.len());
        }
        match self.recv {
            Recv::AwaitHeader => assert!(self.sink.is_empty(), "sink left over"),
            Recv::AwaitPayload {
                header,
                received,
                validated,
            } => {
                assert!(!header.opcode.is_control(), "a control frame streamed");
                assert!(validated <= received && received as u64 <= header.payload_len);
                assert!(self.sink.len() >= received);
                assert!(self.sink_init <= self.sink.capacity());
                assert!(self.sink.capacity() - self.sink.len() >= self.payload_remaining());
            }
        }
        if let Some(p) = &self.partial {
            let streaming = matches!(self.recv, Recv::AwaitPayload { header, .. } if header.opcode == Opcode::Continuation);
            let held = if streaming {
                self.sink.len()
            } else {
                p.data.len()
            };
            assert!(p.frames >= 1 && held <= self.config.max_message_size);
        }
        assert!(self.lent_len <= self.input.len());
        if self.input_end == self.input.as_ptr() as usize + self.input.capacity() {
            assert!(self.input_uninit_tail <= self.input.capacity() - self.input.len());
        }
        if self.ahead_on {
            let in_payload = matches!(self.scan, Scan::Payload { done, left, .. } if done == self.ahead.len() && left > 0);
            assert!(in_payload, "ahead out of step with the scan");
        } else {
            assert!(self.ahead.is_empty(), "ahead left over");
        }
        // Verdicts only for frames the scan has counted.
        assert!(self.scan_ahead >= VERDICTS || self.ascii_frames >> self.scan_ahead == 0);
        assert!(self.input_alloc >= self.input.capacity() || self.input.is_empty());
    }

    /// Takes the first `len` bytes of the input to keep: copied if they are
    /// much smaller than the buffer they would keep alive ([`COPY_RATIO`]).
    #[inline]
    fn take_input(&mut self, len: usize) -> BytesMut {
        if len.saturating_mul(COPY_RATIO) < self.input_alloc {
            let copy = BytesMut::from(&self.input[..len]);
            self.input.advance(len);
            copy
        } else {
            self.input.split_to(len)
        }
    }

    /// Ends the loan of the last `next_event_ref`.
    #[inline]
    fn release_lent(&mut self) {
        if self.lent_len > 0 {
            self.input.advance(self.lent_len);
            self.lent_len = 0;
        }
        self.lent = None;
    }

    /// The receive loop behind `next_event` and `next_event_ref`.
    #[inline(always)]
    fn poll(&mut self) -> Result<Option<Polled>, ProtocolError> {
        loop {
            if self.state == State::Closed {
                return Ok(None);
            }
            match self.recv {
                Recv::AwaitHeader => {
                    let receiver = self.role;
                    let allowed_rsv = self.allowed_rsv();
                    let (header, header_len) =
                        match frame::parse_header(&self.input, receiver, allowed_rsv) {
                            Ok(ParsedHeader::Complete(h, n)) => (h, n),
                            Ok(ParsedHeader::NeedMore) => {
                                return Ok(self.eof_event().map(Polled::Event))
                            }
                            Err(e) => return Err(self.fail(e)),
                        };
                    if let Err(e) = self.check_frame(&header) {
                        return Err(self.fail(e));
                    }
                    // invariant: check_frame bounded payload_len by max_frame_size (a usize).
                    let len = header.payload_len as usize;
                    let have = self.input.len() - header_len;
                    if have < len && header.opcode.is_control() {
                        // At most 125 bytes: wait for all of it, and parse
                        // the header again then.
                        return Ok(self.eof_event().map(Polled::Event));
                    }
                    self.input.advance(header_len);
                    let ascii = self.take_verdict();
                    if have < len {
                        self.start_streaming(header, have);
                        continue;
                    }
                    // The whole payload is here: unmask and validate it in
                    // place and hand it out from the input buffer (split
                    // off, or copied if small: `take_input`), without
                    // parking in AwaitPayload.
                    if len > 0 {
                        self.validate_text(&header, len, ascii)
                            .map_err(|e| self.fail(e))?;
                    }
                    // A whole unfragmented message (check_frame has ruled
                    // out a fragmented one in progress) stays where it is;
                    // the caller decides whether to split it off or lend it.
                    // (deflate hook: not a compressed one, which is inflated first.)
                    if header.fin
                        && matches!(header.opcode, Opcode::Text | Opcode::Binary)
                        && !self.deflate.receiving_compressed()
                    {
                        if header.opcode == Opcode::Text {
                            self.utf8.finish().map_err(|e| {
                                self.fail(ProtocolError::InvalidUtf8 { offset: e.offset })
                            })?;
                            return Ok(Some(Polled::TextInInput(len)));
                        }
                        return Ok(Some(Polled::BinaryInInput(len)));
                    }
                    let payload = self.take_input(len);
                    match self.complete_frame(header, payload) {
                        Ok(Some(event)) => return Ok(Some(Polled::Event(event))),
                        Ok(None) => {}
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Recv::AwaitPayload {
                    header,
                    received,
                    validated,
                } => {
                    if received > validated {
                        if self.is_text(&header) {
                            let end = self.sink.len();
                            let fresh = &self.sink[end - (received - validated)..end];
                            if let Err(e) = self.utf8.feed(fresh) {
                                let err = ProtocolError::InvalidUtf8 { offset: e.offset };
                                return Err(self.fail(err));
                            }
                        }
                        self.recv = Recv::AwaitPayload {
                            header,
                            received,
                            validated: received,
                        };
                    }
                    if received < header.payload_len as usize {
                        return Ok(self.eof_event().map(Polled::Event));
                    }
                    self.recv = Recv::AwaitHeader;
                    let data = std::mem::take(&mut self.sink);
                    let payload = match (header.opcode, self.partial.as_mut()) {
                        // The sink was the fragmented message's own buffer:
                        // put it back; this frame adds nothing more to copy.
                        (Opcode::Continuation, Some(p)) => {
                            p.data = data;
                            BytesMut::new()
                        }
                        _ => data,
                    };
                    match self.complete_frame(header, payload) {
                        Ok(Some(event)) => return Ok(Some(Polled::Event(event))),
                        Ok(None) => {}
                        Err(e) => return Err(self.fail(e)),
                    }
                }
            }
        }
    }

    /// Switches to streaming a data frame's payload into the sink, moving
    /// the `have` payload bytes already buffered there first.
    fn start_streaming(&mut self, header: FrameHeader, have: usize) {
        // invariant: check_frame bounded payload_len by max_frame_size (a usize).
        let len = header.payload_len as usize;
        // The scan already streams this frame into a buffer of its own.
        let from_ahead = std::mem::take(&mut self.ahead_on);
        let ahead_len = if from_ahead { self.ahead.len() } else { 0 };
        self.sink = match (header.opcode, self.partial.as_mut()) {
            _ if from_ahead => {
                debug_assert!(have == 0 && header.opcode != Opcode::Continuation);
                std::mem::take(&mut self.ahead)
            }
            (Opcode::Continuation, Some(p)) => {
                let mut data = std::mem::take(&mut p.data);
                data.reserve(len);
                data
            }
            // Sized once from the announced length, which check_frame has
            // bounded; pages are only touched as bytes arrive.
            _ => BytesMut::with_capacity(len),
        };
        self.sink_init = self.sink.len();
        self.recv = Recv::AwaitPayload {
            header,
            received: 0,
            validated: 0,
        };
        // The scan has unmasked the buffered part and stands inside this
        // payload; the rest bypasses `input` (streamed into the sink,
        // unmasked there), so the scan resumes at the next header.
        let ascii = match self.scan {
            Scan::Payload {
                key,
                done,
                left,
                ascii,
            } => {
                debug_assert!(key == header.mask && done == have + ahead_len);
                debug_assert_eq!(left, header.payload_len - done as u64);
                ascii
            }
            Scan::Header { .. } => {
                debug_assert!(false, "streaming a frame the scan is not in");
                false
            }
        };
        debug_assert_eq!(
            self.scan_ahead, 0,
            "the scan passed a header after this frame"
        );
        self.scan = Scan::Header { have: 0 };
        self.reset_verdicts();
        let have = if from_ahead {
            self.sink.len()
        } else {
            self.sink.extend_from_slice(&self.input[..have]);
            self.input.advance(have);
            have
        };
        // The part the scan saw to be ASCII is validated as it stands.
        let validated = if ascii && have > 0 && self.is_text(&header) && self.utf8.is_boundary() {
            debug_assert!(self.sink[self.sink.len() - have..].is_ascii());
            self.utf8.skip_ascii(have);
            have
        } else {
            0
        };
        self.recv = Recv::AwaitPayload {
            header,
            received: have,
            validated,
        };
    }

    /// True if `header` carries text (a Text frame or its continuation).
    fn is_text(&self, header: &FrameHeader) -> bool {
        // deflate hook: compressed bytes are checked once inflated.
        if self.deflate.receiving_compressed() {
            return false;
        }
        match header.opcode {
            Opcode::Text => true,
            Opcode::Continuation => self
                .partial
                .as_ref()
                .is_some_and(|p| p.opcode == Opcode::Text),
            _ => false,
        }
    }

    /// Frame rules that depend on the message state and the limits
    /// (the header parser has checked everything local to the header).
    fn check_frame(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.payload_len > self.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: h.payload_len,
                max: self.config.max_frame_size,
            });
        }
        // deflate hook: RSV1 only on the first frame of a data message
        // (RFC 7692 §6.1).
        self.deflate.on_frame(h)?;
        let max_msg = self.config.max_message_size;
        match (h.opcode, &self.partial) {
            // RFC 6455 §5.4: continuation frames only continue a message.
            (Opcode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation),
            (Opcode::Continuation, Some(p)) => {
                let len = p.data.len() as u64 + h.payload_len;
                if len > max_msg as u64 {
                    Err(ProtocolError::MessageTooLarge { len, max: max_msg })
                } else if p.frames >= self.config.max_fragments {
                    Err(ProtocolError::TooManyFragments {
                        max: self.config.max_fragments,
                    })
                } else {
                    Ok(())
                }
            }
            // RFC 6455 §5.4: no new message while one is fragmented
            // (control frames may be interleaved).
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                Err(ProtocolError::ExpectedContinuation(h.opcode))
            }
            (Opcode::Text | Opcode::Binary, None) => {
                if h.payload_len > max_msg as u64 {
                    return Err(ProtocolError::MessageTooLarge {
                        len: h.payload_len,
                        max: max_msg,
                    });
                }
                if h.opcode == Opcode::Text {
                    self.utf8 = Utf8Validator::new();
                }
                Ok(())
            }
            (Opcode::Close | Opcode::Ping | Opcode::Pong, _) => Ok(()),
        }
    }

    /// Validates the frame's payload, the first `len` bytes of the input
    /// (already unmasked by the scan), if it is text. `ascii`: the scan saw
    /// all of it to be ASCII while copying it, so it is valid UTF-8 after
    /// any whole code point (RFC 3629: ASCII bytes are code points).
    #[inline]
    fn validate_text(
        &mut self,
        header: &FrameHeader,
        len: usize,
        ascii: bool,
    ) -> Result<(), ProtocolError> {
        if !self.is_text(header) {
            return Ok(());
        }
        let fresh = &self.input[..len];
        if ascii && self.utf8.is_boundary() {
            debug_assert!(fresh.is_ascii(), "a wrong ASCII verdict");
            self.utf8.skip_ascii(len);
            return Ok(());
        }
        self.utf8
            .feed(fresh)
            .map_err(|e| ProtocolError::InvalidUtf8 { offset: e.offset })
    }

    /// Acts on a whole frame; returns the event it completes, if any.
    fn complete_frame(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Event>, ProtocolError> {
        match header.opcode {
            Opcode::Text | Opcode::Binary if header.fin => {
                Ok(Some(self.finish_message(header.opcode, payload)?))
            }
            Opcode::Text | Opcode::Binary => {
                self.partial = Some(Partial {
                    opcode: header.opcode,
                    data: payload,
                    frames: 1,
                });
                Ok(None)
            }
            Opcode::Continuation => {
                // invariant: check_frame rejected a continuation without a partial message.
                let Some(p) = self.partial.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                p.data.extend_from_slice(&payload);
                p.frames += 1;
                if !header.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                Ok(Some(self.finish_message(p.opcode, p.data)?))
            }
            Opcode::Ping => {
                let payload = payload.freeze();
                // RFC 6455 §5.5.2: answer with a Pong carrying the same data.
                // After our Close, nothing more may be sent (§5.5.1). A peer that
                // floods pings without reading gets no more pongs once the
                // output is full (§5.5.3 allows answering only the latest).
                if self.state == State::Open && self.output.len() < self.config.max_output_buffer {
                    self.write_frame(true, Opcode::Pong, &payload);
                }
                Ok(Some(Event::Ping(payload)))
            }
            Opcode::Pong => Ok(Some(Event::Pong(payload.freeze()))),
            Opcode::Close => {
                let frame = close::parse_close_payload(&payload)?;
                if self.state == State::Open {
                    // RFC 6455 §5.5.1: "typically echoing the status code it
                    // received"; the reason goes back too (as Node's ws,
                    // Python's websockets and tungstenite do), so a browser's
                    // CloseEvent shows it. The payload was just parsed: empty,
                    // or a code valid on the wire and a UTF-8 reason of at
                    // most 123 bytes, so the echo is valid as it stands.
                    self.write_frame(true, Opcode::Close, &payload);
                }
                self.state = State::Closed;
                Ok(Some(Event::Close(frame)))
            }
        }
    }

    // Inlined: returned through memory, the event is reloaded with a wider
    // load than it was stored with, and that store-forwarding stall was a
    // quarter of the per-frame cost for small messages.
    #[inline(always)]
    fn finish_message(&mut self, opcode: Opcode, data: BytesMut) -> Result<Event, ProtocolError> {
        // deflate hook: inflate within max_message_size (1009 past it),
        // then check the text (RFC 7692 §6.2).
        let data = if self.deflate.receiving_compressed() {
            let plain = self.deflate.inflate(&data, self.config.max_message_size)?;
            if opcode == Opcode::Text {
                self.utf8 = Utf8Validator::new();
                self.utf8
                    .feed(&plain)
                    .map_err(|e| ProtocolError::InvalidUtf8 { offset: e.offset })?;
            }
            plain
        } else {
            data.freeze()
        };
        if opcode == Opcode::Text {
            self.utf8
                .finish()
                .map_err(|e| ProtocolError::InvalidUtf8 { offset: e.offset })?;
            Ok(Event::Text(Text::from_validated(data)))
        } else {
            Ok(Event::Binary(data))
        }
    }

    /// Queues the Close a violation calls for and closes the connection.
    #[cold]
    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        if self.state == State::Open {
            let reason = err.to_string();
            let mut buf = [0; MAX_CONTROL_PAYLOAD];
            let n = close::encode_close_payload(
                &mut buf,
                err.close_code(),
                close::truncate_reason(&reason),
            );
            self.write_frame(true, Opcode::Close, &buf[..n]);
        }
        self.state = State::Closed;
        self.partial = None;
        self.input = BytesMut::new();
        self.input_end = 0;
        self.scan = Scan::Header { have: 0 };
        self.reset_verdicts();
        self.input_alloc = 0;
        self.sink = BytesMut::new();
        self.ahead = BytesMut::new();
        self.ahead_on = false;
        self.recv = Recv::AwaitHeader;
        err
    }

    /// At the end of the buffered input: the abnormal-close event if the
    /// transport has ended.
    fn eof_event(&mut self) -> Option<Event> {
        if !self.eof {
            return None;
        }
        self.state = State::Closed;
        self.partial = None;
        self.input = BytesMut::new();
        self.input_end = 0;
        self.scan = Scan::Header { have: 0 };
        self.reset_verdicts();
        self.input_alloc = 0;
        self.sink = BytesMut::new();
        self.ahead = BytesMut::new();
        self.ahead_on = false;
        self.recv = Recv::AwaitHeader;
        Some(Event::Close(CloseFrame {
            code: CloseCode::ABNORMAL,
            reason: String::new(),
        }))
    }

    // ---- sending ---------------------------------------------------------

    /// Queues a text message.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after a Close was sent or received,
    /// [`Error::OutputFull`] when the output buffer is full,
    /// [`UsageError::FragmentOrder`] while a fragmented send is unfinished.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send_message(Opcode::Text, text.as_bytes())
    }

    /// Queues a binary message.
    ///
    /// # Errors
    ///
    /// As [`send_text`](Self::send_text).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_message(Opcode::Binary, data)
    }

    /// Appends a text message's frame straight to `dst`, a buffer the
    /// caller owns (a `Vec<u8>`, a `BytesMut`, any [`BufMut`]): the payload
    /// is copied once, masked while it is copied for a client, and never
    /// passes through the connection's own output buffer.
    ///
    /// Anything already pending (an automatic Pong, a Close echo, frames
    /// queued by [`send_text`](Self::send_text)) is moved to `dst` first,
    /// so the frames stay in order; the caller then writes `dst` out.
    ///
    /// ```
    /// use wsproto::{Config, Connection, Event, Role};
    /// let mut server = Connection::new(Role::Server, Config::default());
    /// let mut wire: Vec<u8> = Vec::with_capacity(64);
    /// server.send_text_into("hello", &mut wire).unwrap();
    /// server.send_binary_into(&[1, 2], &mut wire).unwrap();
    /// assert_eq!(wire, b"\x81\x05hello\x82\x02\x01\x02");
    /// assert!(server.pending_output().is_empty());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after a Close was sent or received,
    /// [`UsageError::FragmentOrder`] while a fragmented send is unfinished.
    /// (Never [`Error::OutputFull`]: the caller's buffer is the caller's
    /// to bound.)
    #[inline]
    pub fn send_text_into<B: BufMut + ?Sized>(
        &mut self,
        text: &str,
        dst: &mut B,
    ) -> Result<(), Error> {
        self.send_message_into(Opcode::Text, text.as_bytes(), dst)
    }

    /// As [`send_text_into`](Self::send_text_into), for a binary message.
    ///
    /// ```
    /// use wsproto::{Config, Connection, MaskKeys, Role};
    /// let config = Config::default().mask_keys(MaskKeys::Fixed([0x37, 0xfa, 0x21, 0x3d]));
    /// let mut client = Connection::new(Role::Client, config);
    /// let mut wire = Vec::new();
    /// client.send_binary_into(b"Hello", &mut wire).unwrap();
    /// // Masked while copied (RFC 6455 §5.7's example, as a binary frame).
    /// assert_eq!(wire, b"\x82\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send_text_into`](Self::send_text_into).
    #[inline]
    pub fn send_binary_into<B: BufMut + ?Sized>(
        &mut self,
        data: &[u8],
        dst: &mut B,
    ) -> Result<(), Error> {
        self.send_message_into(Opcode::Binary, data, dst)
    }

    #[inline]
    fn send_message_into<B: BufMut + ?Sized>(
        &mut self,
        opcode: Opcode,
        payload: &[u8],
        dst: &mut B,
    ) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::Closed);
        }
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder("a fragmented message is unfinished").into());
        }
        // deflate hook: a compressed message is built in `output` (the
        // compressor owns that path), then moved out like anything pending.
        if self.deflate.is_enabled() {
            self.send_message(opcode, payload)?;
            self.move_output_into(dst);
            return Ok(());
        }
        if !self.output.is_empty() {
            self.move_output_into(dst);
        }
        let mask = self.masks.as_mut().map(MaskSource::next_key);
        frame::encode_frame_into(dst, true, opcode, payload, mask);
        Ok(())
    }

    /// Moves everything pending to `dst` (frames queued before a
    /// `send_*_into` go out before it).
    #[cold]
    fn move_output_into<B: BufMut + ?Sized>(&mut self, dst: &mut B) {
        dst.put_slice(&self.output);
        self.output.clear();
    }

    /// The header of a whole unmasked message of `len` bytes, for a writer
    /// that sends the payload itself (vectored, the caller's `Bytes` shared
    /// rather than copied); the same checks as
    /// [`send_binary`](Self::send_binary). Only for the server role: a
    /// client's payload must be masked, which means copying it.
    pub(crate) fn unmasked_message_header(
        &mut self,
        opcode: Opcode,
        len: usize,
    ) -> Result<([u8; frame::MAX_HEADER_LEN], usize), Error> {
        debug_assert!(self.masks.is_none(), "only a server sends unmasked frames");
        self.check_sendable()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder("a fragmented message is unfinished").into());
        }
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: len as u64,
        };
        let mut head = [0; frame::MAX_HEADER_LEN];
        let n = header.encode(&mut head);
        Ok((head, n))
    }

    /// Queues bytes that are already framed: the unwritten rest of a frame
    /// a vectored write could not finish, so a later flush completes it.
    pub(crate) fn queue_framed(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    fn send_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Error> {
        self.check_sendable()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder("a fragmented message is unfinished").into());
        }
        // deflate hook: compressed when it pays, with RSV1 (RFC 7692 §6).
        if let Some(compressed) = self.deflate.compress(payload) {
            let mask = self.masks.as_mut().map(|m| m.next_key());
            deflate::encode_compressed_frame(&mut self.output, opcode, compressed, mask);
            return Ok(());
        }
        self.write_frame(true, opcode, payload);
        Ok(())
    }

    /// Queues a message framed (and compressed) once for many connections
    /// (deflate hook: the compressed form goes out only where it is valid;
    /// see [`PreparedMessage`](crate::deflate::PreparedMessage)).
    ///
    /// # Errors
    ///
    /// As [`send_text`](Self::send_text).
    pub fn send_prepared(&mut self, msg: &deflate::PreparedMessage) -> Result<(), Error> {
        self.check_sendable()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::FragmentOrder("a fragmented message is unfinished").into());
        }
        let compressed = self.deflate.prepared(msg);
        let mask = self.masks.as_mut().map(|m| m.next_key());
        msg.write(&mut self.output, compressed, mask);
        Ok(())
    }

    /// Queues one fragment of a message: the first with [`Opcode::Text`] or
    /// [`Opcode::Binary`], the rest with [`Opcode::Continuation`], the last
    /// with `fin` set. Control frames may be sent in between. Text fragments
    /// are not checked here; together they must form valid UTF-8.
    ///
    /// With permessage-deflate, a message of several fragments is
    /// compressed as one stream across them, RSV1 on the first (RFC 7692
    /// §6.1); each fragment is compressed as it is given (a sync flush),
    /// so it can be sent before the next one exists.
    ///
    /// # Errors
    ///
    /// As [`send_text`](Self::send_text), and [`UsageError::FragmentOrder`]
    /// for a fragment out of order or a control opcode.
    pub fn send_fragment(
        &mut self,
        opcode: Opcode,
        payload: &[u8],
        fin: bool,
    ) -> Result<(), Error> {
        self.check_sendable()?;
        match (opcode, self.sending_fragmented) {
            (Opcode::Text | Opcode::Binary, None) => {
                if !fin {
                    self.sending_fragmented = Some(opcode);
                }
            }
            (Opcode::Continuation, Some(_)) => {
                if fin {
                    self.sending_fragmented = None;
                }
            }
            (Opcode::Continuation, None) => {
                return Err(
                    UsageError::FragmentOrder("continuation without a started message").into(),
                )
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(UsageError::FragmentOrder("a fragmented message is unfinished").into())
            }
            _ => {
                return Err(UsageError::FragmentOrder("control frames are never fragmented").into())
            }
        }
        // deflate hook: the message is compressed across its fragments,
        // RSV1 on the first (RFC 7692 §6.1).
        let first = opcode != Opcode::Continuation;
        match self.deflate.fragment(first, payload, fin) {
            Ok(Some((compressed, rsv))) => {
                let mask = self.masks.as_mut().map(MaskSource::next_key);
                deflate::encode_frame_rsv(&mut self.output, fin, rsv, opcode, compressed, mask);
            }
            Ok(None) => self.write_frame(fin, opcode, payload),
            Err(()) => {
                return Err(Error::Io(std::io::Error::other(
                    "permessage-deflate: the compressor failed inside a fragmented message",
                )))
            }
        }
        Ok(())
    }

    /// Queues a Ping.
    ///
    /// # Errors
    ///
    /// [`UsageError::ControlPayloadTooLong`] over 125 bytes, otherwise as
    /// [`send_text`](Self::send_text).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send_control(Opcode::Ping, payload)
    }

    /// Queues an unsolicited Pong (a heartbeat; RFC 6455 §5.5.3).
    ///
    /// # Errors
    ///
    /// As [`ping`](Self::ping).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send_control(Opcode::Pong, payload)
    }

    fn send_control(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(UsageError::ControlPayloadTooLong(payload.len()).into());
        }
        self.check_sendable()?;
        self.write_frame(true, opcode, payload);
        Ok(())
    }

    /// Starts the closing handshake: queues a Close with `code` and `reason`.
    /// Calling it again once a Close was sent does nothing.
    ///
    /// # Errors
    ///
    /// [`UsageError::UnsendableCloseCode`] for 1005/1006,
    /// [`UsageError::CloseReasonTooLong`] for a reason over 123 bytes.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !code.is_sendable() {
            return Err(UsageError::UnsendableCloseCode(code).into());
        }
        if reason.len() > close::MAX_REASON_LEN {
            return Err(UsageError::CloseReasonTooLong(reason.len()).into());
        }
        if self.state != State::Open {
            return Ok(());
        }
        let mut buf = [0; MAX_CONTROL_PAYLOAD];
        let n = close::encode_close_payload(&mut buf, code, reason);
        self.write_frame(true, Opcode::Close, &buf[..n]);
        self.state = State::Closing;
        Ok(())
    }

    fn check_sendable(&self) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::Closed);
        }
        if self.output.len() >= self.config.max_output_buffer {
            return Err(Error::OutputFull {
                pending: self.output.len(),
                max: self.config.max_output_buffer,
            });
        }
        Ok(())
    }

    #[inline]
    fn write_frame(&mut self, fin: bool, opcode: Opcode, payload: &[u8]) {
        let mask = self.masks.as_mut().map(MaskSource::next_key);
        frame::encode_frame(&mut self.output, fin, opcode, payload, mask);
    }

    /// Queues a final Close with `payload` (a valid Close payload another
    /// connection produced: the split writer sends the replies its reader's
    /// connection decided on) and closes.
    pub(crate) fn send_final_close(&mut self, payload: &[u8]) {
        if self.state == State::Open {
            self.write_frame(true, Opcode::Close, payload);
        }
        self.state = State::Closed;
    }

    // ---- output ----------------------------------------------------------

    /// Bytes waiting to be written to the transport.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// Marks the first `n` bytes of [`pending_output`](Self::pending_output)
    /// as written.
    ///
    /// # Panics
    ///
    /// If `n` exceeds the pending length (a caller bug).
    pub fn consume_output(&mut self, n: usize) {
        self.output.advance(n);
    }

    /// Takes all pending output as one [`Bytes`], leaving none pending: for I/O
    /// layers that queue buffers rather than write in place.
    ///
    /// Bytes taken leave this connection's accounting: the
    /// [`Config::max_output_buffer`](crate::Config::max_output_buffer) bound (and the automatic-Pong cap that
    /// rests on it) only sees what is still pending here. A caller that takes
    /// output and queues it elsewhere must bound that queue itself, or a peer
    /// that sends Pings and never reads grows it without limit.
    pub fn take_output(&mut self) -> Bytes {
        self.output.split().freeze()
    }

    /// Releases buffer memory held while idle (both buffers empty), for
    /// servers that keep many quiet connections.
    pub fn shrink_buffers(&mut self) {
        self.release_lent();
        if self.input.is_empty() && matches!(self.recv, Recv::AwaitHeader) {
            self.input = BytesMut::new();
            self.input_end = 0;
            self.input_alloc = 0;
        }
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
        // deflate hook: without context takeover nothing is kept.
        self.deflate.shrink();
    }
}

/// Where a client's masking keys come from ([`MaskKeys`]).
#[derive(Debug)]
enum MaskSource {
    Random(Box<crate::random::KeyStream>),
    Seeded(u64),
    Fixed([u8; 4]),
}

impl MaskSource {
    fn new(keys: MaskKeys) -> Self {
        match keys {
            MaskKeys::Random => Self::Random(Box::new(crate::random::KeyStream::new())),
            MaskKeys::Seeded(seed) => Self::Seeded(seed),
            MaskKeys::Fixed(key) => Self::Fixed(key),
        }
    }

    #[inline]
    fn next_key(&mut self) -> [u8; 4] {
        match self {
            Self::Random(keys) => keys.next_key(),
            Self::Seeded(state) => {
                // SplitMix64 (Steele, Lea, Flood 2014): a full-period
                // sequence, good enough to vary keys reproducibly.
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let [a, b, c, d, ..] = (z ^ (z >> 31)).to_le_bytes();
                [a, b, c, d]
            }
            Self::Fixed(key) => *key,
        }
    }
}
