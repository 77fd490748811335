-- update_trial: compare-and-set on a trial's status, then set fields and move it between indexes.
-- KEYS = trial was_index new_index rev changed request leases holders recoveries recovered backlog
-- ARGV = token was status score request_ttl trims holder record *fields
-- Returns: 1 updated | 0 stored status differs from expected (or another holder holds it)
-- | -1 no such trial
-- KEYS[1] t:T hash; KEYS[2] s:<expected status> zset; KEYS[3] s:<new status> zset; KEYS[4] rev;
-- KEYS[5] changed zset (T -> rev of its last write); KEYS[6] req:<request id> (a call retried
-- after a lost reply must not fail its own CAS); KEYS[7] leases zset; KEYS[8] holders hash;
-- KEYS[9] recoveries list; KEYS[10] recovered count; KEYS[11] backlog list {P:E}:unobserved
-- ARGV[1] trial token; ARGV[2] JSON expected status (the `was` check); ARGV[3] JSON new status,
-- or "" to keep it; ARGV[4] index score: "now" = server time (heartbeat, transition), a number
-- = that epoch time, "" = keep the score (a status change always re-scores: "" means "now"
-- then); ARGV[5] request TTL (s); ARGV[6] list trims "name n;name n" or "" (codec.encode_trial:
-- delete name#k for k >= n, and the whole field `name` when n > 0); ARGV[7] the caller's
-- holder id: refused if another holds the trial ("": no check); ARGV[8] the trial encoded for
-- the algorithm's backlog (batched observation: recorded with the change), or ""; ARGV[9..]
-- field, value pairs
-- @include replay.lua
if replayed_write_first(KEYS[6], ARGV[5]) then return 1 end
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
local holder = redis.call('HGET', KEYS[8], ARGV[1])
-- fencing: refused when another worker holds it now (a trial made reserved by other means
-- has no holder record: nobody to fence off)
if ARGV[7] ~= '' and holder and string.sub(holder, 1, #ARGV[7] + 1) ~= ARGV[7] .. ' ' then
  return 0
end
for name, n in string.gmatch(ARGV[6], '([^ ;]+) (%d+)') do
  local k = tonumber(n)
  while redis.call('HDEL', KEYS[1], name .. '#' .. k) == 1 do k = k + 1 end
  if tonumber(n) > 0 then redis.call('HDEL', KEYS[1], name) end
end
if #ARGV >= 10 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local score = tonumber(ARGV[4]) or now
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'status', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], score, ARGV[1])
  if current == '"reserved"' then  -- the reservation ends: its lease and holder with it
    local lease_end = tonumber(redis.call('ZSCORE', KEYS[7], ARGV[1]))
    redis.call('ZREM', KEYS[7], ARGV[1])
    redis.call('HDEL', KEYS[8], ARGV[1])
    if lease_end and lease_end < now and ARGV[3] == '"interrupted"' then  -- a recovery
      redis.call('LPUSH', KEYS[9], cjson.encode({trial = ARGV[1], holder = holder or '',
                                                 lease_end = lease_end, at = now}))
      redis.call('LTRIM', KEYS[9], 0, 99)
      redis.call('INCR', KEYS[10])
    end
  end
elseif ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], score, ARGV[1])
end
if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[11], ARGV[8]) end
redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[4]), ARGV[1])
redis.call('SET', KEYS[6], 1, 'EX', tonumber(ARGV[5]))
return 1
