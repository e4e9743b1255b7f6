-- Presence of one room: a sorted set of "user conn" scored by expiry time
-- (Redis server time in ms, so backends' clocks do not matter). A user is
-- present while any of their entries is live. Every change that makes a
-- user appear or disappear is published exactly once, from inside the
-- script that made it.
-- KEYS[1] presence zset
-- ARGV[1] op: "join" | "leave" | "refresh" | "list"
-- ARGV[2] entry TTL (ms), ARGV[3] channel, ARGV[4] room,
-- ARGV[5] 'PUBLISH' or 'SPUBLISH' (cluster),
-- ARGV[6..] entries ("user conn") to add (join, refresh) or remove (leave)
-- Returns the present users.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local op = ARGV[1]

local function user_of(entry)
  return string.match(entry, '^(%S+) ')
end

local function live_users()
  local set = {}
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
    local u = user_of(e)
    if u then set[u] = true end
  end
  return set
end

local function announce(kind, user)
  redis.call(ARGV[5], ARGV[3], '{"type":"presence","room":' .. cjson.encode(ARGV[4])
    .. ',"' .. kind .. '":' .. cjson.encode(user) .. '}')
end

if op == 'list' then
  local out = {}
  for u in pairs(live_users()) do out[#out + 1] = u end
  return out
end

local before = live_users()
-- Entries past their expiry belong to connections whose backend stopped
-- refreshing them (it died); drop them here.
local gone = {}
for _, e in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local u = user_of(e)
  if u then gone[u] = true end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)

for i = 6, #ARGV do
  if op == 'leave' then
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
      local u = user_of(ARGV[i])
      if u then gone[u] = true end
    end
  else
    redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl)

local after = live_users()
for u in pairs(after) do
  if not before[u] then announce('joined', u) end
end
for u in pairs(gone) do
  if not after[u] then announce('left', u) end
end
local out = {}
for u in pairs(after) do out[#out + 1] = u end
return out
