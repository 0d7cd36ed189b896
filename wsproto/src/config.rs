//! Limits and options for a connection and its handshake.

use crate::deflate::DeflateConfig;
use crate::handshake::OriginPolicy;

/// Every limit a connection enforces. All are bounded by default.
///
/// | field | default | when exceeded |
/// |---|---|---|
/// | [`max_frame_size`](Self::max_frame_size) | 16 MiB | close 1009, [`ProtocolError::FrameTooLarge`](crate::ProtocolError::FrameTooLarge) |
/// | [`max_message_size`](Self::max_message_size) | 64 MiB | close 1009, [`ProtocolError::MessageTooLarge`](crate::ProtocolError::MessageTooLarge) |
/// | [`max_fragments`](Self::max_fragments) | 131 072 | close 1009, [`ProtocolError::TooManyFragments`](crate::ProtocolError::TooManyFragments) |
/// | [`max_handshake_size`](Self::max_handshake_size) | 16 KiB | HTTP 431 / [`HandshakeError::HeadTooLarge`](crate::HandshakeError::HeadTooLarge) |
/// | [`max_headers`](Self::max_headers) | 64 | HTTP 431 / [`HandshakeError::TooManyHeaders`](crate::HandshakeError::TooManyHeaders) |
/// | [`max_output_buffer`](Self::max_output_buffer) | 16 MiB | [`Error::OutputFull`](crate::Error::OutputFull) on the next send |
/// | [`origin_policy`](Self::origin_policy) | same host | HTTP 403 / [`HandshakeError::OriginRefused`](crate::HandshakeError::OriginRefused) |
/// | [`read_size`](Self::read_size) | 16 KiB | (blocking adapter) bytes asked per read |
/// | [`write_high_water`](Self::write_high_water) | 64 KiB | (blocking adapter) `write` flushes by itself |
///
/// Every size is checked against the length the peer *announces*, before any
/// memory is reserved for it.
///
/// ```
/// use wsproto::Config;
/// let config = Config::default().max_message_size(1 << 20).max_frame_size(64 << 10);
/// assert_eq!(config.max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame payload accepted, in bytes.
    pub max_frame_size: usize,
    /// Largest message accepted (all fragments together), in bytes.
    pub max_message_size: usize,
    /// Most frames one fragmented message may span.
    pub max_fragments: usize,
    /// Largest HTTP head (request or response line plus headers), in bytes.
    pub max_handshake_size: usize,
    /// Most header lines in the HTTP head.
    pub max_headers: usize,
    /// A send is refused while this many bytes (or more) wait to be written.
    /// The buffer can exceed it by at most the one frame that crossed it.
    pub max_output_buffer: usize,
    /// Which `Origin`s a server accepts an upgrade from (checked by
    /// [`parse_request`](crate::handshake::parse_request)); by default a
    /// browser's page must come from the host it connects to. See
    /// [`OriginPolicy`] for the rules and why.
    pub origin_policy: OriginPolicy,
    /// permessage-deflate (RFC 7692): what a server accepts or a client
    /// offers through the [`blocking`](crate::blocking) functions; `None`
    /// (the default) for no compression. Needs the `deflate` feature.
    pub deflate: Option<DeflateConfig>,
    /// Where a client's masking keys come from: the OS CSPRNG by default.
    /// See [`MaskKeys`] for the reproducible sources and when they are safe.
    pub mask_keys: MaskKeys,
    /// Bytes the [`blocking`](crate::blocking) adapter asks of the stream
    /// per read: larger reads mean fewer system calls for large messages,
    /// smaller ones less memory per idle connection.
    pub read_size: usize,
    /// The [`blocking`](crate::blocking) adapter's `write` flushes by
    /// itself once this many bytes are queued, so batching writes never
    /// runs into [`max_output_buffer`](Self::max_output_buffer).
    pub write_high_water: usize,
}

