-- fetch_changes: the trials written since a reader's cached revision, in one call (the cache
-- refresh of fetch_trials, Oríon's most frequent call), from one atomic snapshot.
-- KEYS[1] rev counter; KEYS[2] changed zset (T -> rev of its last write); KEYS[3] all zset;
-- KEYS[4] floor: highest revision trimmed off `changed` (register_trial.lua trims it)
-- ARGV[1] the reader's cached revision; ARGV[2] trial key prefix "{P:E}:t:" (the trial hashes
-- share the slot of KEYS); ARGV[3] most changes worth returning (more: reload everything)
-- Returns: {rev} nothing changed | {rev, -1} reload everything: too many changes, the reader
-- is older than the trimmed part of the log, or the counter went back (data removed behind
-- the reader's back) | {rev, n, T1..Tn, order1..ordern, docs} with order = registration rank
-- in `all` ("" for a deleted trial) and docs = the JSON objects of the existing trials joined
-- by "," (as fetch_docs.lua)
-- One trial hash (HGETALL reply) -> its JSON object (the layout of codec.encode_trial):
-- "params#i"/"results#i" hold name TAB type TAB value and become the lists "params"/"results";
-- a missing _id equals the id. (The same function is in fetch_docs.lua and fetch_changes.lua.)
local function doc_json(f)
  local parts, lists, id, has_id = {}, nil, nil, false
  for j = 1, #f, 2 do
    local k, v = f[j], f[j + 1]
    local hash = string.find(k, '#', 1, true)
    if hash then
      local name, index = string.sub(k, 1, hash - 1), tonumber(string.sub(k, hash + 1)) + 1
      local t1 = string.find(v, '\t', 1, true)
      local t2 = string.find(v, '\t', t1 + 1, true)
      lists = lists or {}
      lists[name] = lists[name] or {}
      lists[name][index] = '{"name":' .. string.sub(v, 1, t1 - 1) .. ',"type":' ..
        string.sub(v, t1 + 1, t2 - 1) .. ',"value":' .. string.sub(v, t2 + 1) .. '}'
    else
      if k == '_id' then has_id = true elseif k == 'id' then id = v end
      parts[#parts + 1] = '"' .. k .. '":' .. v
    end
  end
  if lists then
    for name, items in pairs(lists) do
      local max, out = 0, {}
      for i in pairs(items) do if i > max then max = i end end
      for i = 1, max do if items[i] then out[#out + 1] = items[i] end end
      parts[#parts + 1] = '"' .. name .. '":[' .. table.concat(out, ',') .. ']'
    end
  end
  if id and not has_id then parts[#parts + 1] = '"_id":' .. id end
  return '{' .. table.concat(parts, ',') .. '}'
end

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
local orders, docs = {}, {}
for i = 1, #tokens do
  reply[#reply + 1] = tokens[i]
  orders[i] = redis.call('ZSCORE', KEYS[3], tokens[i]) or ''
  local f = redis.call('HGETALL', ARGV[2] .. tokens[i])
  if #f > 0 then docs[#docs + 1] = doc_json(f) end
end
for i = 1, #orders do reply[#reply + 1] = orders[i] end
reply[#reply + 1] = table.concat(docs, ',')
return reply
