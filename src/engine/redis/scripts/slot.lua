-- Takes a connection slot of a user if fewer than the limit are held.
-- KEYS[1]: the user's sorted set of connection ids scored by lease expiry (ms).
-- ARGV: connection id, limit, lease ms. Returns 1 if taken, 0 if at the limit.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
