-- Stores one chat message and publishes it, atomically, so the offset order,
-- the history order and the live order are the same on every backend.
-- KEYS[1] meta hash {epoch, offset}, KEYS[2] history stream,
-- KEYS[3] de-duplication key for (from, id)
-- ARGV[1] epoch to use if the room is new, ARGV[2] history length,
-- ARGV[3] history TTL (s), ARGV[4] de-duplication TTL (s), ARGV[5] channel,
-- ARGV[6] room, ARGV[7] from, ARGV[8] id, ARGV[9] text, ARGV[10] ts (ms, digits),
-- ARGV[11] 'PUBLISH' (one server) or 'SPUBLISH' (cluster: sharded Pub/Sub;
-- the channel has the room's hash tag, so it is on this script's slot)
-- Returns {epoch, offset, duplicate (0/1)}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- History is gone (expired or flushed): start a new generation.
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local seen = redis.call('GET', KEYS[3])
if seen then
  local sep = string.find(seen, ' ', 1, true)
  if sep and string.sub(seen, 1, sep - 1) == epoch then
    return {epoch, tonumber(string.sub(seen, sep + 1)), 1}
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = '{"type":"message","room":' .. cjson.encode(ARGV[6])
  .. ',"epoch":' .. cjson.encode(epoch)
  .. ',"offset":' .. string.format('%d', offset)
  .. ',"from":' .. cjson.encode(ARGV[7])
  .. ',"id":' .. cjson.encode(ARGV[8])
  .. ',"text":' .. cjson.encode(ARGV[9])
  .. ',"ts":' .. ARGV[10] .. '}'
-- The stream id is the offset, so XRANGE by offset needs no index.
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-1', offset), 'm', payload)
redis.call('SET', KEYS[3], epoch .. ' ' .. string.format('%d', offset), 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[11], ARGV[5], payload)
return {epoch, offset, 0}
