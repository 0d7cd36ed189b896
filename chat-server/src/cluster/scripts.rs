//! The Lua scripts of cluster mode. Redis runs a script atomically (no
//! other command runs in between), which gives the two guarantees the
//! cluster relies on: ids are published in the order they are allocated
//! (PUBLISH), and a dead node is reaped by exactly one survivor (REAP).
//! Keys built inside scripts are fine for one Redis (not Redis Cluster).

/// KEYS: counter, stream ('' for a private message). ARGV: prefix, suffix,
/// MAXLEN, channel, header. Allocates the id, appends the message to the
/// room's stream under the stream id `<id>-0` (trimmed to about MAXLEN),
/// publishes `header..id..TAB..message`. Returns the id.
pub const PUBLISH: &str = r"
local id = redis.call('INCR', KEYS[1])
local m = ARGV[1] .. id .. ARGV[2]
if KEYS[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'm', m)
end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. id .. '\t' .. m)
return id
";

/// KEYS: counter, stream. ARGV: max, min, count. The counter (as read
/// atomically with the entries) then id, message pairs, newest first.
pub const READ: &str = r"
local g = redis.call('GET', KEYS[1]) or '0'
local out = {g}
for _, e in ipairs(redis.call('XREVRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT', ARGV[3])) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
";

/// KEYS: nick key, this node's nick set. ARGV: claim value, this node's
/// prefix (`node TAB`), nick key. Takes the nick unless another node holds
/// it (a claim of this node's own is stale: the caller checked its local
/// registry). Returns '' when taken, else the owner's claim.
pub const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return v end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return ''
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

/// KEYS: nodes set. ARGV: node. Scores the node with Redis' own clock
/// (no skew between nodes). Returns 1 when the node was absent (first
/// beat, reaped meanwhile, or Redis lost its data).
pub const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now, ARGV[1])
";

/// KEYS: nodes set. ARGV: timeout ms, channel, a node to reap whatever its
/// score ('' for none). For every node silent past the timeout: removes
/// it, publishes `left` for each of its seats, frees the nicks it still
/// holds. Returns the number of seats announced.
pub const REAP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if ARGV[3] ~= '' then dead[#dead + 1] = ARGV[3] end
local n = 0
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  local seats = 'chat:seats:' .. node
  for _, seat in ipairs(redis.call('SMEMBERS', seats)) do
    redis.call('PUBLISH', ARGV[2], 'L\t' .. node .. '\t' .. seat)
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
end
return n
";

/// KEYS: counter. ARGV: the newest id this node saw. Raises the counter to
/// it (Redis restarted without its data: ids must keep increasing).
pub const FLOOR: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
";
