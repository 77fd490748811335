-- lost_trials: reserved trials whose last heartbeat is older than a threshold, on server time.
-- KEYS[1] s:reserved zset (score = server time of the last heartbeat)
-- ARGV[1] threshold in seconds (5 x worker.heartbeat, like Oríon)
-- Returns: list of trial tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
