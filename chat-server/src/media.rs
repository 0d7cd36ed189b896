//! Images (DESIGN.md v2, "Media (images)"): the content-addressed store on
//! disk, the in-memory index of what it holds, and the upload rules that do
//! not depend on HTTP (type, size, rate, concurrency). `http.rs` speaks the
//! protocol (`POST /upload`, `GET /media/<sha256>.<ext>`) on the
//! connection's own handshake thread, never on a reactor.
//!
//! Files are named `<sha256 hex>.<ext>` in the media directory. An upload is
//! streamed into a temporary file there (`.tmp-<random>`, a name no URL can
//! reach) while it is hashed, checked by decoding its magic number and
//! header with `imagesize`, then renamed into place (atomic on one file
//! system), so a reader never sees half a file and identical bytes land on
//! the same name. Memory per upload is [`CHUNK`] plus the prober's 8 KiB
//! buffer, whatever the image's size.
//!
//! On a cluster node (`--redis`) the checks are the same and the upload is
//! still received into a temporary file (in a directory of this process,
//! not `--data`), but the store of record is Redis (`cluster::media`):
//! `commit` sends the file there, `get` answers from the node's replica of
//! Redis' index, and `open` reads the bytes back from Redis.

use crate::cluster::media::{RedisMedia, RedisReader, StoreError};
use crate::protocol::Refusal;
use crate::room::MemberId;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Bytes read from the socket (and written to disk) at a time.
pub(crate) const CHUNK: usize = 64 << 10;

/// Largest side, in pixels, of an accepted image. The contract is silent;
/// a chat shows images inline, and a header claiming 60,000 × 60,000 pixels
/// (a few KiB of PNG) would have every member's browser try to allocate
/// gigabytes to decode it (a "decompression bomb"), so such headers are
/// refused like ones that do not decode (415).
pub const MAX_SIDE: u32 = 16_384;
/// Largest pixel count of an accepted image (about 180 MB decoded as RGBA).
pub const MAX_PIXELS: u64 = 45_000_000;

/// The image types the contract accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl Kind {
    /// From a `Content-Type` value: the media type, parameters ignored,
    /// compared case-insensitively (RFC 9110 §8.3.1).
    pub fn from_mime(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        [Self::Png, Self::Jpeg, Self::Gif, Self::Webp]
            .into_iter()
            .find(|k| k.mime().eq_ignore_ascii_case(essence))
    }

    fn from_ext(ext: &str) -> Option<Self> {
        [Self::Png, Self::Jpeg, Self::Gif, Self::Webp]
            .into_iter()
            .find(|k| k.ext() == ext)
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    fn is(self, t: imagesize::ImageType) -> bool {
        use imagesize::ImageType as T;
        matches!(
            (self, t),
            (Self::Png, T::Png)
                | (Self::Jpeg, T::Jpeg)
                | (Self::Gif, T::Gif)
                | (Self::Webp, T::Webp)
        )
    }
}

/// Why [`Media::admit`] refused an upload.
#[derive(Debug)]
pub(crate) enum Busy {
    /// The last minute holds `--upload-rate` uploads: this long until one
    /// leaves it (429).
    Wait(Duration),
    /// A cluster node cannot reach Redis (503).
    Unavailable(String),
}

/// A media file's name, `<sha256 hex>.<ext>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    pub sha: [u8; 32],
    pub kind: Kind,
}

impl Name {
    /// Parses a file name: exactly `^[0-9a-f]{64}\.(png|jpg|gif|webp)$`
    /// (lowercase hex only, so each file has one name and no name holds a
    /// `/`, `..` or anything else a path could be made of).
    pub fn parse(name: &str) -> Option<Self> {
        let (hex, ext) = name.split_once('.')?;
        let kind = Kind::from_ext(ext)?;
        if hex.len() != 64 {
            return None;
        }
        let mut sha = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            };
            sha[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self { sha, kind })
    }

    /// From a URL path, `/media/<name>`.
    pub fn from_url(url: &str) -> Option<Self> {
        Self::parse(url.strip_prefix("/media/")?)
    }

    pub fn file_name(&self) -> String {
        let mut s = String::with_capacity(70);
        for b in self.sha {
            let _ = write!(s, "{b:02x}");
        }
        s.push('.');
        s.push_str(self.kind.ext());
        s
    }

    pub fn url(&self) -> String {
        format!("/media/{}", self.file_name())
    }
}

/// What the index knows of one stored image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// An image a message may carry: its canonical URL and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub url: String,
    pub width: u32,
    pub height: u32,
}

