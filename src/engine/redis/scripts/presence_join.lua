-- A connection joins a channel's presence (after the prelude).
-- ARGV: connection, user, entry JSON, lease ms, key lifetime ms. Returns 1 to announce.

purge(now)
local added = redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
keep(tonumber(ARGV[5]))
if added == 0 then return 0 end
if redis.call('HINCRBY', KEYS[4], ARGV[2], 1) > 1 then return 0 end
if redis.call('ZREM', KEYS[5], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
