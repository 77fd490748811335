-- observe_later: record a trial for the algorithm to observe in the next hold of the
-- experiment's algorithm lock (batched observation), instead of taking the lock now.
-- KEYS[1] backlog list {P:E}:unobserved (oldest first); KEYS[2] req:<request id> (a retried
-- call must not record the trial twice)
-- ARGV[1] the trial, encoded as an algorithm state is (statecodec); ARGV[2] request TTL (s)
-- Returns: the backlog's length after the call
local prior = redis.call('GET', KEYS[2])
if prior then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  return tonumber(prior)
end
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], length, 'EX', tonumber(ARGV[2]))
return length
