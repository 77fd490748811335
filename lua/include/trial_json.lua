-- trial_json (included by fetch_docs.lua and fetch_changes.lua; scripts.source() pastes it in
-- place of their "-- @include trial_json.lua" line, since Redis 6.2 scripts cannot share code).
-- append_doc(out, n, f): one trial hash (its HGETALL reply f) -> the pieces of its JSON object
-- (the layout of codec.encode_trial), appended to `out` after index n; returns the new n.
-- "params#i"/"results#i" hold name TAB type TAB value (JSON never holds a raw tab) and become
-- the lists "params"/"results". The caller joins all pieces once: a string per field or per
-- document costs more server time, and so would re-parsing each field name per trial, hence
-- the memos of one call (trials of an experiment share their field, param and type names).
local find, sub, tonumber, pairs, ipairs = string.find, string.sub, tonumber, pairs, ipairs
local lead, lead0, lname, lidx, elem = {}, {}, {}, {}, {}

-- field name k -> ',"k":' (and '"k":' first in a document), or false for a list element
local function learn(k)
  local hash = find(k, '#', 1, true)
  local index = hash and tonumber(sub(k, hash + 1))
  if index then
    lead[k], lname[k], lidx[k] = false, sub(k, 1, hash - 1), index + 1
  else
    lead[k], lead0[k] = ',"' .. k .. '":', '"' .. k .. '":'
  end
  return lead[k]
end

-- name TAB type TAB value -> '{"name":<name>,"type":<type>,"value":', <value>
local function element(v)
  local t1 = find(v, '\t', 1, true)
  local t2 = find(v, '\t', t1 + 1, true)
  local head = sub(v, 1, t2)
  local h = elem[head]
  if not h then
    h = '{"name":' .. sub(v, 1, t1 - 1) .. ',"type":' .. sub(v, t1 + 1, t2 - 1) .. ',"value":'
    elem[head] = h
  end
  return h, sub(v, t2 + 1)
end

-- The usual layout (encode_trial writes it): each list's elements contiguous, from index 0 up.
-- nil for any other layout: a list's first element seen is not #0, or one is out of order.
local function fast_doc(out, n, f)
  local open, expect, first = nil, 0, true
  n = n + 1; out[n] = '{'
  for j = 1, #f, 2 do
    local k = f[j]
    local p = lead[k]
    if p == nil then p = learn(k) end
    if p then
      if open then n = n + 1; out[n] = '}]'; open = nil end
      if first then p, first = lead0[k], false end
      out[n + 1], out[n + 2] = p, f[j + 1]
      n = n + 2
    else
      local name, index = lname[k], lidx[k]
      if name ~= open then
        if index ~= 1 then return nil end
        if open then n = n + 1; out[n] = '}]' end
        out[n + 1], out[n + 2], out[n + 3] = first and '"' or ',"', name, '":['
        n, open, expect, first = n + 3, name, 2, false
      else
        if index ~= expect then return nil end
        n, expect = n + 1, expect + 1
        out[n] = '},'
      end
      out[n + 1], out[n + 2] = element(f[j + 1])
      n = n + 2
    end
  end
  if open then n = n + 1; out[n] = '}]' end
  n = n + 1; out[n] = '}'
  return n
end

-- Any layout: the same hash put in the usual layout first (scalar fields in their order, then
-- each list's elements by index, renumbered from 0 so missing indexes are skipped).
local function slow_doc(out, n, f)
  local usual, lists, names = {}, {}, {}
  for j = 1, #f, 2 do
    local k = f[j]
    local p = lead[k]
    if p == nil then p = learn(k) end
    if p then
      usual[#usual + 1], usual[#usual + 2] = k, f[j + 1]
    else
      local name = lname[k]
      if not lists[name] then lists[name] = {}; names[#names + 1] = name end
      lists[name][lidx[k]] = f[j + 1]
    end
  end
  for _, name in ipairs(names) do
    local items, max, count = lists[name], 0, 0
    for i in pairs(items) do if i > max then max = i end end
    for i = 1, max do
      if items[i] then
        usual[#usual + 1], usual[#usual + 2] = name .. '#' .. count, items[i]
        count = count + 1
      end
    end
  end
  return fast_doc(out, n, usual)
end

local function append_doc(out, n, f)
  return fast_doc(out, n, f) or slow_doc(out, n, f)
end
