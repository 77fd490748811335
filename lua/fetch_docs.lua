-- fetch_docs: read many trial hashes and return them as JSON text, so the client parses one
-- JSON array instead of thousands of replies (fetch_trials is Oríon's most frequent call).
-- KEYS[1..n] t:T hashes (the caller chunks the list so no call blocks Redis for long)
-- ARGV none
-- Returns: one string, the JSON objects of the existing hashes joined by "," (missing hashes
-- are skipped). Field values are JSON already; field names are plain identifiers.
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

local out = {}
for i = 1, #KEYS do
  local f = redis.call('HGETALL', KEYS[i])
  if #f > 0 then out[#out + 1] = doc_json(f) end
end
return table.concat(out, ',')
