-- Publishes a batch of events, in order, each to one or more channels: appends each event to
-- its channels' Streams and folds an AI stream chunk into its channel's snapshot; then, once
-- per channel for the whole batch, trims the Stream by length and age (the floor key
-- remembers the newest id ever trimmed) and renews its expiry; then publishes the events in
-- the batch's order (`src/engine/redis/message.rs` says the formats): consecutive events on
-- the same one channel as one batch message (one event alone: a single message), an event
-- on several channels as one message on each of them, naming its position in every one.
-- One event is a batch of one.
-- KEYS: per channel, three keys (Stream, floor, AI streams set); then the idempotency keys.
-- ARGV[1..3]: pub/sub command (PUBLISH or SPUBLISH), number of channels, number of events.
-- Then per channel four: pub/sub channel, channel name, max length, retention ms.
-- Then per event twelve and more: event id, type, body, number of channels it is published
--   to in all, AI stream id ('' if none), AI text, AI done ('1' or '0'), AI keep ms, its
--   idempotency key's index in KEYS (0 if none), fingerprint, window ms, the number m of
--   its channels in this call; then those m channels' numbers (1-based, in its order).
-- Returns per event its Stream ids, one per channel in its order; or {'dup', stored answer}
--   for an idempotency key already seen (that event is not published).

