-- fetch_docs: read many trial hashes and return them as JSON text, so the client parses one
-- JSON array instead of thousands of replies (fetch_trials is Oríon's most frequent call).
-- KEYS[1..n] t:T hashes (the caller chunks the list so no call blocks Redis for long)
-- ARGV none
-- (One table.concat at the end: concatenating per field would intern every piece.)
-- Returns: one string, the JSON objects of the existing hashes joined by "," (missing hashes
-- are skipped). Field values are JSON already; field names are plain identifiers.
local out, n = {}, 0
for i = 1, #KEYS do
  local f = redis.call('HGETALL', KEYS[i])
  if #f > 0 then
    n = n + 1
    out[n] = (n > 1) and ',{"' or '{"'
    for j = 1, #f, 2 do
      if j > 1 then n = n + 1; out[n] = ',"' end
      out[n + 1] = f[j]; out[n + 2] = '":'; out[n + 3] = f[j + 1]; n = n + 3
    end
    n = n + 1; out[n] = '}'
  end
end
return table.concat(out, '', 1, n)
