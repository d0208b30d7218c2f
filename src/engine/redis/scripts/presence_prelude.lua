-- Prelude of every presence script: moves connections whose lease lapsed out, and their
-- users to leaving (due now); defines keep(ms) to extend the five keys' lifetime and `now`.
-- KEYS[1..5] (one channel, one hash tag): <channel>:pres (user -> entry JSON),
-- <channel>:pres:c (connection -> lease expiry ms), <channel>:pres:o (connection -> user),
-- <channel>:pres:n (user -> live connections), <channel>:pres:l (user -> offline due ms).

local function purge(now)
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
    redis.call('ZREM', KEYS[2], c)
    local u = redis.call('HGET', KEYS[3], c)
    redis.call('HDEL', KEYS[3], c)
    if u then
      if redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
        redis.call('HDEL', KEYS[4], u)
        redis.call('ZADD', KEYS[5], now, u)
      end
    end
  end
end
local function keep(ms)
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ms) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
