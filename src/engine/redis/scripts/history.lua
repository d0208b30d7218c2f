-- Reads the history of one or more channels at one instant (after stream_prelude.lua).
-- KEYS: per channel, three keys (Stream, floor, AI streams set).
-- ARGV: per channel, four: read after this Stream id ('' for none), count, retention ms, and
--   how many of the newest entries to return where the read does not resume (no id, or one
--   history does not cover; 0 for none).
-- Returns per channel, in order: {head id, floor id, max deleted id, entries, AI streams,
--   newest entries (newest first)}.

local function read(stream, floor_key, ai, after, count, ttl, last)
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
  local head, floor, deleted, exists = stream_state(stream, floor_key, ttl)
  if not exists then return {head, floor, deleted, {}, streams, {}} end
  local resumes = after ~= '' and not id_before(after, floor) and not id_before(after, deleted)
    and not id_before(head, after)
  local recent = {}
  if last > 0 and not resumes then recent = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', last) end
  -- A read that does not resume needs no entries (it starts at the head, or the node answers
  -- it with a reset); and Redis refuses a range after the last id there is, which a client
  -- may name. `resumes` is the node's own test (`gap` in history.rs).
  if not resumes then return {head, floor, deleted, {}, streams, recent} end
  return {head, floor, deleted, redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', count), streams, recent}
end
local out = {}
for i = 1, #KEYS / 3 do
  local k, a = 3 * i - 2, 4 * i - 3
  out[i] = read(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
end
return out
