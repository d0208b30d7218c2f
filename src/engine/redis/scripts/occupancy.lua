-- Channel occupancy across nodes: which nodes have local subscribers of one channel.
-- KEYS[1] <channel>:occ (sorted set: node -> lease expiry ms), KEYS[2] <channel>:occ:seq (the
-- channel's changes so far). ARGV: node, 1 (it has subscribers) or 0 (none left), lease ms,
-- key lifetime ms. Returns the changes this call made, in order: {kind, seq, kind, seq, ...},
-- kind 1 occupied, 0 vacated.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local function change(kind)
  out[#out + 1] = kind
  out[#out + 1] = redis.call('INCR', KEYS[2])
end
local held = redis.call('ZCARD', KEYS[1]) > 0
-- Nodes that stopped renewing (gone without leaving) leave now.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local still = redis.call('ZCARD', KEYS[1]) > 0
if held and not still then change(0) end
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if not still then change(1) end
elseif redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
  change(0)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
return out
