//! Shared pieces of the codec benchmarks: the workloads (streams of masked
//! client frames and the messages they must decode to), an in-memory
//! transport every column reads from or writes to, the expected-message
//! check each column passes before it is timed, and the two baselines
//! (`memcpy` and a fused copy+unmask loop).
//!
//! The peers (`tungstenite`, `fastwebsockets`) are dev-dependencies, so their
//! adapters live in `benches/codec.rs`; everything here is peer-independent.

use std::io::{self, Read, Write};

/// Payload bytes per iteration: each workload holds about this much.
pub const TOTAL_PAYLOAD: usize = 4 << 20;

/// The most bytes one read hands out, like a socket read: every column gets
/// the stream in pieces of at most this size.
pub const READ_CHUNK: usize = 64 << 10;

/// Payload sizes measured, in bytes.
pub const SIZES: [usize; 6] = [16, 125, 1 << 10, 16 << 10, 64 << 10, 1 << 20];

/// What the payloads hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Binary messages of pseudo-random bytes.
    Binary,
    /// Text messages of printable ASCII.
    Ascii,
    /// Text messages of 3-byte code points (CJK), padded with ASCII to the size.
    Cjk,
}

impl Kind {
    /// Short name used in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::Ascii => "ascii",
            Kind::Cjk => "utf8_3byte",
        }
    }

    /// True for the text kinds.
    pub fn is_text(self) -> bool {
        self != Kind::Binary
    }
}

/// Where a frame's payload sits in a stream, and its masking key.
#[derive(Debug, Clone, Copy)]
pub struct FrameSpan {
    /// Offset of the first payload byte in the stream.
    pub start: usize,
    /// Payload length.
    pub len: usize,
    /// Masking key.
    pub key: [u8; 4],
}

/// One decode workload: the wire bytes and what they must decode to.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Benchmark id, e.g. `binary/16384` or `utf8_3byte/fragmented_16x65536`.
    pub name: String,
    /// What the messages hold.
    pub kind: Kind,
    /// The messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// Frames per message (1 = unfragmented).
    pub fragments: usize,
    /// Masked client frames, as a server receives them.
    pub stream: Vec<u8>,
    /// Every frame's payload position and key, in order.
    pub frames: Vec<FrameSpan>,
}

impl Workload {
    /// Messages of `size` bytes, each sent as `fragments` frames, about
    /// [`TOTAL_PAYLOAD`] bytes in all.
    ///
    /// # Panics
    ///
    /// If `fragments` is 0 or larger than `size`.
    pub fn new(kind: Kind, size: usize, fragments: usize) -> Self {
        assert!(fragments >= 1 && fragments <= size.max(1));
        let count = (TOTAL_PAYLOAD / size).max(1);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ size as u64);
        let messages: Vec<Vec<u8>> = (0..count).map(|_| payload(kind, size, &mut rng)).collect();
        let mut stream = Vec::with_capacity(count * (size + 14 * fragments));
        let mut frames = Vec::with_capacity(count * fragments);
        let piece = size.div_ceil(fragments);
        for m in &messages {
            let mut pieces = m.chunks(piece).peekable();
            let mut first = true;
            while let Some(p) = pieces.next() {
                let fin = pieces.peek().is_none();
                let opcode = match (first, kind.is_text()) {
                    (false, _) => 0x0,
                    (true, true) => 0x1,
                    (true, false) => 0x2,
                };
                let key = rng.next().to_le_bytes();
                let key = [key[0], key[1], key[2], key[3]];
                push_header(&mut stream, fin, opcode, p.len(), Some(key));
                frames.push(FrameSpan {
                    start: stream.len(),
                    len: p.len(),
                    key,
                });
                stream.extend(p.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
                first = false;
            }
        }
        let name = if fragments > 1 {
            format!("{}/fragmented_{}x{}", kind.name(), fragments, piece)
        } else {
            format!("{}/{}", kind.name(), size)
        };
        Self {
            name,
            kind,
            messages,
            fragments,
            stream,
            frames,
        }
    }

