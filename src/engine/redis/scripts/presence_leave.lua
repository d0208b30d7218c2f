-- A connection leaves a channel's presence; its user is leaving once their last connection goes
-- (after the prelude).
-- ARGV: connection, grace ms. Returns 1 if the connection was present.

if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local u = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if u and redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
  redis.call('HDEL', KEYS[4], u)
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), u)
end
return 1
