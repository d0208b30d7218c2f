-- Takes a connection slot of a user if fewer than the limit are held.
-- KEYS[1]: the user's sorted set of connection ids scored by lease expiry (ms).
-- ARGV: connection id, limit, lease ms, and optionally the slot it replaces (a place held
-- by the same client until its connection opened: given up here, so that the hand-over
-- never counts the client twice, nor lets another take its slot in between). Returns 1 if
-- taken, 0 if at the limit (the replaced slot is then given up all the same).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] then redis.call('ZREM', KEYS[1], ARGV[4]) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
