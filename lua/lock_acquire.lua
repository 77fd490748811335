-- lock_acquire: take the algorithm lock if it is free (holder key absent or expired).
-- KEYS[1] lock record hash; KEYS[2] holder key (value "<fence>:<owner>", expires after the TTL)
-- ARGV[1] owner id (random per acquisition); ARGV[2] TTL in ms
-- Side effect: the record's "acquired" field = server time of this acquisition (for status)
-- A retried call (same owner id) that finds its own hold gets it back instead of waiting.
-- Returns one table: {1, holder token, fence, configuration, state} acquired |
--                    {0, remaining TTL ms} held by someone else | {-1} no lock record
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local current = redis.call('GET', KEYS[2])
if current then
  local fence, owner = string.match(current, '^(%d+):(.*)$')
  if owner ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[2])} end
  -- our own earlier attempt took it and its reply was lost: hand the same hold back
  local rec = redis.call('HMGET', KEYS[1], 'configuration', 'state')
  return {1, current, tonumber(fence), rec[1], rec[2]}
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local holder = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], holder, 'PX', tonumber(ARGV[2]))
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'acquired', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
local rec = redis.call('HMGET', KEYS[1], 'configuration', 'state')
return {1, holder, fence, rec[1], rec[2]}