    /// Total payload bytes: the `Throughput::Bytes` of every column.
    pub fn payload_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.len() as u64).sum()
    }

    /// A checker for the messages a column decodes.
    pub fn checker(&self) -> Checker<'_> {
        Checker {
            workload: self,
            next: 0,
        }
    }
}

/// Asserts that a column decodes exactly the workload's messages, in order.
#[derive(Debug)]
pub struct Checker<'a> {
    workload: &'a Workload,
    next: usize,
}

impl Checker<'_> {
    /// Checks the next decoded message.
    ///
    /// # Panics
    ///
    /// If it differs from the expected one in kind, length or content.
    pub fn message(&mut self, is_text: bool, data: &[u8]) {
        let w = self.workload;
        let Some(expected) = w.messages.get(self.next) else {
            panic!("{}: message {} is one too many", w.name, self.next);
        };
        assert_eq!(
            is_text,
            w.kind.is_text(),
            "{}: message {} kind",
            w.name,
            self.next
        );
        assert!(
            data == expected.as_slice(),
            "{}: message {} differs ({} bytes, expected {})",
            w.name,
            self.next,
            data.len(),
            expected.len()
        );
        if is_text {
            assert!(std::str::from_utf8(data).is_ok(), "{}: not UTF-8", w.name);
        }
        self.next += 1;
    }

    /// Checks that every message was seen.
    ///
    /// # Panics
    ///
    /// If some are missing.
    pub fn finish(self) {
        assert_eq!(
            self.next,
            self.workload.messages.len(),
            "{}: messages decoded",
            self.workload.name
        );
    }
}

/// Appends a frame header in the minimal form (RFC 6455 §5.2).
pub fn push_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize, key: Option<[u8; 4]>) {
    out.push(u8::from(fin) << 7 | opcode);
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = key {
        out.extend_from_slice(&key);
    }
}

/// A payload of `size` bytes of `kind`.
fn payload(kind: Kind, size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    match kind {
        Kind::Binary => {
            while out.len() < size {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            out.truncate(size);
        }
        Kind::Ascii => out.extend((0..size).map(|_| b' ' + (rng.next() % 95) as u8)),
        Kind::Cjk => {
            let mut buf = [0; 4];
            while out.len() + 3 <= size {
                // U+4E00..U+9FFF: CJK Unified Ideographs, all 3 bytes in UTF-8.
                let c = char::from_u32(0x4E00 + (rng.next() % 0x5200) as u32).unwrap_or('中');
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            out.resize(size, b'.');
        }
    }
    out
}

/// A small deterministic PRNG (xorshift64*), so every run has the same bytes.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random word.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// An in-memory transport: reads hand out the source in pieces of at most
/// [`READ_CHUNK`] bytes (each read copies, as a socket read does), and writes
/// append to `written`.
#[derive(Debug)]
pub struct MemStream<'a> {
    src: &'a [u8],
    pos: usize,
    /// Everything written so far.
    pub written: Vec<u8>,
}

impl<'a> MemStream<'a> {
    /// A stream that reads `src` and starts with an empty write buffer of
    /// `write_capacity` bytes.
    pub fn new(src: &'a [u8], write_capacity: usize) -> Self {
        Self {
            src,
            pos: 0,
            written: Vec::with_capacity(write_capacity),
        }
    }

    /// Copies the next piece into `buf`; returns its length (0 at the end).
    #[inline]
    pub fn read_into(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(READ_CHUNK).min(self.src.len() - self.pos);
        buf[..n].copy_from_slice(&self.src[self.pos..self.pos + n]);
        self.pos += n;
        n
    }

    /// A write-only stream that appends to `buf` (cleared first), so a
    /// benchmark can reuse one allocation across iterations.
    pub fn writer(mut buf: Vec<u8>) -> MemStream<'static> {
        buf.clear();
        MemStream {
            src: &[],
            pos: 0,
            written: buf,
        }
    }

    /// The next piece without copying (for APIs that take `&[u8]`).
    #[inline]
    pub fn next_chunk(&mut self) -> Option<&'a [u8]> {
        if self.pos == self.src.len() {
            return None;
        }
        let n = READ_CHUNK.min(self.src.len() - self.pos);
        let chunk = &self.src[self.pos..self.pos + n];
        self.pos += n;
        Some(chunk)
    }
}