local function newer(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
-- The floor is the newest id ever trimmed: resuming from before it is a gap.
local function raise_floor(key, id)
  local cur = redis.call('GET', key)
  if (not cur) or newer(id, cur) then redis.call('SET', key, id) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pubcmd, nchans, nevents = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local at = 3
local chans = {}
for c = 1, nchans do
  local ttl = tonumber(ARGV[at + 4])
  chans[c] = {
    stream = KEYS[3 * c - 2], floor = KEYS[3 * c - 1], ai = KEYS[3 * c],
    pubsub = ARGV[at + 1], name = ARGV[at + 2], maxlen = tonumber(ARGV[at + 3]), ttl = ttl,
    minid = tostring(math.max(now - ttl, 0)) .. '-0',
    -- Set at the channel's first append: its length before the batch, the ids appended.
    len = nil, sids = {},
  }
  at = at + 4
end

local events, replies = {}, {}
for e = 1, nevents do
  local ev = {
    id = ARGV[at + 1], etype = ARGV[at + 2], body = ARGV[at + 3], fanout = ARGV[at + 4],
    ai_sid = ARGV[at + 5], ai_text = ARGV[at + 6], ai_done = ARGV[at + 7] == '1', ai_keep = tonumber(ARGV[at + 8]),
    idem = tonumber(ARGV[at + 9]), fingerprint = ARGV[at + 10], window = ARGV[at + 11], on = {},
  }
  local m = tonumber(ARGV[at + 12])
  for j = 1, m do ev.on[j] = tonumber(ARGV[at + 12 + j]) end
  at = at + 12 + m
  events[e] = ev
  -- A key seen within its window answers what it stored (fingerprint, id, stream ids), and
  -- its event is not published again.
  local seen = ev.idem > 0 and redis.call('GET', KEYS[ev.idem])
  if seen then
    ev.dup = true
    replies[e] = {'dup', seen}
  else
    local sids = {}
    for j, c in ipairs(ev.on) do
      local ch = chans[c]
      if not ch.len then
        if redis.call('EXISTS', ch.stream) == 0 then
          redis.call('SET', ch.floor, ch.minid)
          ch.len = 0
        else
          ch.len = redis.call('XLEN', ch.stream)
        end
      end
      local sid = redis.call('XADD', ch.stream, '*', 'i', ev.id, 't', ev.etype, 'b', ev.body, 'n', ev.fanout)
      ch.sids[#ch.sids + 1] = sid
      -- An AI stream chunk: fold it into the stream's snapshot (text so far, last chunk),
      -- kept while chunks come and for the retention once done. Same hash tag, same slot.
      if ev.ai_sid ~= '' then
        local meta = ch.ai .. ':' .. ev.ai_sid
        local keep = ch.ttl
        if ev.ai_done then keep = ev.ai_keep end
        redis.call('APPEND', meta .. ':text', ev.ai_text)
        redis.call('HSET', meta, 'last', sid, 'id', ev.id, 'body', ev.body)
        redis.call('PEXPIRE', meta, keep)
        redis.call('PEXPIRE', meta .. ':text', keep)
        redis.call('ZREMRANGEBYSCORE', ch.ai, '-inf', now)
        redis.call('ZADD', ch.ai, now + keep, ev.ai_sid)
        if redis.call('ZCARD', ch.ai) > 64 then redis.call('ZPOPMIN', ch.ai) end
        if redis.call('PTTL', ch.ai) < keep then redis.call('PEXPIRE', ch.ai, keep) end
      end
      sids[j] = sid
    end
    ev.sids = sids
    replies[e] = sids
  end
end

-- Once per channel: keep the newest `maxlen` entries and none older than the retention.
for c = 1, nchans do
  local ch = chans[c]
  if ch.len then
    local drop = ch.len + #ch.sids - ch.maxlen
    if drop > 0 then
      -- The newest entry trimmed is one of this batch's, or one read before them.
      if drop > ch.len then
        raise_floor(ch.floor, ch.sids[drop - ch.len])
      else
        local gone = redis.call('XRANGE', ch.stream, '-', '+', 'COUNT', drop)
        if #gone > 0 then raise_floor(ch.floor, gone[#gone][1]) end
      end
      redis.call('XTRIM', ch.stream, 'MAXLEN', ch.maxlen)
    end
    local old = redis.call('XREVRANGE', ch.stream, '(' .. ch.minid, '-', 'COUNT', 1)
    if #old > 0 then
      raise_floor(ch.floor, old[1][1])
      redis.call('XTRIM', ch.stream, 'MINID', ch.minid)
    end
    redis.call('PEXPIRE', ch.stream, ch.ttl)
    redis.call('PEXPIRE', ch.floor, ch.ttl)
  end
end

-- The messages, in the batch's order. A run of events on one channel goes as one message.
local run_chan, run = nil, {}
local function flush()
  if #run == 1 then
    local ev = run[1]
    redis.call(pubcmd, chans[run_chan].pubsub, ev.sids[1] .. ' ' .. ev.id .. ' ' .. ev.etype .. ' ' .. ev.fanout .. '\n\n' .. ev.body)
  elseif #run > 1 then
    local parts = {'batch ' .. run[1].sids[1] .. ' ' .. #run .. '\n'}
    for i, ev in ipairs(run) do
      parts[i + 1] = ev.sids[1] .. ' ' .. ev.id .. ' ' .. ev.etype .. ' ' .. ev.fanout .. ' ' .. #ev.body .. '\n' .. ev.body
    end
    redis.call(pubcmd, chans[run_chan].pubsub, table.concat(parts))
  end
  run_chan, run = nil, {}
end
for _, ev in ipairs(events) do
  if not ev.dup then
    if #ev.on == 1 then
      if run_chan ~= ev.on[1] then
        flush()
        run_chan = ev.on[1]
      end
      run[#run + 1] = ev
    else
      -- Every channel's message names every channel's position, so a node delivers the
      -- event once and a connection following several of its channels advances on all.
      flush()
      local parts = {}
      for j, c in ipairs(ev.on) do parts[j] = chans[c].name .. ' ' .. ev.sids[j] end
      local positions = table.concat(parts, ' ')
      for j, c in ipairs(ev.on) do
        redis.call(pubcmd, chans[c].pubsub, ev.sids[j] .. ' ' .. ev.id .. ' ' .. ev.etype .. ' ' .. ev.fanout .. '\n' .. positions .. '\n' .. ev.body)
      end
    end
  end
end
flush()

for _, ev in ipairs(events) do
  if ev.idem > 0 and not ev.dup then
    redis.call('SET', KEYS[ev.idem], ev.fingerprint .. ' ' .. ev.id .. ' ' .. table.concat(ev.sids, ' '), 'PX', ev.window)
  end
end
return replies
