-- lost_trials: reserved trials whose holder is gone, on server time: the heartbeat is older
-- than a threshold (Oríon's rule), or the reservation lease of the holding worker ended
-- (lease.py renews it) while other calls kept flowing (include/lease_clock.lua).
-- KEYS = reserved leases lease_clock
-- ARGV = threshold_s
-- KEYS[1] s:reserved zset (score = server time of the last heartbeat); KEYS[2] leases zset;
-- KEYS[3] lease_clock hash
-- ARGV[1] heartbeat threshold in seconds (5 x worker.heartbeat, like Oríon)
-- Returns: list of trial tokens (heartbeat-lost first, then lease-lost ones, no repeats)
-- @include lease_clock.lua
local now = now_s()
local lost = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local seen = {}
for _, token in ipairs(lost) do seen[token] = true end
local before = lease_lost_before(KEYS[3], now)
if before ~= '-inf' then
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. before)) do
    if not seen[token] and redis.call('ZSCORE', KEYS[1], token) then
      seen[token] = true
      lost[#lost + 1] = token
    end
  end
end
return lost
