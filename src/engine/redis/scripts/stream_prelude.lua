-- Shared by the history and page scripts, which run after it (and after clock_prelude.lua):
-- `stream_state`, a channel's head, floor and max deleted id, read together.

-- {head, floor, max deleted id} of a Stream, and whether it exists. A Stream that does not
-- exist has its head just before now, so that its first entry comes after it: `XADD *`
-- gives that entry `<now>-0` when it lands in this same millisecond, and a head equal to
-- it made a reader starting at the head take the entry for one it had seen. It vouches
-- for nothing older than its retention (`ttl` ms).
local function stream_state(stream, floor_key, ttl)
  if redis.call('EXISTS', stream) == 0 then
    local before = math.max(now - 1, 0)
    return tostring(before) .. '-0', tostring(math.max(before - ttl, 0)) .. '-0', '0-0', false
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local head, deleted = '0-0', '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
  return head, redis.call('GET', floor_key) or '0-0', deleted, true
end
