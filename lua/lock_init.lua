-- lock_init: create an experiment's algorithm lock record if it does not exist yet.
-- KEYS = lock holder log
-- ARGV = configuration state locked ttl_ms epoch
-- KEYS[1] lock record hash; KEYS[2] holder key; KEYS[3] the state's delta log (lock_state.lua:
-- a leftover of a deleted record is removed)
-- ARGV[1] JSON configuration; ARGV[2] state bytes ("" = none); ARGV[3] "1" to create it held
-- (Track API's algo_locked=1); ARGV[4] TTL of that hold in ms; ARGV[5] the record's epoch
-- (random: names its states "<epoch>:<version>", version 0 here)
-- Returns: 1 created | 0 already there (left untouched)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'configuration', ARGV[1], 'state', ARGV[2], 'fence', 0,
  'epoch', ARGV[5], 'version', 0, 'snapver', 0, 'logbytes', 0)
redis.call('DEL', KEYS[3])
if ARGV[3] == '1' then
  local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('SET', KEYS[2], fence .. ':seeded', 'PX', tonumber(ARGV[4]))
end
return 1
