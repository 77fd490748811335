-- fetch_changes: the trials written since a reader's cached revision, in one call (the cache
-- refresh of fetch_trials, Oríon's most frequent call), from one atomic snapshot.
-- KEYS = rev changed all floor
-- ARGV = cached_rev trial_prefix max_changes
-- KEYS[1] rev counter; KEYS[2] changed zset (T -> rev of its last write); KEYS[3] all zset;
-- KEYS[4] floor: highest revision trimmed off `changed` (register_trial.lua trims it)
-- ARGV[1] the reader's cached revision; ARGV[2] trial key prefix "{P:E}:t:" (the trial hashes
-- share the slot of KEYS); ARGV[3] most changes worth returning (more: reload everything)
-- Returns: {rev} nothing changed | {rev, -1} reload everything: too many changes, the reader
-- is older than the trimmed part of the log, or the counter went back (data removed behind
-- the reader's back) | {rev, n, T1..Tn, order1..ordern, docs} with order = registration rank
-- in `all` ("" for a deleted trial) and docs = the JSON objects of the existing trials joined
-- by "," (as fetch_docs.lua, without an _id equal to the id)
-- append_doc(out, n, f): the pieces of one trial's JSON object (see the include)
-- @include trial_json.lua

local rev = tonumber(redis.call('GET', KEYS[1]) or '0')
local cached = tonumber(ARGV[1])
if rev == cached then return {rev} end
local limit = tonumber(ARGV[3])
if rev < cached or cached < tonumber(redis.call('GET', KEYS[4]) or '0') then
  return {rev, -1}
end
local tokens = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, limit + 1)
if #tokens > limit then return {rev, -1} end
local reply = {rev, #tokens}
local orders, docs, n = {}, {}, 0
for i = 1, #tokens do
  reply[#reply + 1] = tokens[i]
  orders[i] = redis.call('ZSCORE', KEYS[3], tokens[i]) or ''
  local f = redis.call('HGETALL', ARGV[2] .. tokens[i])
  if #f > 0 then
    if n > 0 then n = n + 1; docs[n] = ',' end
    n = append_doc(docs, n, f)
  end
end
for i = 1, #orders do reply[#reply + 1] = orders[i] end
reply[#reply + 1] = table.concat(docs, '', 1, n)
return reply
