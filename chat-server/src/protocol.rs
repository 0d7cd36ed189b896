//! The chat protocol (DESIGN.md, "The protocol"): JSON text frames, one
//! object per frame. Client requests are parsed by hand from a
//! `serde_json::Value` rather than derived, because the error codes must be
//! decided in a fixed order (`bad_json`, then `bad_request`, then
//! `unknown_type`) that a derived enum cannot express.

use crate::accounts::Password;
use caseless::Caseless;
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// A request from a client, checked for shape (not yet for state).
///
/// `room` is the room named in a room-scoped request, as sent (checked
/// later with [`check_room`], after `not_joined`); where the client may omit
/// it, `None` means the lobby ([`Request::room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Enter a room (created on first entry), resuming after `since`.
    Enter { room: String, since: Option<u64> },
    /// Ask for room history before an id.
    History {
        room: Option<String>,
        before: Option<u64>,
        limit: usize,
    },
    /// Join (or resume) with a nickname.
    Join {
        nick: String,
        since: Option<u64>,
        token: Option<String>,
        /// For a registered nick.
        password: Option<Password>,
    },
    /// Leave a room (the session stays joined).
    Leave { room: String },
    /// A room message; `image` is a `/media/...` URL, and then `text`
    /// (its caption) may be empty.
    Message {
        room: Option<String>,
        text: String,
        image: Option<String>,
    },
    /// Rename; `password` for a registered nick.
    Nick {
        nick: String,
        password: Option<Password>,
    },
    /// Register the session's nick.
    Register { password: Password },
    /// Unregister the session's nick.
    Unregister { password: Password },
    /// A one-to-one message, maybe with an `image`, as `Message`.
    Private {
        to: String,
        text: String,
        image: Option<String>,
    },
    /// List the rooms (sorted by name), those after the name `after`.
    Rooms { after: Option<String> },
    /// Set a room's topic.
    Topic { room: Option<String>, topic: String },
    /// Ask for a page of the online list: up to `limit` nicks sorted by
    /// case-folded nick ([`nick_key`]), starting after the nick `after`.
    Who {
        room: Option<String>,
        after: Option<String>,
        limit: usize,
    },
}

impl Request {
    /// The room a room-scoped request is about (an omitted room is the
    /// lobby); `None` for the others.
    pub fn room(&self) -> Option<&str> {
        match self {
            Self::Enter { room, .. } | Self::Leave { room } => Some(room),
            Self::History { room, .. }
            | Self::Message { room, .. }
            | Self::Topic { room, .. }
            | Self::Who { room, .. } => Some(room.as_deref().unwrap_or(LOBBY)),
            Self::Join { .. }
            | Self::Nick { .. }
            | Self::Register { .. }
            | Self::Unregister { .. }
            | Self::Private { .. }
            | Self::Rooms { .. } => None,
        }
    }
}

/// The room a v1 client lives in.
pub const LOBBY: &str = "lobby";

