-- register_trial: insert a trial, unique on (experiment, id), and index it.
-- KEYS = trial all status rev changed request floor
-- ARGV = token score request_ttl changed_keep *fields
-- KEYS[1] t:T hash; KEYS[2] all zset; KEYS[3] s:<status> zset; KEYS[4] rev counter;
-- KEYS[5] changed zset (T -> rev of its last write: lets readers refresh only what changed);
-- KEYS[6] req:<request id> (a call retried after a lost reply returns the first result);
-- KEYS[7] floor (highest revision trimmed off `changed`; readers older than it reload)
-- ARGV[1] trial token; ARGV[2] status-index score: "now" = server time, or an epoch time
-- (a reserved trial registered with an old heartbeat); ARGV[3] request TTL (s);
-- ARGV[4] entries `changed` keeps (only registrations grow it: it is trimmed here, by a
-- quarter at a time); ARGV[5..] field, value pairs (codec.encode_trial)
-- Returns: revision number (> 0) registered | -1 duplicate trial
-- @include replay.lua
local prior = replayed(KEYS[6], ARGV[3])
if prior then return tonumber(prior) end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local score = tonumber(ARGV[2])
if score == nil then
  local t = redis.call('TIME')
  score = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local rev = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], rev, ARGV[1])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('ZADD', KEYS[5], rev, ARGV[1])
local keep = tonumber(ARGV[4])
local size = redis.call('ZCARD', KEYS[5])
if size > keep + math.floor(keep / 4) then
  local last = redis.call('ZRANGE', KEYS[5], size - keep - 1, size - keep - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, size - keep - 1)
  if tonumber(last[2]) > tonumber(redis.call('GET', KEYS[7]) or '0') then
    redis.call('SET', KEYS[7], last[2])
  end
end
redis.call('SET', KEYS[6], rev, 'EX', tonumber(ARGV[3]))
return rev
