-- The algorithm state of a lock record is a snapshot (field state, at version snapver) and a
-- log of deltas (list KEYS log: entry i makes version snapver + i + 1); fields epoch (random,
-- set when the record was created or first versioned) and version name the current state as
-- "<epoch>:<version>" (a worker keeps the algorithm it left at that token).
-- state_reply(record, log, have, configuration, snapshot, fields): what a holder that has the
-- state `have` lacks: {configuration, token, snapshot bytes, log bytes, mode, ...} with mode
-- 'current' (nothing), 'log' (then the deltas after `have`, oldest first) or 'snap' (then the
-- snapshot and every delta after it).
local function state_reply(record, log, have)
  local f = redis.call('HMGET', record, 'configuration', 'state', 'epoch', 'version', 'snapver',
    'logbytes')
  local epoch, version, snapver = f[3] or '', tonumber(f[4] or '0'), tonumber(f[5] or '0')
  local token = epoch .. ':' .. version
  local snapshot = f[2] or ''
  local head = {f[1], token, string.len(snapshot), tonumber(f[6] or '0')}
  if epoch ~= '' and have == token then
    table.insert(head, 'current')
    return head
  end
  local have_epoch, have_version = string.match(have, '^(.+):(%d+)$')
  have_version = tonumber(have_version or '-1')
  if epoch ~= '' and have_epoch == epoch and have_version >= snapver and have_version < version then
    table.insert(head, 'log')
    table.insert(head, redis.call('LRANGE', log, have_version - snapver, -1))
    return head
  end
  table.insert(head, 'snap')
  table.insert(head, redis.call('LRANGE', log, 0, -1))
  table.insert(head, snapshot)
  return head
end
