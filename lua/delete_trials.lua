-- delete_trials: delete trials and their index entries.
-- KEYS = all new reserved suspended completed interrupted broken rev changed *trials
-- ARGV = *tokens
-- KEYS[1] all zset; KEYS[2..7] s:new, s:reserved, s:suspended, s:completed, s:interrupted,
-- s:broken; KEYS[8] rev counter; KEYS[9] changed zset (a deletion is a change: readers' caches
-- must drop the trial, so tombstones stay); KEYS[10..] t:T hashes, in the order of ARGV
-- ARGV[1..] trial tokens
-- Returns: number of trials deleted
local deleted = 0
local rev = redis.call('INCR', KEYS[8])
for i = 1, #ARGV do
  deleted = deleted + redis.call('DEL', KEYS[9 + i])
  redis.call('ZREM', KEYS[1], ARGV[i])
  for s = 2, 7 do redis.call('ZREM', KEYS[s], ARGV[i]) end
  redis.call('ZADD', KEYS[9], rev, ARGV[i])
end
return deleted
