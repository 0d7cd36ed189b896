//! Message payload types: [`Text`] (UTF-8 checked once, shared without copies)
//! and [`Message`] (what a blocking socket sends).

use bytes::Bytes;
use std::fmt;
use std::ops::Deref;

/// A text message payload: [`Bytes`] known to be valid UTF-8.
///
/// Cloning is cheap (a reference count). The UTF-8 check happens once, while
/// the message is received, so [`as_str`](Self::as_str) costs nothing.
///
/// ```
/// use wsproto::Text;
/// let t = Text::from("héllo");
/// assert_eq!(t.as_str(), "héllo");
/// assert_eq!(t.len(), 6); // Deref to str
/// assert!(Text::try_from(bytes::Bytes::from_static(b"\xff")).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Text(Bytes);

impl Text {
    /// Wraps bytes the caller has validated as UTF-8.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Self(bytes)
    }

    /// A text from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees the bytes are valid UTF-8:
        // `from_validated` is only called on payloads that passed
        // `Utf8Validator` (see connection.rs), the `From` impls take `str`s,
        // and `TryFrom<Bytes>` checks with `std::str::from_utf8`. The bytes
        // are immutable once wrapped. Covered by tests::as_str_matches_std.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes (a cheap clone).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }
}

impl From<Text> for Bytes {
    fn from(t: Text) -> Bytes {
        t.0
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A data message to send: what [`blocking::WebSocket::send`](crate::blocking::WebSocket::send)
/// takes. Built from strings (text) or bytes (binary) with `into()`.
///
/// ```
/// use wsproto::Message;
/// assert!(matches!(Message::from("hi"), Message::Text(_)));
/// assert!(matches!(Message::from(vec![1u8, 2]), Message::Binary(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(Text),
    /// A binary message.
    Binary(Bytes),
}

impl From<Text> for Message {
    fn from(t: Text) -> Self {
        Self::Text(t)
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Self::Text(s.into())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Self::Text(s.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Self::Binary(Bytes::copy_from_slice(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn as_str_matches_std(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(data.clone());
            match (Text::try_from(bytes), std::str::from_utf8(&data)) {
                (Ok(t), Ok(s)) => prop_assert_eq!(t.as_str(), s),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "disagree: {:?} vs {:?}", a, b),
            }
        }
    }
}