/// Why an upload's body was refused (after its head was accepted).
#[derive(Debug)]
pub enum BodyError {
    /// 415: the bytes are not an image of the declared type (the client's
    /// fault).
    NotTheDeclaredType { declared: &'static str, why: String },
    /// 408: the body did not arrive within the upload deadline (the
    /// client's, or its network's).
    Timeout(Duration),
    /// The peer closed or reset before sending `Content-Length` bytes.
    Truncated { got: u64, want: u64 },
    /// 500: the media directory failed us (disk full, permissions: the
    /// server's fault).
    Disk(io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotTheDeclaredType { declared, why } => {
                write!(f, "the bytes are not {declared}: {why}")
            }
            Self::Timeout(t) => write!(f, "the body did not arrive within {} s", t.as_secs()),
            Self::Truncated { got, want } => {
                write!(f, "the client went away after {got} of {want} bytes")
            }
            Self::Disk(e) => write!(f, "media directory: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The media limits (from `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_bytes: u64,
    pub per_minute: u32,
    pub max_concurrent: usize,
    pub timeout: Duration,
}

/// The store: directory, index, per-member upload rate, upload slots.
#[derive(Debug)]
pub(crate) struct Media {
    dir: PathBuf,
    /// A directory made for this process alone (no `media_dir` given):
    /// removed when the server goes.
    owned_dir: bool,
    index: RwLock<HashMap<Name, Entry>>,
    /// Accepted uploads of the last minute, per member (DESIGN.md: "10 per
    /// minute per session; only accepted uploads count").
    accepted: Mutex<HashMap<MemberId, VecDeque<Instant>>>,
    uploading: AtomicUsize,
    /// Uploads in flight per member: one session must not hold every slot
    /// of `max_concurrent` (each for up to `timeout`) and lock out the rest.
    per_member: Mutex<HashMap<MemberId, usize>>,
    pub limits: Limits,
    /// The cluster's store, with `--redis` (then the directory holds only
    /// uploads being received).
    redis: Option<Arc<RedisMedia>>,
}

/// Why an accepted upload could not be stored.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// 500: the media directory failed.
    Disk(io::Error),
    /// 503: the cluster's store (Redis) is unreachable.
    Unavailable(String),
    /// 507: the cluster's store is at its bound for `retry_after`.
    Full { retry_after: Duration },
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "media directory: {e}"),
            Self::Unavailable(e) => write!(f, "the image store (Redis) is unreachable: {e}"),
            Self::Full { retry_after } => write!(
                f,
                "the image store is full; space frees in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

/// A stored image opened for reading.
pub(crate) enum Reader<'a> {
    File(File),
    Redis(RedisReader<'a>),
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.read(buf),
            Self::Redis(r) => r.read(buf),
        }
    }
}

/// Uploads one member may have in flight at once (a page sends one at a
/// time; two leaves room for a retry racing its predecessor's end).
pub(crate) const UPLOADS_PER_MEMBER: usize = 2;

/// An upload slot, given back on drop.
pub(crate) struct Slot<'a> {
    media: &'a Media,
    member: MemberId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.media.uploading.fetch_sub(1, Ordering::AcqRel);
        let mut per = self
            .media
            .per_member
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.member) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.member);
            }
        }
    }
}

