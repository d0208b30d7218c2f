-- Lists a channel's presence (after the prelude).
-- Returns {user -> entry JSON, user -> live connections}, as two flat arrays.
purge(now)
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[4])}