/// The stable error codes, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    RateLimited,
    BadJson,
    BadRequest,
    UnknownType,
    NotJoined,
    BadRoom,
    NotInRoom,
    TooManyRooms,
    AlreadyJoined,
    NickInvalid,
    // These two come right after nick_invalid.
    AuthRequired,
    AuthFailed,
    NickTaken,
    /// `register` of a nick already registered.
    NickRegistered,
    UnknownUser,
    TooLong,
    /// media: an image URL the server does not hold.
    UnknownMedia,
    /// Cluster mode: Redis is unreachable, so cross-node work is refused
    /// (DESIGN.md v2, "Cluster").
    Unavailable,
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
            Self::BadRoom => "bad_room",
            Self::NotInRoom => "not_in_room",
            Self::TooManyRooms => "too_many_rooms",
            Self::AlreadyJoined => "already_joined",
            Self::NickInvalid => "nick_invalid",
            Self::AuthRequired => "auth_required",
            Self::AuthFailed => "auth_failed",
            Self::NickRegistered => "nick_registered",
            Self::NickTaken => "nick_taken",
            Self::UnknownUser => "unknown_user",
            Self::TooLong => "too_long",
            Self::UnknownMedia => "unknown_media",
            Self::Unavailable => "unavailable",
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
/// Default and bounds of `who.limit` (DESIGN.md, "Presence that scales").
pub const WHO_LIMIT_DEFAULT: usize = 100;
pub const WHO_LIMIT_MAX: usize = 500;
/// Room names are 1-32 characters of `a-z 0-9 - _` (DESIGN.md v2, "Rooms").
pub const ROOM_MAX_CHARS: usize = 32;
/// A topic is 0-200 characters; longer is `too_long`.
pub const TOPIC_MAX_CHARS: usize = 200;
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
            // A negative `since` resumes from the start; a huge one, after
            // every message (nothing to replay).
            since: opt_integer(&obj, "since")?.map(clamp_id),
            token: opt_string(&obj, "token")?,
            password: opt_string(&obj, "password")?.map(Password::new),
        }),
        "message" => {
            let (text, image) = text_or_image(&obj)?;
            Ok(Request::Message {
                room: opt_string(&obj, "room")?,
                text,
                image,
            })
        }
        "enter" => Ok(Request::Enter {
            room: string(&obj, "room")?,
            since: opt_integer(&obj, "since")?.map(clamp_id),
        }),
        "leave" => Ok(Request::Leave {
            room: string(&obj, "room")?,
        }),
        "rooms" => Ok(Request::Rooms {
            after: opt_string(&obj, "after")?,
        }),
        "topic" => Ok(Request::Topic {
            room: opt_string(&obj, "room")?,
            topic: string(&obj, "topic")?,
        }),
        "private" => {
            let to = string(&obj, "to")?;
            let (text, image) = text_or_image(&obj)?;
            Ok(Request::Private { to, text, image })
        }
        "nick" => Ok(Request::Nick {
            nick: string(&obj, "nick")?,
            password: opt_string(&obj, "password")?.map(Password::new),
        }),
        "register" => Ok(Request::Register {
            password: Password::checked(string(&obj, "password")?).map_err(|m| bad(&m))?,
        }),
        "unregister" => Ok(Request::Unregister {
            password: Password::new(string(&obj, "password")?),
        }),
        "who" => Ok(Request::Who {
            room: opt_string(&obj, "room")?,
            after: opt_string(&obj, "after")?,
            // Clamped like `history.limit` (DESIGN.md, "Presence that
            // scales": "clamped to 1-500").
            limit: opt_integer(&obj, "limit")?.map_or(WHO_LIMIT_DEFAULT, |l| {
                l.clamp(1, WHO_LIMIT_MAX as i128) as usize
            }),
        }),
        "history" => {
            // Out-of-range integers are clamped, not refused (DESIGN.md:
            // "clamped to 1-100"): a negative `before` has nothing before
            // it (ids start at 1), a huge one means "the newest".
            let before = opt_integer(&obj, "before")?.map(clamp_id);
            let limit = opt_integer(&obj, "limit")?.map_or(HISTORY_LIMIT_DEFAULT, |l| {
                l.clamp(1, HISTORY_LIMIT_MAX as i128) as usize
            });
            Ok(Request::History {
                room: opt_string(&obj, "room")?,
                before,
                limit,
            })
        }
        other => Err(Refusal::new(
            ErrorCode::UnknownType,
            format!("unknown message type {:?}", truncate(other, 40)),
        )),
    }
}

/// Checks a room name: 1-32 characters from `a-z 0-9 - _`, compared as
/// given (DESIGN.md v2, "Rooms"); else `bad_room`.
pub fn check_room(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= ROOM_MAX_CHARS
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::BadRoom,
            format!(
                "a room name is 1-{ROOM_MAX_CHARS} characters of a-z, 0-9, - and _ (got {:?})",
                truncate(name, 40)
            ),
        ))
    }
}

