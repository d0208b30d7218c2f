-- Takes the users whose offline is due, once (after the prelude).
-- Returns {user, entry, user, entry, ...}.

purge(now)
local out = {}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[5], u)
  if not redis.call('HGET', KEYS[4], u) then
    local entry = redis.call('HGET', KEYS[1], u)
    redis.call('HDEL', KEYS[1], u)
    out[#out + 1] = u
    out[#out + 1] = entry or ''
  end
end
return out