impl Read for MemStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_into(buf))
    }
}

impl Write for MemStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Baseline: the physical ceiling, one copy of the whole stream.
#[inline]
pub fn memcpy_baseline(dst: &mut [u8], src: &[u8]) {
    dst[..src.len()].copy_from_slice(src);
}

/// Baseline: a fused copy+unmask of every payload into `dst`, knowing where
/// each frame is (no header parsing, no checks). Word-wise XOR in portable
/// Rust, as a reasonable hand-written loop would be.
#[inline]
pub fn copy_unmask_baseline(dst: &mut [u8], stream: &[u8], frames: &[FrameSpan]) -> usize {
    let mut at = 0;
    for f in frames {
        let src = &stream[f.start..f.start + f.len];
        copy_xor(&mut dst[at..at + f.len], src, f.key);
        at += f.len;
    }
    at
}

/// `dst = src ^ key`, repeating the 4-byte key from byte 0.
#[inline]
pub fn copy_xor(dst: &mut [u8], src: &[u8], key: [u8; 4]) {
    let k32 = u32::from_ne_bytes(key);
    let k64 = u64::from(k32) << 32 | u64::from(k32);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut w = [0; 8];
        w.copy_from_slice(sc);
        dc.copy_from_slice(&(u64::from_ne_bytes(w) ^ k64).to_ne_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ key[i % 4];
    }
}

/// The decode workloads: every size and kind, plus fragmented 1 MiB messages
/// (16 frames of 64 KiB, so 3-byte code points straddle frames).
pub fn decode_workloads() -> Vec<Workload> {
    let mut out = Vec::new();
    for kind in [Kind::Binary, Kind::Ascii, Kind::Cjk] {
        for size in SIZES {
            out.push(Workload::new(kind, size, 1));
        }
        out.push(Workload::new(kind, 1 << 20, 16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_decode_to_their_messages() {
        for kind in [Kind::Binary, Kind::Ascii, Kind::Cjk] {
            for (size, frags) in [(16, 1), (125, 1), (70_000, 1), (3000, 7)] {
                let w = Workload::new(kind, size, frags);
                let mut dst = vec![0; w.stream.len()];
                let n = copy_unmask_baseline(&mut dst, &w.stream, &w.frames);
                assert_eq!(n as u64, w.payload_bytes());
                assert_eq!(dst[..n], w.messages.concat()[..]);
                if kind.is_text() {
                    for m in &w.messages {
                        assert!(std::str::from_utf8(m).is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn fragmented_cjk_splits_code_points() {
        let w = Workload::new(Kind::Cjk, 1 << 20, 16);
        assert_eq!(w.frames.len(), w.messages.len() * 16);
        let m = &w.messages[0];
        assert!(std::str::from_utf8(&m[..w.frames[0].len]).is_err());
    }

    #[test]
    fn checker_catches_a_wrong_message() {
        let w = Workload::new(Kind::Binary, 16, 1);
        let r = std::panic::catch_unwind(|| {
            let mut c = w.checker();
            c.message(false, &[0; 16]);
        });
        assert!(r.is_err());
    }

    #[test]
    fn mem_stream_reads_in_chunks() {
        let src = vec![7u8; READ_CHUNK + 10];
        let mut s = MemStream::new(&src, 0);
        let mut buf = vec![0; 2 * READ_CHUNK];
        assert_eq!(s.read_into(&mut buf), READ_CHUNK);
        assert_eq!(s.read_into(&mut buf), 10);
        assert_eq!(s.read_into(&mut buf), 0);
    }
}
