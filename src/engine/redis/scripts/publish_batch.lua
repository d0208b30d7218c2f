-- Runs after publish_prelude.lua. Publishes a batch of events (publish.lua publishes one), in
-- order, each to one or more channels: appends each event to its channels' Streams and folds
-- an AI stream chunk into its channel's snapshot; then, once
-- per channel for the whole batch, trims the Stream by length and age (the floor key
-- remembers the newest id ever trimmed) and renews its expiry; then publishes the events in
-- the batch's order (`src/engine/redis/message.rs` says the formats): with batch messages
-- on, consecutive events on the same one channel as one batch message (one event alone: a
-- single message); off, each of them as a single message, exactly as publish.lua sends it,
-- which nodes of a version before batch messages read too; an event on several channels as
-- one message on each of them, naming its position in every one.
-- KEYS: per channel, three keys (Stream, floor, AI streams set); then the idempotency keys.
-- ARGV[1..4]: pub/sub command (PUBLISH or SPUBLISH), number of channels, number of events,
--   batch messages ('1' on, '0' off).
-- Then per channel four: pub/sub channel, channel name, max length, retention ms.
-- Then per event twelve and more: event id, type, body, number of channels it is published
--   to in all, AI stream id ('' if none), AI text, AI done ('1' or '0'), AI keep ms, its
--   idempotency key's index in KEYS (0 if none), fingerprint, window ms, the number m of
--   its channels in this call; then those m channels' numbers (1-based, in its order).
-- Returns per event its Stream ids, one per channel in its order; or {'dup', stored answer}
--   for an idempotency key already seen (that event is not published). Then one more list:
--   for a batch on one channel, the id of the entry before the batch there ('' if none), which
--   lets a node that delivered that one deliver the batch itself (src/engine/redis/publish.rs);
--   empty otherwise.

