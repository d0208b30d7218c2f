-- Forgets a channel's kept events and AI streams, keeping its position: the Stream stays
-- (empty, with its last id) and the floor rises to that id, so a resume from before it is
-- a gap and later events go on from it.
-- KEYS: the channel's Stream, floor and AI streams set.

local stream, floor_key, ai = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  local head = '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1] end
  end
  redis.call('XTRIM', stream, 'MAXLEN', 0)
  local ttl = redis.call('PTTL', stream)
  if ttl > 0 then
    redis.call('SET', floor_key, head, 'PX', ttl)
  else
    redis.call('SET', floor_key, head)
  end
end
for _, sid in ipairs(redis.call('ZRANGE', ai, 0, -1)) do
  redis.call('DEL', ai .. ':' .. sid, ai .. ':' .. sid .. ':text')
end
redis.call('DEL', ai)
return 1
