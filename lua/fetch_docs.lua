-- fetch_docs: read many trial hashes and return them as JSON text, so the client parses one
-- JSON array instead of thousands of replies (fetch_trials is Oríon's most frequent call).
-- KEYS = *trials
-- ARGV =
-- KEYS[1..n] t:T hashes (the caller chunks the list so no call blocks Redis for long)
-- ARGV none
-- Returns: one string, the JSON objects of the existing hashes joined by "," (missing hashes
-- are skipped). Field values are JSON already; field names are plain identifiers. An _id
-- equal to the id is not stored (codec.encode_trial) and not returned: the client adds it.
-- append_doc(out, n, f): the pieces of one trial's JSON object (see the include)
-- @include trial_json.lua

local out, n = {}, 0
for i = 1, #KEYS do
  local f = redis.call('HGETALL', KEYS[i])
  if #f > 0 then
    if n > 0 then n = n + 1; out[n] = ',' end
    n = append_doc(out, n, f)
  end
end
return table.concat(out, '', 1, n)
