-- lock_release: release the algorithm lock, writing the new state only if the caller's fence
-- still holds (a holder whose TTL expired cannot overwrite its successor's state), and wake
-- one waiter.
-- KEYS[1] lock record hash; KEYS[2] holder key; KEYS[3] wake list;
-- KEYS[4] req:<request id> (a retried release returns the first result, not "not the holder")
-- ARGV[1] holder token, or "" to force the release (orion db release); ARGV[2] "1" to write
-- ARGV[3] as the new state, "0" to keep the stored state; ARGV[4] request TTL (s)
-- Returns: 1 released | 0 not the holder (nothing written) | -1 no lock record
local prior = redis.call('GET', KEYS[4])
if prior then  -- a retry: a write, so a WAIT after this call covers the first attempt too
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
  return tonumber(prior)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], 1)
redis.call('PEXPIRE', KEYS[3], 60000)
redis.call('SET', KEYS[4], 1, 'EX', tonumber(ARGV[4]))
return 1
