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
-- One trial hash (HGETALL reply) -> the pieces of its JSON object (the layout of
-- codec.encode_trial), appended to `out` after index n; returns the new n. "params#i"/"results#i"
-- hold name TAB type TAB value and become the lists "params"/"results"; a missing _id equals
-- the id. Pieces, not one string per document: the caller joins everything once (a string per
-- field and per document cost 25% more server time). (The same function is in fetch_docs.lua
-- and fetch_changes.lua: Redis 6.2 scripts cannot share code.)
local find, sub = string.find, string.sub
local function append_doc(out, n, f)
  local lists, id, has_id, sep = nil, nil, false, '{"'
  for j = 1, #f, 2 do
    local k, v = f[j], f[j + 1]
    local hash = find(k, '#', 1, true)
    if hash then
      local name, index = sub(k, 1, hash - 1), tonumber(sub(k, hash + 1)) + 1
      lists = lists or {}
      local items = lists[name]
      if not items then items = {}; lists[name] = items end
      items[index] = v
    else
      if k == '_id' then has_id = true elseif k == 'id' then id = v end
      out[n + 1], out[n + 2], out[n + 3], out[n + 4] = sep, k, '":', v
      n, sep = n + 4, ',"'
    end
  end
  if lists then
    for name, items in pairs(lists) do
      local max = 0
      for i in pairs(items) do if i > max then max = i end end
      out[n + 1], out[n + 2], out[n + 3] = sep, name, '":['
      n, sep = n + 3, ',"'
      local isep = '{"name":'
      for i = 1, max do
        local v = items[i]
        if v then
          local t1 = find(v, '\t', 1, true)
          local t2 = find(v, '\t', t1 + 1, true)
          out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] =
            isep, sub(v, 1, t1 - 1), ',"type":', sub(v, t1 + 1, t2 - 1), ',"value":', sub(v, t2 + 1)
          n, isep = n + 6, '},{"name":'
        end
      end
      if isep ~= '{"name":' then n = n + 1; out[n] = '}]' else n = n + 1; out[n] = ']' end
    end
  end
  if id and not has_id then out[n + 1], out[n + 2] = sep .. '_id":', id; n = n + 2 end
  if sep == '{"' then n = n + 1; out[n] = '{' end
  n = n + 1; out[n] = '}'
  return n
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
