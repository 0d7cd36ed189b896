//! What [`connect`](super::connect) dials: TCP for `ws://`, TLS over TCP
//! (`tokio-rustls`, with the `tokio-rustls` feature) for `wss://`, and the TLS
//! entry points. Certificates, roots and errors are the [`tls`](crate::tls)
//! module's: one loader and one set of errors for both adapters.

use super::split::Halves;
use crate::error::Error;
use crate::handshake::ClientRequest;
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use ::tokio::net::TcpStream;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

#[cfg(feature = "tokio-rustls")]
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// The stream under a [`WebSocketStream`](super::WebSocketStream) from
/// [`connect`](super::connect): TCP for `ws://`, TLS for `wss://` (the
/// `tokio-rustls` feature). Both split without a lock on TCP
/// ([`split`](super::WebSocketStream::split); TLS shares its state between
/// the halves behind tokio's own lock).
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    #[cfg(feature = "tokio-rustls")]
    Tls(Box<ClientTls>),
}

impl MaybeTlsStream {
    /// True for `wss://`.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The TCP socket (under TLS for `wss://`: writing to it directly
    /// breaks the stream).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

impl From<TcpStream> for MaybeTlsStream {
    fn from(tcp: TcpStream) -> Self {
        Self::Plain(tcp)
    }
}

/// Calls `$f` on the pinned TCP or TLS stream alike.
macro_rules! either {
    ($s:expr, $v:ident => $f:expr) => {
        match $s.get_mut() {
            MaybeTlsStream::Plain(s) => {
                let $v = Pin::new(s);
                $f
            }
            #[cfg(feature = "tokio-rustls")]
            MaybeTlsStream::Tls(s) => {
                let $v = Pin::new(&mut **s);
                $f
            }
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_shutdown(cx))
    }
}

/// The read half of a split [`MaybeTlsStream`].
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsRead {
    /// `ws://`: TCP's own read half, no lock.
    Plain(OwnedReadHalf),
    /// `wss://`: both directions share the TLS state.
    #[cfg(feature = "tokio-rustls")]
    Tls(::tokio::io::ReadHalf<Box<ClientTls>>),
}

/// The write half of a split [`MaybeTlsStream`].
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsWrite {
    /// `ws://`: TCP's own write half, no lock.
    Plain(OwnedWriteHalf),
    /// `wss://`: both directions share the TLS state.
    #[cfg(feature = "tokio-rustls")]
    Tls(::tokio::io::WriteHalf<Box<ClientTls>>),
}

impl AsyncRead for MaybeTlsRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Halves for MaybeTlsStream {
    type Read = MaybeTlsRead;
    type Write = MaybeTlsWrite;
    fn into_halves(self) -> (MaybeTlsRead, MaybeTlsWrite) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (MaybeTlsRead::Plain(r), MaybeTlsWrite::Plain(w))
            }
            #[cfg(feature = "tokio-rustls")]
            Self::Tls(s) => {
                let (r, w) = ::tokio::io::split(s);
                (MaybeTlsRead::Tls(r), MaybeTlsWrite::Tls(w))
            }
        }
    }
}

/// Dials the request's host: TCP, then TLS with `tls` for `wss://`
/// (Mozilla's roots when `None`, as the blocking `connect`).
pub(super) async fn dial(
    request: &ClientRequest,
    #[cfg(feature = "tokio-rustls")] tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<MaybeTlsStream, Error> {
    if request.is_secure() {
        #[cfg(not(feature = "tokio-rustls"))]
        return Err(crate::HandshakeError::InvalidUrl {
            url: format!("wss://{}", request.address()),
            why: "wss:// needs wsproto's tokio-rustls feature (or a TLS stream of your own and tokio::client)",
        }
        .into());
    }
    let tcp = TcpStream::connect(request.address()).await?;
    tcp.set_nodelay(true)?;
    #[cfg(feature = "tokio-rustls")]
    if request.is_secure() {
        let tls = tls.unwrap_or_else(crate::tls::client_config);
        return Ok(MaybeTlsStream::Tls(Box::new(
            tls::connect(tcp, request.host(), tls).await?,
        )));
    }
    Ok(MaybeTlsStream::Plain(tcp))
}

#[cfg(feature = "tokio-rustls")]
pub(super) mod tls {
    use crate::error::Error;
    use crate::tls::{TlsError, DEFAULT_HANDSHAKE_TIMEOUT};
    use ::tokio::net::TcpStream;
    use rustls::pki_types::ServerName;
    use std::future::Future;
    use std::io;
    use std::sync::Arc;

    /// The TLS failure inside a tokio-rustls handshake error: rustls'
    /// error travels as the source of an `io::Error`.
    fn handshake_error(e: io::Error) -> Error {
        if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return TlsError::from(r.clone()).into();
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => TlsError::UnexpectedEof.into(),
            _ => e.into(),
        }
    }

    /// Bounds a handshake by [`DEFAULT_HANDSHAKE_TIMEOUT`].
    async fn bounded<T>(f: impl Future<Output = io::Result<T>>) -> Result<T, Error> {
        match ::tokio::time::timeout(DEFAULT_HANDSHAKE_TIMEOUT, f).await {
            Ok(r) => r.map_err(handshake_error),
            Err(_) => Err(TlsError::HandshakeTimeout(DEFAULT_HANDSHAKE_TIMEOUT).into()),
        }
    }

    pub(in crate::tokio) async fn connect(
        tcp: TcpStream,
        host: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::InvalidServerName(host.to_owned()))?;
        bounded(tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await
    }

    pub(in crate::tokio) async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Error> {
        bounded(tokio_rustls::TlsAcceptor::from(config).accept(tcp)).await
    }
}
