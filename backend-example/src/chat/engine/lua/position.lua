-- The room's epoch and newest offset, creating the epoch for a new room.
-- KEYS[1] meta hash {epoch, offset}
-- ARGV[1] epoch to use if the room is new, ARGV[2] history TTL (seconds)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
return {epoch, offset}
