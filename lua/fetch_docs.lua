-- fetch_docs: read many trial hashes and return them as JSON text, so the client parses one
-- JSON array instead of thousands of replies (fetch_trials is Oríon's most frequent call).
-- KEYS[1..n] t:T hashes (the caller chunks the list so no call blocks Redis for long)
-- ARGV none
-- Returns: one string, the JSON objects of the existing hashes joined by "," (missing hashes
-- are skipped). Field values are JSON already; field names are plain identifiers.
local out = {}
for i = 1, #KEYS do
  local f = redis.call('HGETALL', KEYS[i])
  if #f > 0 then
    local parts = {}
    for j = 1, #f, 2 do parts[#parts + 1] = '"' .. f[j] .. '":' .. f[j + 1] end
    out[#out + 1] = '{' .. table.concat(parts, ',') .. '}'
  end
end
return table.concat(out, ',')
