-- reserve_trial: move the oldest pending trial (new, suspended or interrupted) to reserved,
-- with a reservation lease and the holder's identity (lease.py renews the lease).
-- KEYS = new suspended interrupted reserved request rev changed leases holders lease_clock
-- ARGV = trial_prefix status now request_ttl lease holder
-- KEYS[1] s:new; KEYS[2] s:suspended; KEYS[3] s:interrupted; KEYS[4] s:reserved;
-- KEYS[5] req:<request id> (makes a retried call return the same trial); KEYS[6] rev counter;
-- KEYS[7] changed zset (T -> rev of its last write); KEYS[8] leases zset; KEYS[9] holders
-- hash; KEYS[10] lease_clock hash
-- ARGV[1] trial key prefix "{P:E}:t:" (the chosen trial is only known here; it shares the tag);
-- ARGV[2] JSON "reserved"; ARGV[3] JSON now (start_time and heartbeat); ARGV[4] request TTL (s);
-- ARGV[5] lease in seconds (0: no lease, Oríon's heartbeat alone); ARGV[6] holder "<id> <JSON>"
-- Returns: {} none pending | {trial token, field1, value1, ...} the reserved trial
-- @include lease_clock.lua
-- @include replay.lua
local now, span = now_s(), tonumber(ARGV[5])
tick(KEYS[10], now, span)  -- a reserving worker is alive, whatever it finds
local prior = replayed(KEYS[5], ARGV[4])
if prior then
  local doc = redis.call('HGETALL', ARGV[1] .. prior)
  table.insert(doc, 1, prior)
  return doc
end
while true do
  local best, best_key, best_score = nil, nil, nil
  for i = 1, 3 do
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if head[1] and (best_score == nil or tonumber(head[2]) < best_score) then
      best, best_key, best_score = head[1], KEYS[i], tonumber(head[2])
    end
  end
  if best == nil then return {} end
  redis.call('ZREM', best_key, best)
  local tkey = ARGV[1] .. best
  if redis.call('EXISTS', tkey) == 1 then
    redis.call('ZADD', KEYS[4], now, best)
    redis.call('HSET', tkey, 'status', ARGV[2], 'start_time', ARGV[3], 'heartbeat', ARGV[3])
    redis.call('SET', KEYS[5], best, 'EX', tonumber(ARGV[4]))
    redis.call('ZADD', KEYS[7], redis.call('INCR', KEYS[6]), best)
    if span > 0 then redis.call('ZADD', KEYS[8], now + span, best)
    else redis.call('ZREM', KEYS[8], best) end
    redis.call('HSET', KEYS[9], best, ARGV[6])
    local doc = redis.call('HGETALL', tkey)
    table.insert(doc, 1, best)
    return doc
  end
  -- an index entry without its document (deleted meanwhile): drop it and look again
end
