-- lock_release: release the algorithm lock, writing the new state only if the caller's fence
-- still holds (a holder whose TTL expired cannot overwrite its successor's state), and wake
-- the head of the waiters' queue (the earliest arrival whose lease is still running).
-- KEYS = lock holder queue leases request backlog holds log
-- ARGV = holder_token mode state request_ttl wake_prefix wake_ttl_ms observed hold_ms holds_keep base_token epoch
-- Returns: 1 released | 0 not the holder (no state written) | -1 no lock record |
--   2 released, but the stored state is no longer ARGV[10] (the delta was not written)
-- KEYS[1] lock record hash; KEYS[2] holder key; KEYS[3] queue zset (owner -> ticket);
-- KEYS[4] leases zset (owner -> lease end, ms); KEYS[5] req:<request id> (a retried release
-- returns the first result, not "not the holder"); KEYS[6] backlog list {P:E}:unobserved
-- (batched observation); KEYS[7] hold durations list {P:E}:holds (newest first, capped);
-- KEYS[8] the state's delta log (lock_state.lua)
-- ARGV[1] holder token, or "" to force the release (orion db release); ARGV[2] "1" to write
-- ARGV[3] as the new state (a snapshot: the log is emptied), "2" to append ARGV[3] to the log
-- as a delta of the state ARGV[10] (the token the holder read), "0" to keep the stored state;
-- ARGV[4] request TTL (s);
-- ARGV[5] wake key prefix "{P:E}:lock:wake:" (+ the head's owner id, known only here; it
-- shares the tag of KEYS); ARGV[6] wake key TTL in ms; ARGV[7] how many backlog entries the
-- new state has observed (removed from the head of KEYS[6] with the state write; "0": none);
-- ARGV[8] the hold's duration in ms, measured by the holder (pushed on KEYS[7] for a holder's
-- release, also one whose lock expired); "" or absent: none; ARGV[9] how many durations the
-- holds list keeps; ARGV[10] the state token the holder read (the base of a delta, mode "2");
-- ARGV[11] the epoch to give a record that has none yet (a snapshot write)
-- @include lock_queue.lua
-- @include replay.lua

local prior = replayed(KEYS[5], ARGV[4])
if prior then return tonumber(prior) end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' and ARGV[8] and ARGV[8] ~= '' then
  -- also a hold whose lock expired meanwhile: those are the ones an operator looks for
  redis.call('LPUSH', KEYS[7], ARGV[8])
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[9]) - 1)
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local code = 1
if ARGV[2] == '2' then
  local f = redis.call('HMGET', KEYS[1], 'epoch', 'version')
  if (f[1] or '') .. ':' .. (f[2] or '0') == ARGV[10] and (f[1] or '') ~= '' then
    redis.call('RPUSH', KEYS[8], ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('HINCRBY', KEYS[1], 'logbytes', string.len(ARGV[3]))
  else
    code = 2
  end
elseif ARGV[2] == '1' then
  local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'snapver', version, 'logbytes', 0)
  redis.call('HSETNX', KEYS[1], 'epoch', ARGV[11])
  redis.call('DEL', KEYS[8])
end
if code == 1 and ARGV[2] ~= '0' then
  -- only the holder removes entries, from the head: what others appended since stays
  local observed = tonumber(ARGV[7])
  if observed > 0 then redis.call('LTRIM', KEYS[6], observed, -1) end
end
redis.call('DEL', KEYS[2])
local head = live_head(KEYS[3], KEYS[4], now_ms())
if head then wake(ARGV[5], head, tonumber(ARGV[6])) end
redis.call('SET', KEYS[5], code, 'EX', tonumber(ARGV[4]))
return code
