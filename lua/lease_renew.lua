-- lease_renew: extend the reservation leases a worker holds (lease.py, every lease / 6 s).
-- KEYS = leases holders lease_clock reserved
-- ARGV = holder lease *tokens
-- KEYS[1] leases zset; KEYS[2] holders hash; KEYS[3] lease_clock hash; KEYS[4] s:reserved
-- ARGV[1] holder id (this worker's); ARGV[2] lease in seconds; ARGV[3..] trial tokens
-- Returns: the tokens of ARGV[3..] this worker no longer holds (completed, released,
-- recovered by another worker or deleted): the caller forgets them
-- @include lease_clock.lua
local now, span = now_s(), tonumber(ARGV[2])
tick(KEYS[3], now, span)
local mine, dropped = ARGV[1] .. ' ', {}
for i = 3, #ARGV do
  local token = ARGV[i]
  local holder = redis.call('HGET', KEYS[2], token)
  if holder and string.sub(holder, 1, #mine) == mine and redis.call('ZSCORE', KEYS[4], token) then
    redis.call('ZADD', KEYS[1], now + span, token)
  else
    dropped[#dropped + 1] = token
  end
end
return dropped
