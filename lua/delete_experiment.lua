-- delete_experiment: remove an experiment document and its index entries (not its trials/lock).
-- KEYS = exp_names exps exp
-- ARGV = name_version exp_token
-- KEYS[1] exp_names hash; KEYS[2] exps zset; KEYS[3] exp:E hash
-- ARGV[1] JSON [name, version] read from the document; ARGV[2] experiment token
-- Returns: 1 deleted | 0 no such experiment
if redis.call('DEL', KEYS[3]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