local pubcmd, nchans, nevents = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local batch_messages = ARGV[4] == '1'
-- An event's number of channels and its channels' numbers, all within 0..nchans, are looked
-- up by their decimal strings here: `tonumber` parses its string twice (`strtod`), and six
-- calls an event were 5% of a nine-event batch's instructions (docs/benchmarks.md, the
-- twelfth session).
local small = {}
for i = 0, nchans do small[tostring(i)] = i end
-- Per channel c its arguments start at ARGV[4 * c] (+1 pub/sub channel, +2 name,
-- +3 max length, +4 retention); set at its first append: its length before the batch and
-- the ids appended.
local lens, added = {}, {}
-- Per event e its arguments start at ARGV[firsts[e]] (+1 id, +2 type, +3 body, +4 fanout,
-- +5..+8 AI, +9 key index, +10 fingerprint, +11 window, +12 m, +13.. its channels).
local firsts, replies = {}, {}
-- For a batch on one channel: the entry before it there.
local before = {}
local at = 4 + 4 * nchans
for e = 1, nevents do
  firsts[e] = at
  local id, etype, body, fanout, ai_sid = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  local idem, m = ARGV[at + 9], small[ARGV[at + 12]]
  -- A key seen within its window answers what it stored (fingerprint, id, stream ids), and
  -- its event is not published again.
  local seen = idem ~= '0' and redis.call('GET', KEYS[tonumber(idem)])
  if seen then
    replies[e] = {'dup', seen}
  else
    local sids = {}
    for j = 1, m do
      local c = small[ARGV[at + 12 + j]]
      local stream = KEYS[3 * c - 2]
      if not lens[c] then
        if nchans == 1 then
          local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
          before = {''}
          if #last > 0 then before[1] = last[1][1] end
        end
        lens[c] = length_before(stream, KEYS[3 * c - 1], tonumber(ARGV[4 + 4 * c]))
        added[c] = {}
      end
      local sid = redis.call('XADD', stream, '*', 'i', id, 't', etype, 'b', body, 'n', fanout)
      if string.byte(sid, -4) == 45 and string.sub(sid, -3) == '999' then fill_millisecond(stream, sid) end
      local mine = added[c]
      mine[#mine + 1] = sid
      if ai_sid ~= '' then
        local keep = tonumber(ARGV[4 + 4 * c])
        if ARGV[at + 7] == '1' then keep = tonumber(ARGV[at + 8]) end
        fold_ai_chunk(KEYS[3 * c], ai_sid, ARGV[at + 6], keep, sid, id, body)
      end
      sids[j] = sid
    end
    replies[e] = sids
  end
  at = at + 12 + m
end

-- Once per channel: keep the newest `maxlen` entries and none older than the retention.
for c = 1, nchans do
  if lens[c] then
    local stream, floor = KEYS[3 * c - 2], KEYS[3 * c - 1]
    local maxlen_arg, ttl_arg = ARGV[3 + 4 * c], ARGV[4 + 4 * c]
    local maxlen, ttl = tonumber(maxlen_arg), tonumber(ttl_arg)
    local len, mine = lens[c], added[c]
    local drop = len + #mine - maxlen
    -- The newest entry trimmed by length, if any.
    local trimmed
    if drop > 0 then
      -- The newest entry trimmed is one of this batch's, or one there before them.
      if drop > len then
        trimmed = mine[drop - len]
      else
        local gone = redis.call('XRANGE', stream, '-', '+', 'COUNT', drop)
        if #gone > 0 then trimmed = gone[#gone][1] end
      end
      if trimmed then raise_floor(floor, trimmed) end
      redis.call('XTRIM', stream, 'MAXLEN', maxlen_arg)
    end
    trim_by_age(stream, floor, ttl, ttl_arg, trimmed)
  end
end

-- The messages, in the batch's order: a run of events on one channel goes as one batch
-- message, or, with batch messages off, as one single message per event.
-- An event's head: its stream id on its j-th channel, id, type, fanout.
local function head(e, j)
  local a = firsts[e]
  return replies[e][j] .. ' ' .. ARGV[a + 1] .. ' ' .. ARGV[a + 2] .. ' ' .. ARGV[a + 4]
end
local run_chan, run = nil, {}
local function flush()
  if #run == 1 or not batch_messages then
    for _, e in ipairs(run) do
      redis.call(pubcmd, ARGV[4 * run_chan + 1], head(e, 1) .. '\n\n' .. ARGV[firsts[e] + 3])
    end
  elseif #run > 1 then
    local parts = {'batch ' .. replies[run[1]][1] .. ' ' .. #run .. '\n'}
    for i, e in ipairs(run) do
      local body = ARGV[firsts[e] + 3]
      parts[i + 1] = head(e, 1) .. ' ' .. #body .. '\n' .. body
    end
    redis.call(pubcmd, ARGV[4 * run_chan + 1], table.concat(parts))
  end
  run_chan, run = nil, {}
end
for e = 1, nevents do
  if replies[e][1] ~= 'dup' then
    local a = firsts[e]
    local m = small[ARGV[a + 12]]
    if m == 1 then
      local c = small[ARGV[a + 13]]
      if run_chan ~= c then
        flush()
        run_chan = c
      end
      run[#run + 1] = e
    else
      -- Every channel's message names every channel's position, so a node delivers the
      -- event once and a connection following several of its channels advances on all.
      flush()
      local parts = {}
      for j = 1, m do parts[j] = ARGV[4 * small[ARGV[a + 12 + j]] + 2] .. ' ' .. replies[e][j] end
      local positions = table.concat(parts, ' ')
      for j = 1, m do
        local c = small[ARGV[a + 12 + j]]
        redis.call(pubcmd, ARGV[4 * c + 1], head(e, j) .. '\n' .. positions .. '\n' .. ARGV[a + 3])
      end
    end
  end
end
flush()

for e = 1, nevents do
  local a = firsts[e]
  local idem = ARGV[a + 9]
  if idem ~= '0' and replies[e][1] ~= 'dup' then
    redis.call('SET', KEYS[tonumber(idem)], ARGV[a + 10] .. ' ' .. ARGV[a + 1] .. ' ' .. table.concat(replies[e], ' '), 'PX', ARGV[a + 11])
  end
end
replies[nevents + 1] = before
return replies