/// Checks a nickname (DESIGN.md, `join`):
/// - 1-32 Unicode scalar values, counted on the nick as sent (its key, below,
///   may be longer: NFKC expands some characters);
/// - no control (Cc), format (Cf), unassigned (Cn) character and no line or
///   paragraph separator (Zl, Zp): they move text around, render as nothing
///   (Unicode 16.0 §5.21: unassigned default-ignorable code points must be
///   invisible), or, for Cn, may be given a case folding or decomposition by
///   a later Unicode version, which would change a nick's key;
/// - no blank-rendering filler ([`BLANK_FILLERS`]);
/// - no leading or trailing whitespace (two nicks that differ only by
///   invisible padding would look the same in the online list);
/// - at least one letter, digit, punctuation mark or symbol (general category
///   L*, N*, P* or S*), so a nick cannot be only spaces and combining marks.
pub fn check_nick(nick: &str) -> Result<(), Refusal> {
    let count = nick.chars().count();
    if count == 0 || count > NICK_MAX_CHARS {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            format!("a nickname is 1-{NICK_MAX_CHARS} characters"),
        ));
    }
    if let Some(c) = nick.chars().find(|&c| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::Unassigned
                | GeneralCategory::Surrogate
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    }) {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            format!("a nickname may not contain U+{:04X}", c as u32),
        ));
    }
    if let Some(c) = nick.chars().find(|c| BLANK_FILLERS.contains(c)) {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            format!(
                "a nickname may not contain U+{:04X}, which renders blank",
                c as u32
            ),
        ));
    }
    if nick.trim() != nick {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            "a nickname may not start or end with a space",
        ));
    }
    let visible = nick.chars().any(|c| {
        matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Letter
                | GeneralCategoryGroup::Number
                | GeneralCategoryGroup::Punctuation
                | GeneralCategoryGroup::Symbol
        )
    });
    if !visible {
        return Err(Refusal::new(
            ErrorCode::NickInvalid,
            "a nickname needs a letter, digit, punctuation mark or symbol",
        ));
    }
    Ok(())
}

/// The key nicknames are compared by ("unique ignoring case"): two nicks
/// are the same when they match under Unicode compatibility caseless
/// matching (Unicode 16.0 §3.13, D146:
/// `NFKD(toCasefold(NFKD(toCasefold(NFD(X)))))`, with full case folding, so
/// `Straße` = `STRASSE`, `µ` = `μ`, `ſam` = `sam`, `ΟΔΟΣ` = `οδος` = `οδοσ`,
/// `ﬁ` = `fi`, `Ａ` = `a`), recomposed to NFKC to keep it short, and with the
/// invisible [`IGNORED_IN_KEY`] characters dropped first, as Unicode's
/// `NFKC_Casefold` drops default-ignorables (so `❤\u{FE0F}` = `❤`).
///
/// Any string can be keyed (a `private` message's `to` is not a checked
/// nick); the work and the key are bounded: past [`MAX_KEY_BYTES`], which
/// no valid nick's key reaches, the key ends with U+0000, which no valid
/// nick's key contains (Cc is refused and no mapping produces it).
pub fn nick_key(nick: &str) -> String {
    let mut key = String::with_capacity(nick.len().min(MAX_KEY_BYTES));
    let folded = nick
        .chars()
        .filter(|c| !IGNORED_IN_KEY.iter().any(|r| r.contains(c)))
        .nfd()
        .default_case_fold()
        .nfkd()
        .default_case_fold()
        .nfkc();
    for c in folded {
        if key.len() >= MAX_KEY_BYTES {
            key.push('\0');
            break;
        }
        key.push(c);
    }
    key
}

/// Longest key kept, in bytes. The longest key of one character is 33
/// bytes (U+FDFA, NFKC: 18 Arabic letters and spaces;
/// `tests::key_bytes_are_bounded` checks every scalar value), so 32 of them
/// stay far below this.
pub const MAX_KEY_BYTES: usize = 4096;

/// Blank-rendering fillers, refused anywhere in a nick. All but the last
/// are letters or symbols by general category, so the "needs a letter,
/// digit, punctuation mark or symbol" rule alone would count them as
/// visible:
/// - U+115F HANGUL CHOSEONG FILLER, U+1160 HANGUL JUNGSEONG FILLER,
///   U+3164 HANGUL FILLER, U+FFA0 HALFWIDTH HANGUL FILLER: Lo, and the only
///   letters in Default_Ignorable_Code_Point (DerivedCoreProperties.txt),
///   so renderers draw nothing;
/// - U+2800 BRAILLE PATTERN BLANK: So, the empty Braille cell;
/// - U+1D159 MUSICAL SYMBOL NULL NOTEHEAD: So, drawn as nothing;
/// - U+16FE4 KHITAN SMALL SCRIPT FILLER: a mark with no glyph of its own.
///
/// Each is the well-known "invisible nickname" trick on chat and game
/// platforms; spaces (Zs) are caught by the whitespace rules instead.
pub const BLANK_FILLERS: &[char] = &[
    '\u{115F}',
    '\u{1160}',
    '\u{3164}',
    '\u{FFA0}',
    '\u{2800}',
    '\u{1D159}',
    '\u{16FE4}',
];

