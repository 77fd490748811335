-- fetch_docs: read many trial hashes and return them as JSON text, so the client parses one
-- JSON array instead of thousands of replies (fetch_trials is Oríon's most frequent call).
-- KEYS[1..n] t:T hashes (the caller chunks the list so no call blocks Redis for long)
-- ARGV none
-- Returns: one string, the JSON objects of the existing hashes joined by "," (missing hashes
-- are skipped). Field values are JSON already; field names are plain identifiers.
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

local out, n = {}, 0
for i = 1, #KEYS do
  local f = redis.call('HGETALL', KEYS[i])
  if #f > 0 then
    if n > 0 then n = n + 1; out[n] = ',' end
    n = append_doc(out, n, f)
  end
end
return table.concat(out, '', 1, n)
