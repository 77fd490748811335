-- observe_later: record a trial for the algorithm to observe in the next hold of the
-- experiment's algorithm lock (batched observation), instead of taking the lock now.
-- KEYS = backlog request
-- ARGV = trial request_ttl
-- KEYS[1] backlog list {P:E}:unobserved (oldest first); KEYS[2] req:<request id> (a retried
-- call must not record the trial twice)
-- ARGV[1] the trial, encoded as an algorithm state is (statecodec); ARGV[2] request TTL (s)
-- Returns: the backlog's length after the call
-- EXPIRE first, as update_trial.lua does: a write that Redis' OOM check lets through, after
-- which Redis lets the script finish; so a full server that stored the completion (its status
-- change starts the same way) also records it here, instead of the algorithm never seeing it
-- @include replay.lua
local prior = replayed_write_first(KEYS[2], ARGV[2])
if prior then return tonumber(prior) end
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], length, 'EX', tonumber(ARGV[2]))
return length
