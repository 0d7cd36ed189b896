//! # wsproto
//!
//! A strict, fast implementation of the WebSocket protocol (RFC 6455) for
//! both roles, in three layers:
//!
//! 1. **Pure codecs** with no state and no I/O: [`frame`] headers, [`mask`]ing,
//!    incremental [`utf8`] validation, [`close`] codes and payloads, and the
//!    opening [`handshake`] (request and response parsing, `Sec-WebSocket-Accept`,
//!    subprotocols, extension headers, ready-made HTTP rejections).
//! 2. **[`Connection`]**, the sans-IO state machine: bytes in, [`Event`]s out,
//!    bytes to send. Pongs, close echoes and error closes are queued for you.
//! 3. **[`blocking`]**, a `std::io` adapter: [`blocking::accept`],
//!    [`blocking::connect`], `read`/`send`/`close`, split halves for two
//!    threads, keepalive. With the `tokio` feature, `wsproto::tokio` is the
//!    same over any tokio `AsyncRead + AsyncWrite` (a `Stream` + `Sink`).
//!
//! ```text
//!            receive(&[u8]) ──▶ ┌────────────┐ ──▶ next_event() -> Event
//!  transport                    │ Connection │
//!            ◀── pending_output │            │ ◀── send_text / ping / close
//!                               └────────────┘
//! ```
//!
//! ## Example: an echo server and a client
//!
//! ```
//! use std::net::TcpListener;
//! use wsproto::{blocking, CloseCode, Event};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let server = std::thread::spawn(move || -> Result<(), wsproto::Error> {
//!     let (stream, _) = listener.accept()?;
//!     let mut ws = blocking::accept(stream)?;
//!     loop {
//!         match ws.read()? {
//!             Event::Text(t) => ws.send(t)?,
//!             Event::Binary(b) => ws.send(b)?,
//!             Event::Close(_) => return Ok(()), // the echo is already sent
//!             _ => {} // Ping, Pong (already answered), and future events
//!         }
//!     }
//! });
//!
//! let (mut ws, _response) = blocking::connect(&format!("ws://{addr}/"))?;
//! ws.send("hello")?;
//! assert_eq!(ws.read()?, Event::Text("hello".into()));
//! ws.close(CloseCode::NORMAL, "done")?;
//! assert!(matches!(ws.read()?, Event::Close(f) if f.code == CloseCode::NORMAL));
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: the sans-IO core
//!
//! ```
//! use wsproto::{Config, Connection, Event, Role, ProtocolError, CloseCode};
//!
//! let mut server = Connection::new(Role::Server, Config::default());
//! // An unmasked frame from a client is a protocol violation…
//! server.receive(b"\x81\x02hi");
//! assert_eq!(server.next_event(), Err(ProtocolError::UnmaskedFrame));
//! // …and the Close frame answering it (code 1002) is already queued.
//! let out = server.pending_output();
//! assert_eq!((out[0], &out[2..4]), (0x88, &[0x03, 0xea][..])); // Close, 1002
//! assert!(server.is_closed());
//! ```
//!
//! ## Limits
//!
//! Every size is bounded by default; see [`Config`] for the table. A message
//! over the limit is answered with close 1009 before any memory is reserved
//! for it.
//!
//! ## Compression
//!
//! permessage-deflate (RFC 7692), with the `deflate` feature (default):
//! set [`Config::deflate`] and the [`blocking`] functions offer or accept
//! it; see [`deflate`] for the sans-IO steps. Inflating is bounded by
//! [`Config::max_message_size`].
//!
//! ## TLS
//!
//! With the `rustls` feature, [`blocking::connect`] dials `wss://` URLs,
//! verified against Mozilla's roots, and `blocking::accept_tls` serves
//! them; see the `tls` module. Without it, bring your own TLS stream
//! ([`blocking::client`] and [`blocking::WebSocket::from_raw`] take any
//! [`blocking::Transport`]; [`blocking::AnyStream`] makes one of any
//! `Read + Write`).
//!
//! ## What it does not do (yet)
//!
//! - HTTP/2 WebSockets (RFC 8441).

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(rustdoc::broken_intra_doc_links)]

pub mod blocking;
pub mod close;
mod config;
mod connection;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
mod message;
mod owed;
mod random;
#[cfg(feature = "rustls")]
pub mod tls;
#[cfg(feature = "tokio")]
pub mod tokio;
mod upgrade;
pub mod utf8;
mod vectored;

pub use bytes::Bytes;
pub use close::{CloseCode, CloseFrame};
pub use config::{Config, MaskKeys};
pub use connection::{Connection, Event, EventRef, State};
pub use error::{Error, Fault, HandshakeError, HandshakeErrorKind, ProtocolError, UsageError};
pub use frame::{Opcode, Role};
pub use message::{Message, Text};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
