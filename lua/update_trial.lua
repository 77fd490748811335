-- update_trial: compare-and-set on a trial's status, then set fields and move it between indexes.
-- KEYS[1] t:T hash; KEYS[2] s:<expected status> zset; KEYS[3] s:<new status> zset; KEYS[4] rev;
-- KEYS[5] changed zset (T -> rev of its last write);
-- KEYS[6] req:<request id> (a call retried after a lost reply must not fail its own CAS)
-- ARGV[1] trial token; ARGV[2] JSON expected status (the `was` check);
-- ARGV[3] JSON new status, or "" to keep it; ARGV[4] index score: "now" = server time
-- (heartbeat, transition), a number = that epoch time, "" = keep the score (a status change
-- always re-scores: "" means "now" then); ARGV[5] request TTL (s); ARGV[6] list trims
-- "name n;name n" or "" (codec.encode_trial: delete name#k for k >= n, and the whole field
-- `name` when n > 0); ARGV[7..] field, value pairs
-- Returns: 1 updated | 0 stored status differs from expected | -1 no such trial
-- a retry: EXPIRE (1 if the key exists) is a write, so a WAIT after this call covers the
-- first attempt too
if redis.call('EXPIRE', KEYS[6], tonumber(ARGV[5])) == 1 then return 1 end
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
for name, n in string.gmatch(ARGV[6], '([^ ;]+) (%d+)') do
  local k = tonumber(n)
  while redis.call('HDEL', KEYS[1], name .. '#' .. k) == 1 do k = k + 1 end
  if tonumber(n) > 0 then redis.call('HDEL', KEYS[1], name) end
end
if #ARGV >= 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
local score = tonumber(ARGV[4])
if score == nil then
  local t = redis.call('TIME')
  score = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'status', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], score, ARGV[1])
elseif ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], score, ARGV[1])
end
redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[4]), ARGV[1])
redis.call('SET', KEYS[6], 1, 'EX', tonumber(ARGV[5]))
return 1
