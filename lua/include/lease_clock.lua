-- lease_clock (included by the scripts that renew or judge reservation leases).
-- The clock hash records when any worker of the experiment last renewed or reserved ('last')
-- and when such calls resumed after a gap of more than half a lease ('resumed'): a server
-- restart, a failover or a network cut stops every renewal at once, and a lease that lapsed
-- then is no sign of a dead worker. A lease counts as lost only once calls have flowed for a
-- whole lease since they resumed (lease_lost_since), so every live holder renewed by then.

-- server time in seconds (float)
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- a live worker is here: record the call, and a resumption after a gap. pcall: a full server
-- (maxmemory) refuses these writes when they come first in a script, and must not refuse the
-- reserve that follows (its own first write, a ZREM, passes); unrecorded calls look like a gap,
-- so nothing is judged lost while the server is full
local function tick(clock, now, span)
  local last, known = unpack(redis.call('HMGET', clock, 'last', 'span'))
  known = tonumber(known or '0')
  local fields = {'last', now}
  if span > 0 then
    known = span
    fields[3], fields[4] = 'span', span
  end
  if now - tonumber(last or '0') > known / 2 then
    fields[#fields + 1], fields[#fields + 2] = 'resumed', now
  end
  redis.pcall('HSET', clock, unpack(fields))
end

-- leases that ended before this returned time count as lost (-inf: none yet)
local function lease_lost_before(clock, now)
  local last, resumed, span = unpack(redis.call('HMGET', clock, 'last', 'resumed', 'span'))
  span = tonumber(span or '0')
  if span <= 0 or now - tonumber(last or '0') > span / 2 then return '-inf' end
  if now - tonumber(resumed or now) < span then return '-inf' end
  return now
end
