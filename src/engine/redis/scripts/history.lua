-- Reads the history of one or more channels at one instant.
-- KEYS: per channel, three keys (Stream, floor, AI streams set).
-- ARGV: per channel, three: read after this Stream id ('' for none), count, retention ms.
-- Returns per channel, in order: {head id, floor id, max deleted id, entries, AI streams}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function read(stream, floor_key, ai, after, count, ttl)
  -- The channel's AI streams, read with the head so that the two agree.
  local streams = {}
  if redis.call('EXISTS', ai) == 1 then
    redis.call('ZREMRANGEBYSCORE', ai, '-inf', now)
    for _, sid in ipairs(redis.call('ZRANGE', ai, 0, -1)) do
      local meta = ai .. ':' .. sid
      local m = redis.call('HMGET', meta, 'last', 'id', 'body')
      local text = redis.call('GET', meta .. ':text')
      if m[1] and m[2] and m[3] and text then streams[#streams + 1] = {sid, m[1], m[2], m[3], text} end
    end
  end
  if redis.call('EXISTS', stream) == 0 then
    local here = tostring(now) .. '-0'
    return {here, tostring(math.max(now - ttl, 0)) .. '-0', '0-0', {}, streams}
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local head, deleted = '0-0', '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
  local floor = redis.call('GET', floor_key) or '0-0'
  if after == '' then return {head, floor, deleted, {}, streams} end
  return {head, floor, deleted, redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', count), streams}
end
local out = {}
for i = 1, #KEYS / 3 do
  local k, a = 3 * i - 2, 3 * i - 2
  out[i] = read(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]))
end
return out
