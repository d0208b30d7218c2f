-- Runs after publish_prelude.lua. Publishes one event to one or more channels at once (a
-- batch of several events goes through publish_batch.lua): appends it to each channel's Stream
-- (trimmed by length and age; the floor key remembers the newest id ever trimmed), folds an
-- AI stream chunk into the channel's snapshot, then publishes one pub/sub message per channel.
-- KEYS: per channel, three keys (Stream, floor, AI streams set); then, for an idempotent
--   publish, the idempotency key.
-- ARGV[1..9]: event id, event type, body, pub/sub command (PUBLISH or SPUBLISH), number of
--   channels, AI stream id ('' if none), AI text, AI done ('1' or '0'), AI keep ms.
-- ARGV[10..]: per channel four: pub/sub channel, channel name, max length, retention ms;
--   then, for an idempotent publish: fingerprint, window ms.
-- Returns the Stream ids, one per channel, and for an event on one channel of a single Redis
--   (PUBLISH) the id of the entry before it there ('' if none): a node that delivered that
--   one delivers this one itself (src/engine/redis/publish.rs; on a cluster, SPUBLISH, every
--   event goes through the node's pub/sub loop); or {'dup', stored answer} for a key
--   already seen.

local id, etype, body, pubcmd, fanout = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ai_sid, ai_text, ai_done, ai_keep = ARGV[6], ARGV[7], ARGV[8] == '1', tonumber(ARGV[9])
local n = math.floor(#KEYS / 3)
-- An idempotent publish names its key after the channels' keys: a key seen within its
-- window answers what it stored (fingerprint, id, stream ids) and publishes nothing.
local idem, idem_arg = KEYS[3 * n + 1], 9 + 4 * n
if idem then
  local seen = redis.call('GET', idem)
  if seen then return {'dup', seen} end
end
local sids, chans, names = {}, {}, {}
-- The entry before the event, when it is asked for ('' if none).
local before
for i = 1, n do
  local stream, floor, ai = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local base = 9 + (i - 1) * 4
  local chan, name, maxlen_arg, ttl_arg = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local maxlen, ttl = tonumber(maxlen_arg), tonumber(ttl_arg)
  local drop = length_before(stream, floor, ttl) + 1 - maxlen
  -- The newest entry this publish trims by length, if any.
  local trimmed
  if drop > 0 then
    local gone = redis.call('XRANGE', stream, '-', '+', 'COUNT', drop)
    if #gone > 0 then
      trimmed = gone[#gone][1]
      raise_floor(floor, trimmed)
    end
  end
  if n == 1 and pubcmd == 'PUBLISH' then
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    before = ''
    if #last > 0 then before = last[1][1] end
  end
  local sid = redis.call('XADD', stream, 'MAXLEN', maxlen_arg, '*', 'i', id, 't', etype, 'b', body, 'n', fanout)
  if string.byte(sid, -4) == 45 and string.sub(sid, -3) == '999' then fill_millisecond(stream, sid) end
  if maxlen == 0 then
    raise_floor(floor, sid)
    trimmed = sid
  end
  trim_by_age(stream, floor, ttl, ttl_arg, trimmed)
  if ai_sid ~= '' then
    local keep = ttl
    if ai_done then keep = ai_keep end
    fold_ai_chunk(ai, ai_sid, ai_text, keep, sid, id, body)
  end
  sids[i], chans[i], names[i] = sid, chan, name
end
-- Every channel's message names every channel's position, so a node delivers the event
-- once and a connection following several of its channels advances on all of them.
local positions = ''
if n > 1 then
  local parts = {}
  for i = 1, n do parts[i] = names[i] .. ' ' .. sids[i] end
  positions = table.concat(parts, ' ')
end
for i = 1, n do
  redis.call(pubcmd, chans[i], sids[i] .. ' ' .. id .. ' ' .. etype .. ' ' .. fanout .. '\n' .. positions .. '\n' .. body)
end
if idem then
  redis.call('SET', idem, ARGV[idem_arg + 1] .. ' ' .. id .. ' ' .. table.concat(sids, ' '), 'PX', ARGV[idem_arg + 2])
end
if before then sids[2] = before end
return sids
