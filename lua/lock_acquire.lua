-- lock_acquire: take the algorithm lock in arrival order (FIFO hand-off), or join its queue.
-- A caller waits in a queue scored by arrival ticket and must call again within its lease
-- (a waiter's poll refreshes it); only the queue's head takes a free lock, so neither a
-- newcomer nor a re-polling waiter can overtake one that arrived earlier. A waiter whose lease
-- lapsed (dead, or stalled longer than its lease) is dropped and loses its place.
-- KEYS = lock holder queue leases log
-- ARGV = owner ttl_ms lease_ms wake_prefix wake_ttl_ms token
-- Returns one table: {1, holder token, fence, state_reply(...)} acquired (lock_state.lua) |
--   {0, holder's remaining TTL ms (0: free, an earlier waiter's turn), place in the queue
--   (0 = head)} wait | {-1} no lock record
-- KEYS[1] lock record hash (fields configuration, state, fence, ticket, acquired);
-- KEYS[2] holder key (value "<fence>:<owner>", expires after the TTL);
-- KEYS[3] queue zset (owner -> arrival ticket); KEYS[4] leases zset (owner -> lease end, ms);
-- KEYS[5] the state's delta log (list, lock_state.lua)
-- ARGV[1] owner id (random per acquisition); ARGV[2] holder TTL in ms; ARGV[3] lease in ms;
-- ARGV[4] wake key prefix "{P:E}:lock:wake:" (+ owner: the list a waiter blocks on; built
-- here because the head is only known here; it shares the tag of KEYS); ARGV[5] wake key TTL ms;
-- ARGV[6] the state token the caller's resident algorithm is at ("" for none)
-- A retried call (same owner id) that finds its own hold gets it back; one that finds its
-- queue entry keeps its ticket.
-- @include lock_queue.lua
-- @include lock_state.lua

if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local current = redis.call('GET', KEYS[2])
if current then
  local fence, owner = string.match(current, '^(%d+):(.*)$')
  if owner == ARGV[1] then
    -- our own earlier attempt took it and its reply was lost: hand the same hold back
    return {1, current, tonumber(fence), state_reply(KEYS[1], KEYS[5], ARGV[6] or '')}
  end
end
local now, t = now_ms()
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'ticket', 1), ARGV[1])
end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[1])
if current then
  return {0, redis.call('PTTL', KEYS[2]), redis.call('ZRANK', KEYS[3], ARGV[1])}
end
local head = live_head(KEYS[3], KEYS[4], now)
if head ~= ARGV[1] then
  -- free, and an earlier waiter's turn: wake it (again: its wake-up may have gone to a dead
  -- waiter dropped just now, or been lost with a connection)
  wake(ARGV[4], head, tonumber(ARGV[5]))
  return {0, 0, redis.call('ZRANK', KEYS[3], ARGV[1])}
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', ARGV[4] .. ARGV[1])
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local holder = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], holder, 'PX', tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'acquired', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
return {1, holder, fence, state_reply(KEYS[1], KEYS[5], ARGV[6] or '')}
