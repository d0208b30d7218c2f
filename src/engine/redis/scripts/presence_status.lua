-- Sets a present user's status (after the prelude).
-- ARGV: user, status. Returns 1 if it changed.

local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local e = cjson.decode(entry)
if e.s == ARGV[2] then return 0 end
e.s = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(e))
return 1