/// Invisible characters dropped from a nick's key: the rest of
/// Default_Ignorable_Code_Point (DerivedCoreProperties.txt) once Cf and Cn
/// (refused by [`check_nick`]) and the [`BLANK_FILLERS`] are taken out.
/// All are nonspacing marks: U+034F COMBINING GRAPHEME JOINER, U+17B4 and
/// U+17B5 (Khmer inherent vowels, "not recommended"), the Mongolian free
/// variation selectors and the variation selectors. They are allowed in a
/// nick (an emoji picker inserts U+FE0F) but must not make a second nick
/// that looks like the first.
pub const IGNORED_IN_KEY: &[std::ops::RangeInclusive<char>] = &[
    '\u{034F}'..='\u{034F}',
    '\u{17B4}'..='\u{17B5}',
    '\u{180B}'..='\u{180D}',
    '\u{180F}'..='\u{180F}',
    '\u{FE00}'..='\u{FE0F}',
    '\u{E0100}'..='\u{E01EF}',
];

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

/// An optional integer field, of any size or sign. serde_json (without
/// `arbitrary_precision`) hands integers beyond `u64` or written with an
/// exponent (`1e30`, `1E2`) over as `f64`: such a number that is
/// mathematically an integer counts as one, saturated to the `i128` range
/// (every caller clamps it to a much smaller one). A fraction (`2.5`), a
/// string or any other type is `bad_request`.
fn opt_integer(obj: &Map<String, Value>, name: &str) -> Result<Option<i128>, Refusal> {
    let not_integer = || bad(&format!("\"{name}\" must be an integer"));
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i.into()))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(u.into()))
            } else {
                match n.as_f64() {
                    // `as` saturates at the i128 bounds.
                    Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Some(f as i128)),
                    _ => Err(not_integer()),
                }
            }
        }
        Some(_) => Err(not_integer()),
    }
}

/// A message id bound (`since`, `before`) clamped to the id range: below 0
/// is 0 (ids start at 1, so "after 0" is everything and "before 0" nothing).
fn clamp_id(i: i128) -> u64 {
    i.clamp(0, u64::MAX.into()) as u64
}

