//! The chat protocol (DESIGN.md, "The protocol"): JSON text frames, one
//! object per frame. Client requests are parsed by hand from a
//! `serde_json::Value` rather than derived, because the error codes must be
//! decided in a fixed order (`bad_json`, then `bad_request`, then
//! `unknown_type`) that a derived enum cannot express.

use serde_json::{Map, Value};

/// A request from a client, checked for shape (not yet for state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Ask for room history before an id.
    History { before: Option<u64>, limit: usize },
    /// Join (or resume) with a nickname.
    Join {
        nick: String,
        since: Option<u64>,
        token: Option<String>,
    },
    /// A room message.
    Message { text: String },
    /// Rename.
    Nick { nick: String },
    /// A one-to-one message.
    Private { to: String, text: String },
    /// Ask for the online list.
    Who,
}

/// The stable error codes, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    RateLimited,
    BadJson,
    BadRequest,
    UnknownType,
    NotJoined,
    AlreadyJoined,
    NickInvalid,
    NickTaken,
    UnknownUser,
    TooLong,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::BadJson => "bad_json",
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::NickInvalid => "nick_invalid",
            Self::NickTaken => "nick_taken",
            Self::UnknownUser => "unknown_user",
            Self::TooLong => "too_long",
        }
    }
}

/// A refusal: the code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `{"type":"error",...}` object.
    pub fn to_json(&self) -> String {
        serde_json::json!({"type": "error", "code": self.code.as_str(), "message": self.message})
            .to_string()
    }
}

/// Default and bounds of `history.limit` (DESIGN.md).
pub const HISTORY_LIMIT_DEFAULT: usize = 50;
pub const HISTORY_LIMIT_MAX: usize = 100;
/// Nicknames are 1-32 Unicode scalar values.
pub const NICK_MAX_CHARS: usize = 32;

/// Parses one client text frame: `bad_json`, `bad_request` or
/// `unknown_type`, in that order.
pub fn parse(text: &str) -> Result<Request, Refusal> {
    if nesting_depth(text.as_bytes()) > MAX_NESTING {
        return Err(Refusal::new(ErrorCode::BadJson, "JSON nested too deeply"));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad("a message must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("\"type\" must be a string")),
        None => return Err(bad("\"type\" is missing")),
    };
    match kind {
        "join" => Ok(Request::Join {
            nick: string(&obj, "nick")?,
            since: opt_u64(&obj, "since")?,
            token: opt_string(&obj, "token")?,
        }),
        "message" => Ok(Request::Message {
            text: text_field(&obj)?,
        }),
        "private" => Ok(Request::Private {
            to: string(&obj, "to")?,
            text: text_field(&obj)?,
        }),
        "nick" => Ok(Request::Nick {
            nick: string(&obj, "nick")?,
        }),
        "who" => Ok(Request::Who),
        "history" => {
            let before = opt_u64(&obj, "before")?;
            let limit = opt_u64(&obj, "limit")?.map_or(HISTORY_LIMIT_DEFAULT, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            });
            Ok(Request::History {
                before,
                limit: limit.clamp(1, HISTORY_LIMIT_MAX),
            })
        }
        other => Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown message type {:?}", truncate(other, 40)),
        )),
    }
}

/// Checks a nickname: 1-32 scalar values, no control (Cc) or format (Cf)
/// character, no leading or trailing whitespace (two nicks that differ only
/// by invisible padding would look the same in the online list).
pub fn check_nick(nick: &str) -> Result<(), Refusal> {
    let count = nick.chars().count();
    if count == 0 || count > NICK_MAX_CHARS {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            format!("a nickname is 1-{NICK_MAX_CHARS} characters"),
        ));
    }
    if let Some(c) = nick.chars().find(|&c| c.is_control() || is_format(c)) {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            format!("a nickname may not contain U+{:04X}", c as u32),
        ));
    }
    if nick.trim() != nick {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            "a nickname may not start or end with a space",
        ));
    }
    Ok(())
}

/// The key nicknames are compared by ("unique ignoring case").
pub fn nick_key(nick: &str) -> String {
    nick.to_lowercase()
}

/// Unicode general category Cf (format characters), Unicode 15.1.
fn is_format(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = c as u32;
    CF.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Deepest JSON nesting accepted. Requests are flat objects; the bound
/// keeps the recursive parser's stack use small on the connection threads'
/// small stacks, whatever the build profile.
const MAX_NESTING: usize = 8;

/// The deepest `[`/`{` nesting in `json`, ignoring brackets inside strings.
/// Malformed input is fine here: the parser rejects it afterwards.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn bad(message: &str) -> Refusal {
    Refusal::new(ErrorCode::BadRequest, message)
}

fn string(obj: &Map<String, Value>, name: &str) -> Result<String, Refusal> {
    opt_string(obj, name)?.ok_or_else(|| bad(&format!("\"{name}\" is missing")))
}

fn opt_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, Refusal> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(&format!("\"{name}\" must be a string"))),
    }
}

fn opt_u64(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, Refusal> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(&format!("\"{name}\" must be a non-negative integer"))),
    }
}

fn text_field(obj: &Map<String, Value>) -> Result<String, Refusal> {
    let text = string(obj, "text")?;
    if text.is_empty() {
        return Err(bad("\"text\" is empty"));
    }
    Ok(text)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text).unwrap_err().code
    }

    #[test]
    fn shapes_and_error_order() {
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code("{}"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"message","text":""}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"message","text":5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"history","limit":-1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            parse(r#"{"type":"history","limit":1000}"#).unwrap(),
            Request::History {
                before: None,
                limit: 100
            }
        );
        assert_eq!(
            parse(r#"{"type":"history","before":7,"limit":0}"#).unwrap(),
            Request::History {
                before: Some(7),
                limit: 1
            }
        );
        assert_eq!(
            parse(r#"{"type":"join","nick":"a","since":3,"token":"t"}"#).unwrap(),
            Request::Join {
                nick: "a".into(),
                since: Some(3),
                token: Some("t".into())
            }
        );
    }

    #[test]
    fn nesting_is_bounded_before_parsing() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"{{{{"}"#), 1);
        assert_eq!(nesting_depth(b"[[[]]]"), 3);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep), ErrorCode::BadJson);
        assert_eq!(
            code(r#"{"type":"who","x":[[[[[[[[[1]]]]]]]]]}"#),
            ErrorCode::BadJson
        );
        assert_eq!(parse(r#"{"type":"who","x":[[1]]}"#).unwrap(), Request::Who);
    }

    #[test]
    fn nicknames() {
        assert!(check_nick("alice").is_ok());
        assert!(check_nick("Zoë 🎉").is_ok());
        assert!(check_nick(&"x".repeat(32)).is_ok());
        assert!(check_nick(&"é".repeat(32)).is_ok());
        for bad in [
            "",
            " a",
            "a ",
            "a\nb",
            "a\u{200B}b",
            "a\u{202E}b",
            "a\u{7f}",
            &"x".repeat(33),
        ] {
            assert_eq!(
                check_nick(bad).unwrap_err().code,
                ErrorCode::NickInvalid,
                "{bad:?}"
            );
        }
        assert_eq!(nick_key("ÄLice"), nick_key("älice"));
    }
}
