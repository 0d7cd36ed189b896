//! The Lua scripts of cluster mode. Redis runs a script atomically (no
//! other command runs in between), which gives the two guarantees the
//! cluster relies on: ids are published in the order they are allocated
//! (PUBLISH), and a dead node is reaped by exactly one survivor (REAP).
//! Keys built inside scripts are fine for one Redis (not Redis Cluster).
//!
//! The room list is the sorted set `chat:rooms` (all scores 0, so it is
//! ordered by name): a room is added when a member enters it (a sender is
//! always a member: its seat was published before its message) or gets a
//! topic, and dropped (by `forget!`) when its last member
//! leaves, on any node, unless it holds messages or a topic (DESIGN.md v2,
//! "Rooms"; the lobby stays).

/// Lua: `forget(room)` drops an unused room from the list once its
/// members hash is empty (pasted into the scripts that remove seats).
macro_rules! forget {
    () => {
        r"
local function forget(room)
  if room ~= 'lobby' and redis.call('HLEN', 'chat:m:' .. room) == 0
    and redis.call('EXISTS', 'chat:s:' .. room) == 0
    and redis.call('HEXISTS', 'chat:topics', room) == 0 then
    redis.call('ZREM', 'chat:rooms', room)
  end
end
"
    };
}

/// KEYS: counter, stream ('' for a private message). ARGV: prefix, suffix,
/// MAXLEN, channel, header, trim mode (`~` or `=`). Allocates the id,
/// appends the message to the room's stream under the stream id `<id>-0`
/// (trimmed to MAXLEN: `--retain-messages`), publishes
/// `header..id..TAB..message`. Returns the id.
pub const PUBLISH: &str = r"
local id = redis.call('INCR', KEYS[1])
local m = ARGV[1] .. id .. ARGV[2]
if KEYS[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], ARGV[3], id .. '-0', 'm', m)
end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. id .. '\t' .. m)
return id
";

/// KEYS: counter, stream, the room's members hash ('' for none), the
/// topics hash. ARGV: max, min, count, room, the most rooms (0: no check).
/// The counter (read atomically with the rest), the room's topic, the
/// number of entries, the id, message pairs (newest first), then the
/// room's members as nick key, `node TAB nick` pairs. With a most rooms,
/// a room not yet listed is listed, or `{'full', n}` is returned when the
/// cluster holds that many already (`--max-rooms` is cluster-wide).
pub const READ: &str = r"
if ARGV[5] ~= '0' and not redis.call('ZSCORE', 'chat:rooms', ARGV[4]) then
  local n = redis.call('ZCARD', 'chat:rooms')
  if n >= tonumber(ARGV[5]) then return {'full', tostring(n)} end
  redis.call('ZADD', 'chat:rooms', 0, ARGV[4])
