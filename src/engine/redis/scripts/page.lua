-- Reads a page of one channel's history with its head and floor, at one instant (after
-- stream_prelude.lua).
-- KEYS: the Stream, its floor.
-- ARGV: the range's low end ('-', or '(<id>' for after that id), its high end ('+', or
--   '(<id>' for before that id), count, 1 for the newest end of the range first (0 for the
--   oldest), retention ms.
-- Returns {head id, floor id, max deleted id, entries}, as the history script does.

local stream, floor_key = KEYS[1], KEYS[2]
local low, high, count, newest, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', tonumber(ARGV[5])
local head, floor, deleted, exists = stream_state(stream, floor_key, ttl)
if not exists then return {head, floor, deleted, {}} end
local entries
if newest then
  entries = redis.call('XREVRANGE', stream, high, low, 'COUNT', count)
else
  entries = redis.call('XRANGE', stream, low, high, 'COUNT', count)
end
return {head, floor, deleted, entries}
