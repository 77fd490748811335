-- create_experiment: insert an experiment document, unique on (name, version) and on _id.
-- KEYS = exp_names exps exp
-- ARGV = name_version exp_token *fields
-- KEYS[1] exp_names hash   (JSON [name, version] -> experiment token)
-- KEYS[2] exps zset        (experiment token -> creation order)
-- KEYS[3] exp:E hash       (the document)
-- ARGV[1] JSON [name, version]; ARGV[2] experiment token; ARGV[3..] field, value pairs
-- Returns: 1 created | -1 duplicate (name, version) | -2 duplicate _id
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[2])
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
return 1