impl Media {
    /// Opens (creating it) `dir`, or a fresh directory under the system's
    /// temporary directory when `None`; removes temporary files a crash
    /// left behind and indexes every well-named image.
    pub(crate) fn open(
        dir: Option<&Path>,
        limits: Limits,
        redis: Option<Arc<RedisMedia>>,
    ) -> io::Result<Self> {
        // With Redis, only uploads in flight touch the disk, in a directory
        // of this process (DESIGN.md: `--data` holds nothing).
        let dir = if redis.is_some() { None } else { dir };
        let (dir, owned_dir) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "chat-server-media-{}-{}",
                    std::process::id(),
                    random_hex(8)
                )),
                true,
            ),
        };
        let context = |e: io::Error| {
            io::Error::new(e.kind(), format!("media directory {}: {e}", dir.display()))
        };
        let mut index = HashMap::new();
        // A temporary directory is made on the first upload, so the many
        // servers that never get one (tests, --ephemeral) leave nothing.
        let listing = if owned_dir {
            Vec::new()
        } else {
            fs::create_dir_all(&dir).map_err(context)?;
            fs::read_dir(&dir)
                .map_err(context)?
                .collect::<io::Result<Vec<_>>>()
                .map_err(context)?
        };
        for entry in listing {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if name.starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(parsed) = Name::parse(name) else {
                continue;
            };
            // The name was given after hashing, so it is trusted; the
            // header is read again for the size (cheap: a few hundred bytes
            // per file for PNG/GIF/WebP, up to the first SOF for JPEG).
            if let Ok(e) = probe(&entry.path(), parsed.kind) {
                index.insert(parsed, e);
            }
        }
        Ok(Self {
            dir,
            owned_dir,
            index: RwLock::new(index),
            accepted: Mutex::new(HashMap::new()),
            uploading: AtomicUsize::new(0),
            per_member: Mutex::new(HashMap::new()),
            limits,
            redis,
        })
    }

    /// The directory the files live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image a message names, if the server holds it.
    /// On a cluster node: from the replica of the image index on a reactor
    /// (never waiting on Redis; `unavailable` while the replica reloads),
    /// asking Redis on a miss on a cluster worker.
    pub(crate) fn lookup(&self, url: &str) -> Result<Option<Image>, Refusal> {
        let Some(name) = Name::from_url(url) else {
            return Ok(None);
        };
        let entry = match &self.redis {
            Some(r) => r.get(&name)?,
            None => self.get(&name),
        };
        Ok(entry.map(|e| Image {
            url: name.url(),
            width: e.width,
            height: e.height,
        }))
    }

    /// On a cluster node, whether `url` names an image this node's
    /// replica of the index does not know (yet). An image uploaded through
    /// another node reaches the replica through this node's subscription,
    /// which may lag the uploader's 201: a message naming it is then
    /// checked on a cluster worker, which asks Redis.
    pub(crate) fn needs_redis(&self, url: &str) -> bool {
        match (&self.redis, Name::from_url(url)) {
            (Some(r), Some(name)) => !matches!(r.get(&name), Ok(Some(_))),
            _ => false,
        }
    }

    /// The index entry of `name` (this node's own store).
    pub(crate) fn get(&self, name: &Name) -> Option<Entry> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    pub(crate) fn path(&self, name: &Name) -> PathBuf {
        self.dir.join(name.file_name())
    }

    /// On a cluster node, the member of another node holding session
    /// `token` (`Ok(None)` on a single node or when none does; `Err` when
    /// Redis is unreachable).
    pub(crate) fn remote_member(&self, token: &str) -> Result<Option<MemberId>, String> {
        match &self.redis {
            Some(r) => r.remote_member(token),
            None => Ok(None),
        }
    }

    /// Whether uploads can be stored now (false: a cluster node cut from
    /// Redis, 503 before the body is read).
    pub(crate) fn available(&self) -> bool {
        self.redis.as_ref().map_or(true, |r| r.available())
    }

    /// Opens stored image `name`: `Ok(None)` when not held (404), `Err`
    /// when the cluster's store is unreachable (503). On a cluster node
    /// this is a Redis round trip: `http.rs` calls it on the connection's
    /// own thread, never on a reactor.
    pub(crate) fn open_image(&self, name: &Name) -> Result<Option<(Reader<'_>, u64)>, String> {
        if let Some(r) = &self.redis {
            return Ok(r.open(name)?.map(|(rd, len)| (Reader::Redis(rd), len)));
        }
        if self.get(name).is_none() {
            return Ok(None);
        }
        let Ok(file) = File::open(self.path(name)) else {
            return Ok(None);
        };
        let Ok(meta) = file.metadata() else {
            return Ok(None);
        };
        Ok(Some((Reader::File(file), meta.len())))
    }

    /// Takes one of the `max_concurrent` upload slots for `member`, if one
    /// is free and the member has fewer than [`UPLOADS_PER_MEMBER`] in
    /// flight.
    pub(crate) fn slot(&self, member: MemberId) -> Option<Slot<'_>> {
        {
            let mut per = self.per_member.lock().unwrap_or_else(|e| e.into_inner());
            let n = per.entry(member).or_insert(0);
            if *n >= UPLOADS_PER_MEMBER {
                return None;
            }
            *n += 1;
        }
        let before = self.uploading.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            media: self,
            member,
        };
        (before < self.limits.max_concurrent).then_some(slot)
    }

    /// Reads exactly `len` body bytes (`early` first, then `body`) into a
    /// temporary file while hashing them, checks that they are an image of
    /// type `declared`, and returns the temporary file (deleted on drop
    /// unless [`commit`](Self::commit)ted), its name and index entry.
    /// `body` must time out its reads; `deadline` bounds the whole body.
    pub(crate) fn receive(
        &self,
        early: &[u8],
        mut body: impl Read,
        len: u64,
        declared: Kind,
        deadline: Instant,
    ) -> Result<Received, BodyError> {
        if self.owned_dir {
            fs::create_dir_all(&self.dir).map_err(BodyError::Disk)?;
        }
        let mut temp = Temp::create(&self.dir).map_err(BodyError::Disk)?;
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let mut buf = vec![0u8; CHUNK];
        let mut head = [0u8; 12];
        let mut checked = false;
        let mut take = |bytes: &[u8], temp: &mut Temp, got: &mut u64| -> Result<(), BodyError> {
            if *got < 12 {
                let n = (12 - *got as usize).min(bytes.len());
                head[*got as usize..*got as usize + n].copy_from_slice(&bytes[..n]);
            }
            hasher.update(bytes);
            temp.file.write_all(bytes).map_err(BodyError::Disk)?;
            *got += bytes.len() as u64;
            // The magic number decides early: a wrong type is refused
            // without reading (and storing) the rest of a big body.
            if !checked && (*got >= 12 || *got == len) {
                checked = true;
                if let Err(why) = check_magic(&head[..(*got).min(12) as usize], declared) {
                    return Err(BodyError::NotTheDeclaredType {
                        declared: declared.mime(),
                        why,
                    });
                }
            }
            Ok(())
        };
        let first = &early[..early.len().min(len as usize)];
        if !first.is_empty() {
            take(first, &mut temp, &mut got)?;
        }
        while got < len {
            if Instant::now() >= deadline {
                return Err(BodyError::Timeout(self.limits.timeout));
            }
            let want = ((len - got) as usize).min(buf.len());
            match body.read(&mut buf[..want]) {
                Ok(0) => return Err(BodyError::Truncated { got, want: len }),
                Ok(n) => take(&buf[..n], &mut temp, &mut got)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(BodyError::Timeout(self.limits.timeout))
                }
                Err(_) => return Err(BodyError::Truncated { got, want: len }),
            }
        }
        if !checked {
            // An empty body.
            return Err(BodyError::NotTheDeclaredType {
                declared: declared.mime(),
                why: "the body is empty".into(),
            });
        }
        temp.file.flush().map_err(BodyError::Disk)?;
        let name = Name {
            sha: hasher.finalize().into(),
            kind: declared,
        };
        let entry = probe(&temp.path, declared).map_err(|why| BodyError::NotTheDeclaredType {
            declared: declared.mime(),
            why,
        })?;
        Ok(Received { temp, name, entry })
    }

    /// Counts an accepted upload of member `who` (session `token`) against
    /// `--upload-rate`: `Err(Busy::Wait)` when the last minute already
    /// holds `per_minute` of them. On a cluster node the minute is counted
    /// in Redis, for the session across every node (`Err(Busy::Unavailable)`
    /// when Redis is unreachable).
    pub(crate) fn admit(&self, who: MemberId, token: &str, now: Instant) -> Result<(), Busy> {
        if let Some(r) = &self.redis {
            return match r.admit(token, self.limits.per_minute) {
                Ok(None) => Ok(()),
                Ok(Some(wait)) => Err(Busy::Wait(wait)),
                Err(e) => Err(Busy::Unavailable(e)),
            };
        }
        self.admit_here(who, now).map_err(Busy::Wait)
    }

    /// [`admit`](Self::admit) on a single node.
    fn admit_here(&self, who: MemberId, now: Instant) -> Result<(), Duration> {
        let minute = Duration::from_secs(60);
        let mut all = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        // Forget members with nothing in the window, so the map holds at
        // most the members that uploaded in the last minute.
        all.retain(|_, q| {
            while q
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= minute)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = all.entry(who).or_default();
        if q.len() >= self.limits.per_minute as usize {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(minute.saturating_sub(now.saturating_duration_since(oldest)));
        }
        q.push_back(now);
        Ok(())
    }

    /// Moves a received upload into place under its content address (the
    /// same bytes as a stored file: the stored one stays) and indexes it.
    pub(crate) fn commit(&self, r: Received) -> Result<(Name, Entry), CommitError> {
        let Received {
            mut temp,
            name,
            entry,
        } = r;
        if let Some(redis) = &self.redis {
            return match redis.store(&mut temp.file, &name, &entry) {
                Ok(()) => Ok((name, entry)),
                Err(StoreError::Full { retry_after }) => Err(CommitError::Full { retry_after }),
                Err(StoreError::Unavailable(e)) => Err(CommitError::Unavailable(e)),
                Err(StoreError::Disk(e)) => Err(CommitError::Disk(e)),
            };
        }
        self.commit_file(temp, name, entry)
            .map_err(CommitError::Disk)
    }

    fn commit_file(&self, mut temp: Temp, name: Name, entry: Entry) -> io::Result<(Name, Entry)> {
        let path = self.path(&name);
        if self.get(&name).is_none() || !path.exists() {
            // Durable before it is announced: the file's bytes, then the
            // rename (the directory entry), so after a crash a name never
            // holds a partial file.
            temp.file.sync_data()?;
            fs::rename(&temp.path, &path)?;
            temp.keep = true;
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            self.index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, entry);
        }
        Ok((name, entry))
    }
}

