-- Shared by the publish scripts, which run after it (and after clock_prelude.lua): the floor
-- (`length_before`, `raise_floor`), the age limit (`start_of` and `trim_by_age`) and the AI
-- stream snapshot (`fold_ai_chunk`).
--
-- A number the node sent goes to `redis.call` as the node's string on a publish's common
-- path, not as a Lua number: Redis turns a number argument into text with
-- `printf("%.17g")`, and Lua's `tostring` with `printf("%.14g")`, thousands of instructions
-- each (docs/benchmarks.md, the thirteenth session).

-- The id at which a retention of `ttl` ms starts (now less `ttl`), made once a run for each
-- retention.
local starts = {}
local function start_of(ttl)
  local id = starts[ttl]
  if not id then
    id = tostring(math.max(now - ttl, 0)) .. '-0'
    starts[ttl] = id
  end
  return id
end

-- A channel's Stream length before a publish appends to it. A new Stream's floor is its
-- retention's start (`ttl` ms): XLEN answers 0 for a Stream that does not exist, so EXISTS
-- is asked only then.
local function length_before(stream, floor, ttl)
  local len = redis.call('XLEN', stream)
  if len == 0 and redis.call('EXISTS', stream) == 0 then
    redis.call('SET', floor, start_of(ttl))
  end
  return len
end

-- A channel's events get at most 1000 sequences a millisecond (`Position::MAX_SEQ` in
-- src/cursor.rs, which the in-memory engine keeps to): a Centrifugo offset is milliseconds ×
-- 1000 + the sequence, so past 999 offsets would repeat and an SDK recovering from one would
-- get the rest of its millisecond again. An entry appended at sequence 999 moves the Stream's
-- last id to the end of its millisecond, so that the next `XADD *` there gives `<ms + 1>-0`
-- (Redis's rule once a millisecond's sequences run out), or a later clock's id; the channel's
-- head is then that id, whose offset is the entry's. The caller looks at each new id: its
-- fourth byte from the end is `-` (45) and only then is a string made of its last three.
local function fill_millisecond(stream, sid)
  redis.call('XSETID', stream, string.sub(sid, 1, -4) .. '18446744073709551615')
end

-- The floor is the newest id ever trimmed: resuming from before it is a gap.
local function raise_floor(key, id)
  local cur = redis.call('GET', key)
  if (not cur) or id_before(cur, id) then redis.call('SET', key, id) end
end
-- Drops a channel's entries older than its retention (`ttl` ms before now; `ttl_arg` the
-- same as the node sent it) after raising the floor to the newest of them, and renews the
-- Stream's and floor's expiry: a channel nobody publishes to for that long leaves nothing
-- behind. Whether anything is that old is asked from the oldest end: a reverse range that
-- finds nothing walks the Stream's oldest node (up to 100 entries) from its newest entry
-- back: 14 µs, a fifth of a publish's script time (docs/benchmarks.md, the eighth session
-- of 2026-12-06). Not asked at all when this publish trimmed the Stream by length up to
-- `trimmed`, an entry within the retention (its milliseconds not before `now - ttl`): every
-- entry left is newer. That is a busy channel's case, where the forward range walks the
-- entries earlier length trims left deleted in the oldest node: 2.5% of the instructions of
-- a nine-event batch's script (docs/benchmarks.md, the eleventh session).
local function trim_by_age(stream, floor, ttl, ttl_arg, trimmed)
  if trimmed == nil or tonumber(string.match(trimmed, '^%d+')) < now - ttl then
    local minid = start_of(ttl)
    -- A retention reaching back past 1970 keeps everything (and Redis refuses a range that
    -- ends before `0-0`).
    if minid ~= '0-0' and #redis.call('XRANGE', stream, '-', '(' .. minid, 'COUNT', '1') > 0 then
      local old = redis.call('XREVRANGE', stream, '(' .. minid, '-', 'COUNT', '1')
      raise_floor(floor, old[1][1])
      redis.call('XTRIM', stream, 'MINID', minid)
    end
  end
  redis.call('PEXPIRE', stream, ttl_arg)
  redis.call('PEXPIRE', floor, ttl_arg)
end
-- An AI stream chunk at `sid` on a channel whose AI streams set is `ai`: fold it into the
-- stream's snapshot (text so far, last chunk), kept `keep` ms (the channel's retention while
-- chunks come, the AI retention once done). Same hash tag, same slot.
-- A stream's text is kept up to `MAX_AI_TEXT` bytes (`MAX_AI_TEXT` in
-- src/engine/memory/mod.rs, the same): past it the stream is marked `over` (its text and last
-- chunk dropped, the mark kept while chunks come so that none starts it again), the history
-- script finds no text for it and it is no longer snapshotted.
local MAX_AI_TEXT = 1048576
local function fold_ai_chunk(ai, ai_sid, text, keep, sid, id, body)
  local meta = ai .. ':' .. ai_sid
  local over = redis.call('HEXISTS', meta, 'over') == 1
  if not over and redis.call('STRLEN', meta .. ':text') + #text > MAX_AI_TEXT then
    over = true
    redis.call('DEL', meta, meta .. ':text')
    redis.call('HSET', meta, 'over', '1')
  end
  if not over then
    redis.call('APPEND', meta .. ':text', text)
    redis.call('HSET', meta, 'last', sid, 'id', id, 'body', body)
    redis.call('PEXPIRE', meta .. ':text', keep)
  end
  redis.call('PEXPIRE', meta, keep)
  redis.call('ZREMRANGEBYSCORE', ai, '-inf', now)
  redis.call('ZADD', ai, now + keep, ai_sid)
  if redis.call('ZCARD', ai) > 64 then redis.call('ZPOPMIN', ai) end
  if redis.call('PTTL', ai) < keep then redis.call('PEXPIRE', ai, keep) end
end
