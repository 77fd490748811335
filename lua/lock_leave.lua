-- lock_leave: a waiter gives up (timed out, interrupted): leave the queue at once instead of
-- blocking it until the lease lapses, and pass the turn on if the lock is free.
-- KEYS = queue leases holder wake
-- ARGV = owner wake_prefix wake_ttl_ms
-- KEYS[1] queue zset (owner -> ticket); KEYS[2] leases zset; KEYS[3] holder key;
-- KEYS[4] the leaving waiter's wake key
-- ARGV[1] owner id; ARGV[2] wake key prefix "{P:E}:lock:wake:" (+ the next head's owner id,
-- known only here; same tag); ARGV[3] wake key TTL in ms
-- Returns: 1 left the queue | 0 was not in it
-- @include lock_queue.lua

local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
if removed == 1 and redis.call('EXISTS', KEYS[3]) == 0 then
  local head = live_head(KEYS[1], KEYS[2], now_ms())
  if head then wake(ARGV[2], head, tonumber(ARGV[3])) end
end
return removed