impl Media {
    /// Removes the directory if it was made for this process alone (called
    /// when the server stops: the last `Arc` of the server state may live
    /// on in a thread that the process exit ends without dropping it).
    pub(crate) fn remove_temporary(&self) {
        if self.owned_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.remove_temporary();
    }
}

/// An upload that passed every check but the rate, on disk under a
/// temporary name.
pub(crate) struct Received {
    temp: Temp,
    pub name: Name,
    pub entry: Entry,
}

/// A temporary file, removed on drop unless kept.
struct Temp {
    file: File,
    path: PathBuf,
    keep: bool,
}

impl Temp {
    fn create(dir: &Path) -> io::Result<Self> {
        let path = dir.join(format!(".tmp-{}", random_hex(12)));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            keep: false,
        })
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The first bytes must carry the declared type's magic number.
fn check_magic(head: &[u8], declared: Kind) -> Result<(), String> {
    match imagesize::image_type(head) {
        Ok(t) if declared.is(t) => Ok(()),
        Ok(t) => Err(format!("its magic number says {t:?}")),
        Err(_) => Err("no known magic number".into()),
    }
}

/// Decodes the header of the file at `path` (with `imagesize`): it must be
/// a `kind` image of a sane size.
fn probe(path: &Path, kind: Kind) -> Result<Entry, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = BufReader::new(file);
    let t = imagesize::reader_type(&mut r).map_err(|e| format!("{e}"))?;
    if !kind.is(t) {
        return Err(format!("its magic number says {t:?}"));
    }
    let size = t
        .reader_size(&mut r)
        .map_err(|e| format!("its header does not decode: {e}"))?;
    let (w, h) = (size.width as u64, size.height as u64);
    if w == 0 || h == 0 {
        return Err(format!("its header gives a size of {w} × {h}"));
    }
    if w > u64::from(MAX_SIDE) || h > u64::from(MAX_SIDE) || w * h > MAX_PIXELS {
        return Err(format!(
            "{w} × {h} pixels is over the limit ({MAX_SIDE} a side, {MAX_PIXELS} in all)"
        ));
    }
    Ok(Entry {
        width: w as u32,
        height: h as u32,
        bytes,
    })
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    // Uniqueness, not secrecy: a clock-based fallback is fine.
    if getrandom::getrandom(&mut raw).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        raw.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (t >> (8 * (i % 16))) as u8);
    }
    raw.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exactly_hex_and_a_known_extension() {
        let hex = "0123456789abcdef".repeat(4);
        let n = Name::parse(&format!("{hex}.png")).unwrap();
        assert_eq!(n.file_name(), format!("{hex}.png"));
        assert_eq!(
            Name::from_url(&format!("/media/{hex}.jpg")).unwrap().kind,
            Kind::Jpeg
        );
        for bad in [
            format!("{}.png", hex.to_uppercase()),
            format!("{hex}.PNG"),
            format!("{hex}.jpeg"),
            format!("{hex}.png.png"),
            format!("{hex}png"),
            format!("{}.png", &hex[1..]),
            format!("{hex}0.png"),
            format!("../{}.png", &hex[3..]),
            format!("{}/..png", &hex[..63]),
            "..".into(),
            ".tmp-0123.png".into(),
            format!("{}g.gif", &hex[..63]),
            String::new(),
        ] {
            assert!(Name::parse(&bad).is_none(), "{bad}");
        }
        assert!(Name::from_url(&format!("/media/../{hex}.png")).is_none());
        assert!(Name::from_url(&format!("media/{hex}.png")).is_none());
    }

    #[test]
    fn content_types() {
        assert_eq!(Kind::from_mime("image/png"), Some(Kind::Png));
        assert_eq!(Kind::from_mime("Image/JPEG; q=1"), Some(Kind::Jpeg));
        assert_eq!(Kind::from_mime("image/svg+xml"), None);
        assert_eq!(Kind::from_mime("image/jpg"), None);
        assert_eq!(Kind::from_mime(""), None);
    }
}