end
local g = redis.call('GET', KEYS[1]) or '0'
local e = redis.call('XREVRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local out = {g, redis.call('HGET', KEYS[4], ARGV[4]) or '', tostring(#e)}
for _, x in ipairs(e) do
  out[#out + 1] = x[1]
  out[#out + 1] = x[2][2]
end
if KEYS[3] ~= '' then
  for _, v in ipairs(redis.call('HGETALL', KEYS[3])) do out[#out + 1] = v end
end
return out
";

/// KEYS: the node's seats set, the room's members hash. ARGV: seat (`room
/// TAB key TAB nick`), '1' to enter or '0' to leave, channel, event, nick
/// key, `node TAB nick`. One script, so a reader of the members hash and
/// the subscription see one order.
pub const SEAT: &str = concat!(
    forget!(),
    r"
local room = string.match(ARGV[1], '^([^\t]*)\t')
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
  redis.call('ZADD', 'chat:rooms', 0, room)
else
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[5])
  forget(room)
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
"
);

/// KEYS: nick key, this node's nick set, the accounts hash. ARGV: claim
/// value, this node's prefix (`node TAB`), nick key, '1' when the claimant
/// passed the accounts gate with a password or token (else '0': the nick
/// looked unregistered to its node, whose replica of the accounts may
/// lag a registration made elsewhere). Returns 2 (registered: auth
/// needed) for a registered nick the claimant did not prove, 1 when
/// another node holds the nick (a claim of this node's own is stale: the
/// caller checked its local registry), else takes it and returns 0.
pub const CLAIM: &str = r"
if ARGV[4] ~= '1' and redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return 2 end
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return 1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 0
";

/// KEYS: nick key, this node's nick set. ARGV: claim value, nick key.
/// Frees the nick only if this very claim still holds it.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
";

/// KEYS: nodes set. ARGV: node, timeout ms, channel, a node to reap first
/// whatever its score ('' for none: this node's former run on its first
/// beat). Scores the node with Redis' own clock (no skew between nodes),
/// then reaps every node silent past the timeout: removes it, publishes
/// `left` for each of its seats, frees the nicks it still holds. A node
/// whose own previous beat is older than the timeout reaps nobody: it was
/// cut off too (or Redis was), so silence says nothing about the others.
/// Returns the number of seats announced.
pub const BEAT: &str = concat!(
    forget!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout = tonumber(ARGV[2])
local function reap(node)
  local n = 0
  redis.call('ZREM', KEYS[1], node)
  local seats = 'chat:seats:' .. node
  for _, seat in ipairs(redis.call('SMEMBERS', seats)) do
    local room, key = string.match(seat, '^([^\t]*)\t([^\t]*)\t')
    if room then
      redis.call('HDEL', 'chat:m:' .. room, key)
      forget(room)
    end
    redis.call('PUBLISH', ARGV[3], 'L\t' .. node .. '\t' .. seat)
    n = n + 1
  end
  local nicks = 'chat:nicks:' .. node
  local prefix = node .. '\t'
  for _, key in ipairs(redis.call('SMEMBERS', nicks)) do
    local v = redis.call('GET', 'chat:nick:' .. key)
    if v and string.sub(v, 1, #prefix) == prefix then
      redis.call('DEL', 'chat:nick:' .. key)
    end
  end
  redis.call('DEL', seats, nicks)
  return n
end
local n = 0
if ARGV[4] ~= '' then n = n + reap(ARGV[4]) end
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local fresh = mine and (now - tonumber(mine)) <= timeout
redis.call('ZADD', KEYS[1], now, ARGV[1])
if fresh then
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - timeout)) do
    n = n + reap(node)
  end
end
return n
"
);

/// KEYS: counter. ARGV: the newest id this node saw. Raises the counter to
/// it (Redis restarted without its data: ids must keep increasing).
pub const FLOOR: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
";

/// ARGV: node, token TTL (s), then nick key and claim value pairs of
/// every local member. After an outage: frees this node's claims of
/// members gone meanwhile, claims the others again (unless another node
/// took one: counted) and writes their session tokens back
/// (`chat:tok:<token>` = `node TAB member`, as `media::token_job` does:
/// Redis may have lost them, and uploads through other nodes need them).
/// Returns the number of nicks lost to other nodes.
pub const RESYNC_NICKS: &str = r"
local prefix = ARGV[1] .. '\t'
local nicks = 'chat:nicks:' .. ARGV[1]
local keep = {}
for i = 3, #ARGV, 2 do keep[ARGV[i]] = ARGV[i + 1] end
for _, key in ipairs(redis.call('SMEMBERS', nicks)) do
  if not keep[key] then
    local v = redis.call('GET', 'chat:nick:' .. key)
    if v and string.sub(v, 1, #prefix) == prefix then redis.call('DEL', 'chat:nick:' .. key) end
    redis.call('SREM', nicks, key)
  end
end
local lost = 0
for key, value in pairs(keep) do
  local v = redis.call('GET', 'chat:nick:' .. key)
  if v and string.sub(v, 1, #prefix) ~= prefix then
    lost = lost + 1
  else
    redis.call('SET', 'chat:nick:' .. key, value)
    redis.call('SADD', nicks, key)
    local member, token = string.match(value, '^[^\t]*\t([^\t]*)\t[^\t]*\t(.+)$')
    if token then
      redis.call('SET', 'chat:tok:' .. token, prefix .. member, 'EX', ARGV[2])
    end
  end
end
return lost
";

/// ARGV: node, channel, then every local seat (`room TAB key TAB nick`). After an
/// outage: publishes `left` for the seats Redis holds that are gone, and
/// `joined` for the seats it lacks (all of them when the node was reaped
/// meanwhile or Redis lost its data), then stores the set.
pub const RESYNC_SEATS: &str = concat!(
    forget!(),
    r"
local node = ARGV[1]
local seats = 'chat:seats:' .. node
local now = {}
for i = 3, #ARGV do now[ARGV[i]] = true end
for _, seat in ipairs(redis.call('SMEMBERS', seats)) do
  if now[seat] then
    now[seat] = false
  else
    local room, key = string.match(seat, '^([^\t]*)\t([^\t]*)\t')
    if room then
      redis.call('HDEL', 'chat:m:' .. room, key)
      forget(room)
    end
    redis.call('PUBLISH', ARGV[2], 'L\t' .. node .. '\t' .. seat)
  end
end
redis.call('DEL', seats)
for i = 3, #ARGV do
  local seat = ARGV[i]
  local room, key, nick = string.match(seat, '^([^\t]*)\t([^\t]*)\t(.*)$')
  if room then
    redis.call('HSET', 'chat:m:' .. room, key, node .. '\t' .. nick)
    redis.call('ZADD', 'chat:rooms', 0, room)
  end
  if now[seat] then redis.call('PUBLISH', ARGV[2], 'J\t' .. node .. '\t' .. seat) end
  redis.call('SADD', seats, seat)
end
return 0
"
);

/// KEYS: nick key, this node's nick set, this node's seats set. ARGV:
/// token, new claim value, channel, this node, nick key. A resume token
/// presented on another node than the one holding the nick: if it is that
/// member's token, the claim and every seat of the member (its rooms, the
/// lobby included) move here without a notice (the member lives on: a
/// quiet `j` per room tells the other nodes where), and the old node is
/// told to close its connection (`K`).
/// Returns the member's rooms (`{}` when not taken over: wrong token,
/// nobody, or this node's own claim).
pub const TAKEOVER: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local node, member, token = string.match(v, '^([^\t]*)\t([^\t]*)\t[^\t]*\t(.*)$')
if not node or token ~= ARGV[1] or node == ARGV[4] then return {} end
-- The old node drops its seats first, then hears where they went: its
-- counts never hold the member twice.
redis.call('PUBLISH', ARGV[3], 'K\t' .. node .. '\t' .. ARGV[5] .. '\t' .. member)
local seats = 'chat:seats:' .. node
local rooms = {}
for _, seat in ipairs(redis.call('SMEMBERS', seats)) do
  local room, k, nick = string.match(seat, '^([^\t]*)\t([^\t]*)\t(.*)$')
  if k == ARGV[5] then
    redis.call('SREM', seats, seat)
    redis.call('SADD', KEYS[3], seat)
    redis.call('HSET', 'chat:m:' .. room, k, ARGV[4] .. '\t' .. nick)
    redis.call('PUBLISH', ARGV[3], 'j\t' .. ARGV[4] .. '\t' .. seat)
    rooms[#rooms + 1] = room
  end
end
redis.call('SREM', 'chat:nicks:' .. node, ARGV[5])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
if #rooms == 0 then rooms[1] = 'lobby' end
return rooms
";

/// KEYS: the topics hash. ARGV: room, topic, channel, event. Stores and
/// publishes a topic in one step (so a greeting's read and the events
/// agree).
pub const TOPIC: &str = r"
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', 'chat:rooms', 0, ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
";

/// KEYS: this node's seats set. ARGV: node, channel, old key, old nick,
/// new key, new nick, then the member's rooms. Moves the member's seats
/// and list entries to the new nick and publishes one `R` per room, so
/// the other nodes say `renamed` (not `left` and `joined`).
pub const RENAME: &str = r"
local node = ARGV[1]
for i = 7, #ARGV do
  local room = ARGV[i]
  redis.call('SREM', KEYS[1], room .. '\t' .. ARGV[3] .. '\t' .. ARGV[4])
  redis.call('SADD', KEYS[1], room .. '\t' .. ARGV[5] .. '\t' .. ARGV[6])
  redis.call('HDEL', 'chat:m:' .. room, ARGV[3])
  redis.call('HSET', 'chat:m:' .. room, ARGV[5], node .. '\t' .. ARGV[6])
  redis.call('PUBLISH', ARGV[2],
    'R\t' .. node .. '\t' .. room .. '\t' .. ARGV[3] .. '\t' .. ARGV[5] .. '\t' .. ARGV[6] .. '\t' .. ARGV[4])
end
return 0
";

/// ARGV: this node, the name to list after ('' for the start), the most
/// names. The rooms of the cluster after that name, sorted: per room its
/// name, topic and the number of its members on other nodes (this node
/// counts its own).
pub const ROOMS: &str = r"
local min = '-'
if ARGV[2] ~= '' then min = '(' .. ARGV[2] end
local prefix = ARGV[1] .. '\t'
local out = {}
for _, room in ipairs(redis.call('ZRANGEBYLEX', 'chat:rooms', min, '+', 'LIMIT', 0, tonumber(ARGV[3]))) do
  local n = 0
  for _, v in ipairs(redis.call('HVALS', 'chat:m:' .. room)) do
    if string.sub(v, 1, #prefix) ~= prefix then n = n + 1 end
  end
  out[#out + 1] = room
  out[#out + 1] = redis.call('HGET', 'chat:topics', room) or ''
  out[#out + 1] = tostring(n)
end
return out
";
