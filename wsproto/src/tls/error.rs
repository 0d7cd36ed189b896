//! What failed in TLS, and who is at fault.

use crate::error::Fault;
use rustls::{CertificateError, InvalidMessage};
use std::path::PathBuf;
use std::time::Duration;

/// A TLS failure: a certificate the client refused (each common reason its
/// own variant), a peer that does not speak TLS or gave up on us, a
/// handshake that took too long, or a certificate or key file we could
/// not use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate is valid, but for other names
    /// (RFC 6125 §6: the host we dialled must be among them).
    #[error("the server's certificate is for {presented:?}, not for {expected:?}")]
    CertificateNotValidForName {
        /// The host we asked for.
        expected: String,
        /// The names the certificate holds (lossy, as the peer sent them).
        presented: Vec<String>,
    },
    /// The peer's certificate chain does not lead to a trusted root (a
    /// self-signed certificate, or a CA not in the root store).
    #[error("the peer's certificate is not issued by a trusted CA (unknown issuer)")]
    UnknownIssuer,
    /// The peer's certificate is past its `notAfter` date.
    #[error("the peer's certificate has expired")]
    CertificateExpired,
    /// The peer's certificate is before its `notBefore` date.
    #[error("the peer's certificate is not valid yet")]
    CertificateNotValidYet,
    /// The peer's certificate was revoked.
    #[error("the peer's certificate is revoked")]
    CertificateRevoked,
    /// Another problem with the peer's certificate (bad signature or
    /// encoding, wrong key usage, ...): rustls' words.
    #[error("the peer's certificate is not acceptable: {0}")]
    BadCertificate(String),
    /// The peer sent no certificate where one is required.
    #[error("the peer sent no certificate")]
    NoCertificate,
    /// The peer ended the handshake with a TLS alert (RFC 8446 §6): it
    /// refused our certificate, shares no cipher suite or version with us,
    /// or failed otherwise.
    #[error("the peer sent TLS alert {0}")]
    AlertReceived(String),
    /// The first bytes are not a TLS record: the peer speaks something
    /// else (typically plain HTTP sent to the TLS port).
    #[error("the peer is not speaking TLS (its first bytes are not a TLS record)")]
    NotTls,
    /// The peer broke the TLS protocol or offered nothing we support.
    #[error("TLS failed by the peer: {0}")]
    Peer(Box<rustls::Error>),
    /// The handshake did not finish in time (a peer that stalls or trickles
    /// bytes is cut off here, never waited for forever).
    #[error("the TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The transport closed during the TLS handshake.
    #[error("the connection closed during the TLS handshake")]
    UnexpectedEof,
    /// A host that cannot be a TLS server name (RFC 6066 §3).
    #[error("{0:?} is not a valid TLS server name")]
    InvalidServerName(String),
    /// A certificate or key file is missing, unreadable or not what it
    /// should be.
    #[error("{path:?}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match the
    /// certificate, an unsupported key type).
    #[error("TLS configuration refused: {0}")]
    Config(Box<rustls::Error>),
    /// A failure on our own side (no random bytes, no clock).
    #[error("TLS failed locally: {0}")]
    Local(Box<rustls::Error>),
}

impl TlsError {
    /// Who is at fault: [`Fault::Peer`] for what the peer sent (its
    /// certificate, alerts, bytes), [`Fault::Caller`] for our own
    /// configuration, [`Fault::Transport`] for the connection itself.
    ///
    /// ```
    /// use wsproto::{tls::TlsError, Fault};
    /// assert_eq!(TlsError::UnknownIssuer.fault(), Fault::Peer);
    /// assert_eq!(TlsError::InvalidServerName("a b".into()).fault(), Fault::Caller);
    /// assert_eq!(TlsError::UnexpectedEof.fault(), Fault::Transport);
    /// ```
    pub fn fault(&self) -> Fault {
        match self {
            Self::CertificateNotValidForName { .. }
            | Self::UnknownIssuer
            | Self::CertificateExpired
            | Self::CertificateNotValidYet
            | Self::CertificateRevoked
            | Self::BadCertificate(_)
            | Self::NoCertificate
            | Self::AlertReceived(_)
            | Self::NotTls
            | Self::Peer(_) => Fault::Peer,
            Self::InvalidServerName(_) | Self::Pem { .. } | Self::Config(_) => Fault::Caller,
            Self::HandshakeTimeout(_) | Self::UnexpectedEof | Self::Local(_) => Fault::Transport,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidCertificate(c) => match c {
                CertificateError::NotValidForName => Self::CertificateNotValidForName {
                    expected: String::new(),
                    presented: Vec::new(),
                },
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => Self::CertificateNotValidForName {
                    expected: server_name_text(&expected),
                    presented,
                },
                CertificateError::UnknownIssuer => Self::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::CertificateExpired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::CertificateNotValidYet
                }
                CertificateError::Revoked => Self::CertificateRevoked,
                other => Self::BadCertificate(E::InvalidCertificate(other).to_string()),
            },
            E::NoCertificatesPresented => Self::NoCertificate,
            E::AlertReceived(a) => Self::AlertReceived(format!("{a:?}")),
            // The record layer's first check (RFC 8446 §5.1): "GET /" or any
            // other plain text starts with a byte that is no content type.
            E::InvalidMessage(InvalidMessage::InvalidContentType) => Self::NotTls,
            E::InconsistentKeys(_) => Self::Config(Box::new(e)),
            E::FailedToGetCurrentTime | E::FailedToGetRandomBytes | E::EncryptError => {
                Self::Local(Box::new(e))
            }
            other => Self::Peer(Box::new(other)),
        }
    }
}

fn server_name_text(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

impl From<TlsError> for crate::Error {
    fn from(e: TlsError) -> Self {
        crate::Error::Tls(e)
    }
}

/// A TLS failure after the handshake travels through `std::io` as an
/// `InvalidData` error carrying the [`TlsError`] (see [`TlsError::find`]).
pub(crate) fn to_io(e: TlsError) -> std::io::Error {
    let kind = match e {
        TlsError::HandshakeTimeout(_) => std::io::ErrorKind::TimedOut,
        TlsError::UnexpectedEof => std::io::ErrorKind::UnexpectedEof,
        _ => std::io::ErrorKind::InvalidData,
    };
    std::io::Error::new(kind, e)
}

impl TlsError {
    /// The TLS failure inside `e`, if any: an [`Error::Tls`](crate::Error::Tls)
    /// (the handshake) or one that came through `std::io` later (a read or
    /// write of an established [`TlsStream`](super::TlsStream)).
    ///
    /// ```
    /// use wsproto::tls::TlsError;
    /// let e = wsproto::Error::Tls(TlsError::UnknownIssuer);
    /// assert_eq!(TlsError::find(&e), Some(&TlsError::UnknownIssuer));
    /// assert_eq!(TlsError::find(&wsproto::Error::Closed), None);
    /// ```
    pub fn find(e: &crate::Error) -> Option<&TlsError> {
        match e {
            crate::Error::Tls(t) => Some(t),
            crate::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref()),
            _ => None,
        }
    }
}
