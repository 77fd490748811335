-- lock_renew: extend the holder's TTL, only if the caller still holds the lock.
-- KEYS = holder
-- ARGV = holder_token ttl_ms
-- KEYS[1] holder key; ARGV[1] holder token "<fence>:<owner>"; ARGV[2] TTL in ms
-- Returns: 1 renewed | 0 lost (expired, taken by another holder, or released)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