/// The source of a client's masking keys (RFC 6455 §5.3).
///
/// A browser-facing client must keep the default: §5.3 requires a fresh,
/// unpredictable key per frame so that script-chosen payloads cannot be
/// made to look like another protocol on the wire (§10.3, cache poisoning of
/// intermediaries). The other sources make a client's output reproducible
/// byte for byte, for tests, benchmarks and fuzzing.
///
/// ```
/// use wsproto::{Config, Connection, MaskKeys, Role};
/// let config = Config::default().mask_keys(MaskKeys::Seeded(7));
/// let mut a = Connection::new(Role::Client, config.clone());
/// let mut b = Connection::new(Role::Client, config);
/// a.send_text("same bytes").unwrap();
/// b.send_text("same bytes").unwrap();
/// assert_eq!(a.pending_output(), b.pending_output());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MaskKeys {
    /// Unpredictable keys (RFC 6455 §5.3): a ChaCha12 keystream keyed
    /// from the operating system's CSPRNG when the connection is created,
    /// so a frame costs no system call.
    #[default]
    Random,
    /// A deterministic sequence (SplitMix64) from this seed: a different key
    /// per frame, the same sequence for the same seed. Predictable.
    Seeded(u64),
    /// The same key for every frame. Predictable.
    Fixed([u8; 4]),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_fragments: 1 << 17,
            max_handshake_size: 16 << 10,
            max_headers: 64,
            max_output_buffer: 16 << 20,
            origin_policy: OriginPolicy::same_host(),
            deflate: None,
            mask_keys: MaskKeys::Random,
            read_size: 16 << 10,
            write_high_water: 64 << 10,
        }
    }
}

impl Config {
    /// Sets [`max_frame_size`](Self::max_frame_size).
    #[must_use]
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`max_fragments`](Self::max_fragments).
    #[must_use]
    pub fn max_fragments(mut self, frames: usize) -> Self {
        self.max_fragments = frames;
        self
    }

    /// Sets [`max_handshake_size`](Self::max_handshake_size).
    #[must_use]
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        self.max_handshake_size = bytes;
        self
    }

    /// Sets [`max_headers`](Self::max_headers).
    #[must_use]
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// Sets [`max_output_buffer`](Self::max_output_buffer).
    #[must_use]
    pub fn max_output_buffer(mut self, bytes: usize) -> Self {
        self.max_output_buffer = bytes;
        self
    }

    /// Sets [`origin_policy`](Self::origin_policy).
    ///
    /// ```
    /// use wsproto::{handshake::OriginPolicy, Config};
    /// let config = Config::default().origin_policy(OriginPolicy::any());
    /// assert!(config.origin_policy.allows_any());
    /// ```
    #[must_use]
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origin_policy = policy;
        self
    }

    /// Sets [`deflate`](Self::deflate).
    ///
    /// ```
    /// use wsproto::{deflate::DeflateConfig, Config};
    /// let config = Config::default().deflate(DeflateConfig::default());
    /// assert!(config.deflate.is_some());
    /// ```
    #[must_use]
    pub fn deflate(mut self, deflate: DeflateConfig) -> Self {
        self.deflate = Some(deflate);
        self
    }

    /// Sets [`mask_keys`](Self::mask_keys).
    ///
    /// ```
    /// use wsproto::{Config, Connection, MaskKeys, Role};
    /// let mut client = Connection::new(Role::Client, Config::default().mask_keys(MaskKeys::Fixed([1, 2, 3, 4])));
    /// client.send_binary(&[0; 4]).unwrap();
    /// assert_eq!(client.pending_output(), [0x82, 0x84, 1, 2, 3, 4, 1, 2, 3, 4]);
    /// ```
    #[must_use]
    pub fn mask_keys(mut self, keys: MaskKeys) -> Self {
        self.mask_keys = keys;
        self
    }

    /// Sets [`read_size`](Self::read_size) (at least 1 byte).
    ///
    /// ```
    /// let config = wsproto::Config::default().read_size(64 << 10);
    /// assert_eq!(config.read_size, 64 << 10);
    /// ```
    #[must_use]
    pub fn read_size(mut self, bytes: usize) -> Self {
        self.read_size = bytes.max(1);
        self
    }

    /// Sets [`write_high_water`](Self::write_high_water).
    ///
    /// ```
    /// let config = wsproto::Config::default().write_high_water(1 << 20);
    /// assert_eq!(config.write_high_water, 1 << 20);
    /// ```
    #[must_use]
    pub fn write_high_water(mut self, bytes: usize) -> Self {
        self.write_high_water = bytes;
        self
    }
}