/// A message's `text` and optional `image` (media): with an image the text
/// is a caption and may be empty or absent (DESIGN.md v2, "Media").
fn text_or_image(obj: &Map<String, Value>) -> Result<(String, Option<String>), Refusal> {
    let image = opt_string(obj, "image")?;
    if image.is_some() {
        return Ok((opt_string(obj, "text")?.unwrap_or_default(), image));
    }
    let text = string(obj, "text")?;
    if text.is_empty() {
        return Err(bad("\"text\" is empty"));
    }
    Ok((text, None))
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
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            parse(r#"{"type":"history","limit":1000}"#).unwrap(),
            Request::History {
                room: None,
                before: None,
                limit: 100
            }
        );
        assert_eq!(
            parse(r#"{"type":"history","before":7,"limit":0}"#).unwrap(),
            Request::History {
                room: None,
                before: Some(7),
                limit: 1
            }
        );
        assert_eq!(
            parse(r#"{"type":"join","nick":"a","since":3,"token":"t"}"#).unwrap(),
            Request::Join {
                nick: "a".into(),
                since: Some(3),
                token: Some("t".into()),
                password: None,
            }
        );
    }

    #[test]
    fn room_requests_and_names() {
        assert_eq!(
            parse(r#"{"type":"enter","room":"rust","since":4}"#).unwrap(),
            Request::Enter {
                room: "rust".into(),
                since: Some(4)
            }
        );
        assert_eq!(code(r#"{"type":"enter"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"leave"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"enter","room":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"topic"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"message","room":[],"text":"x"}"#),
            ErrorCode::BadRequest
        );
        let topic = parse(r#"{"type":"topic","topic":""}"#).unwrap();
        assert_eq!(topic.room(), Some("lobby"));
        let msg = parse(r#"{"type":"message","room":"x","text":"y"}"#).unwrap();
        assert_eq!(msg.room(), Some("x"));
        assert_eq!(parse(r#"{"type":"rooms"}"#).unwrap().room(), None);
        for good in ["a", "lobby", "rust-lang_2", &"z".repeat(32)] {
            assert!(check_room(good).is_ok(), "{good}");
        }
        for bad in ["", "Rust", "a b", "é", "a.b", &"z".repeat(33), "a/b"] {
            assert_eq!(
                check_room(bad).unwrap_err().code,
                ErrorCode::BadRoom,
                "{bad}"
            );
        }
    }

    #[test]
    fn who_pages_are_clamped() {
        let who = |json: &str| match parse(json) {
            Ok(Request::Who { after, limit, .. }) => (after, limit),
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(who(r#"{"type":"who"}"#), (None, 100));
        assert_eq!(who(r#"{"type":"who","limit":0}"#), (None, 1));
        assert_eq!(who(r#"{"type":"who","limit":1e3}"#).1, 500);
        assert_eq!(
            who(r#"{"type":"who","room":"lobby","after":"bob","limit":7}"#),
            (Some("bob".into()), 7)
        );
        assert_eq!(code(r#"{"type":"who","after":3}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"who","limit":"9"}"#), ErrorCode::BadRequest);
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
        assert_eq!(
            parse(r#"{"type":"who","x":[[1]]}"#).unwrap(),
            Request::Who {
                room: None,
                after: None,
                limit: WHO_LIMIT_DEFAULT
            }
        );
    }

    fn history(json: &str) -> (Option<u64>, usize) {
        match parse(json) {
            Ok(Request::History { before, limit, .. }) => (before, limit),
            other => panic!("{json}: {other:?}"),
        }
    }

    fn since(json: &str) -> Option<u64> {
        match parse(json) {
            Ok(Request::Join { since, .. }) => since,
            other => panic!("{json}: {other:?}"),
        }
    }

    /// Issue 10 item 11: an integer of any size or sign is clamped, however
    /// serde_json represents it (i64, u64, or f64 past u64 / with an
    /// exponent); only a non-integer is `bad_request`.
    #[test]
    fn history_and_since_integers_are_clamped() {
        let max = u64::MAX;
        for (args, want) in [
            ("", (None, HISTORY_LIMIT_DEFAULT)),
            (r#","limit":null"#, (None, HISTORY_LIMIT_DEFAULT)),
            (r#","limit":-3"#, (None, 1)),
            (r#","limit":-9223372036854775808"#, (None, 1)),
            (r#","limit":0"#, (None, 1)),
            (r#","limit":7"#, (None, 7)),
            (r#","limit":7.0"#, (None, 7)),
            (r#","limit":1e1"#, (None, 10)),
            (r#","limit":1000"#, (None, 100)),
            (r#","limit":18446744073709551615"#, (None, 100)),
            (r#","limit":1e30"#, (None, 100)),
            (r#","limit":-1e30"#, (None, 1)),
            (r#","limit":1e300"#, (None, 100)),
            (r#","limit":123456789012345678901234567890"#, (None, 100)),
            (r#","before":-3"#, (Some(0), 50)),
            (r#","before":0"#, (Some(0), 50)),
            (r#","before":7"#, (Some(7), 50)),
            (r#","before":1e30"#, (Some(max), 50)),
            (r#","before":-1e30"#, (Some(0), 50)),
            (r#","before":18446744073709551615"#, (Some(max), 50)),
            (r#","before":18446744073709551616"#, (Some(max), 50)),
        ] {
            let json = format!(r#"{{"type":"history"{args}}}"#);
            assert_eq!(history(&json), want, "{json}");
        }
        for (value, want) in [
            ("null", None),
            ("-3", Some(0)),
            ("0", Some(0)),
            ("3", Some(3)),
            ("3e0", Some(3)),
            ("1e30", Some(max)),
            ("-1e30", Some(0)),
        ] {
            let json = format!(r#"{{"type":"join","nick":"a","since":{value}}}"#);
            assert_eq!(since(&json), want, "{json}");
        }
        for bad in [
            r#"{"type":"history","limit":2.5}"#,
            r#"{"type":"history","limit":-0.5}"#,
            r#"{"type":"history","limit":"10"}"#,
            r#"{"type":"history","limit":true}"#,
            r#"{"type":"history","limit":[1]}"#,
            r#"{"type":"history","before":1.5}"#,
            r#"{"type":"history","before":"7"}"#,
            r#"{"type":"join","nick":"a","since":0.1}"#,
            r#"{"type":"join","nick":"a","since":"3"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadRequest, "{bad}");
        }
        // Past f64's range serde_json refuses the number itself.
        assert_eq!(
            code(r#"{"type":"history","limit":1e400}"#),
            ErrorCode::BadJson
        );
    }

    #[test]
    fn nicknames() {
        for good in [
            "alice",
            "Zoë 🎉",
            "❤\u{FE0F}",
            "a b",
            "e\u{301}",
            "-",
            "$",
            "٣",
            "ㅎ",
            "Ⅻ",
            "Straße",
            "a\u{E000}",
            &"x".repeat(32),
            &"é".repeat(32),
            &"\u{FDFA}".repeat(32),
        ] {
            assert!(check_nick(good).is_ok(), "{good:?}: {:?}", check_nick(good));
        }
        for bad in [
            "",
            " a",
            "a ",
            "a\nb",
            "a\u{200B}b",
            "a\u{202E}b",
            "a\u{7f}",
            "a\u{AD}",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{378}",
            "a\u{E0001}",
            "\u{E000}",
            &"x".repeat(33),
            &"e\u{301}".repeat(17),
        ] {
            assert_eq!(
                check_nick(bad).unwrap_err().code,
                ErrorCode::NickInvalid,
                "{bad:?}"
            );
        }
    }

    /// Issue 10 item 9: nicks that render blank, or hold only marks and
    /// spaces, are refused.
    #[test]
    fn blank_nicks_are_refused() {
        for bad in [
            "\u{3164}",
            "\u{2800}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            "\u{1D159}",
            "\u{16FE4}",
            "a\u{3164}b",
            "\u{3164}alice",
            "alice\u{2800}",
            "\u{301}",
            "\u{301}\u{308}\u{20DD}",
            "\u{FE0F}",
            "\u{34F}",
            "\u{301} \u{301}",
            " ",
            "\u{3000}",
            "\u{A0}",
        ] {
            let refusal = check_nick(bad).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::NickInvalid, "{bad:?}");
        }
        for &c in BLANK_FILLERS {
            assert_eq!(
                check_nick(&format!("x{c}y")).unwrap_err().code,
                ErrorCode::NickInvalid,
                "U+{:04X}",
                c as u32
            );
        }
    }

    /// Issue 10 item 9: nicks equal under compatibility caseless matching
    /// share a key; distinct ones do not.
    #[test]
    fn nick_keys_fold_case_and_compatibility() {
        for (a, b) in [
            ("ÄLice", "älice"),
            ("\u{B5}", "\u{3BC}"),
            ("\u{B5}", "\u{39C}"),
            ("sam", "\u{17F}am"),
            ("ΟΔΟΣ", "οδοσ"),
            ("ΟΔΟΣ", "οδος"),
            ("Straße", "STRASSE"),
            ("Straße", "strasse"),
            ("Stra\u{1E9E}e", "strasse"),
            ("\u{FB01}sh", "FISH"),
            ("ａｌｉｃｅ", "alice"),
            ("Ａ", "a"),
            ("\u{212A}", "k"),
            ("\u{212B}", "\u{E5}"),
            ("e\u{301}", "\u{E9}"),
            ("E\u{301}", "\u{E9}"),
            ("\u{1E9B}\u{323}", "\u{1E69}"),
            ("x\u{B2}", "X2"),
            ("a\u{A0}b", "a b"),
            ("❤\u{FE0F}", "❤"),
            ("al\u{34F}ice", "alice"),
            ("\u{1F1}", "dz"),
            ("\u{2163}", "iv"),
            ("\u{3392}", "mhz"),
            ("\u{3C2}", "\u{3A3}"),
            ("\u{345}", "\u{3B9}"),
            ("\u{1FC3}", "\u{3B7}\u{3B9}"),
        ] {
            assert_eq!(nick_key(a), nick_key(b), "{a:?} vs {b:?}");
        }
        for (a, b) in [
            ("alice", "alice2"),
            ("a b", "ab"),
            ("a  b", "a b"),
            ("i", "\u{131}"),
            ("ss", "s"),
            ("\u{430}", "a"),
        ] {
            assert_ne!(nick_key(a), nick_key(b), "{a:?} vs {b:?}");
        }
    }

    /// The key of any string is bounded, and no valid nick's key reaches
    /// the bound: the longest key of one scalar value, times 32, fits.
    #[test]
    fn key_bytes_are_bounded() {
        let longest = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .map(|c| nick_key(c.encode_utf8(&mut [0; 4])).len())
            .max()
            .unwrap();
        assert_eq!(longest, nick_key("\u{FDFA}").len());
        assert!(longest * NICK_MAX_CHARS < MAX_KEY_BYTES, "{longest}");
        let huge = nick_key(&"\u{FDFA}".repeat(20_000));
        assert!(huge.len() <= MAX_KEY_BYTES + 4 + 1, "{}", huge.len());
        assert!(huge.ends_with('\0'));
        assert!(!nick_key(&"\u{FDFA}".repeat(NICK_MAX_CHARS)).contains('\0'));
    }
}
