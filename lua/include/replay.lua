-- replay (included by the write scripts that take a request id): a call retried after a lost
-- reply carries the same request id, and KEYS req:<request id> holds what the first call
-- returned (its caller sets it, with the request TTL); the retry returns that instead of
-- writing twice. Both helpers return that result (a string), or nil for a first call.

-- reads first: a first call writes nothing here, so on a full server (OOM) it is refused at
-- its first real write, before it changed anything
local function replayed(req, ttl)
  local prior = redis.call('GET', req)
  if prior then  -- a retry: EXPIRE is a write, so a WAIT after this call covers the first too
    redis.call('EXPIRE', req, tonumber(ttl))
  end
  return prior
end

-- writes first: EXPIRE is a write that Redis' OOM check lets through, after which Redis lets
-- the script finish, so a full server that took the first step of a status change (or of a
-- backlog record) also takes the rest, never half of it
local function replayed_write_first(req, ttl)
  if redis.call('EXPIRE', req, tonumber(ttl)) == 1 then
    return redis.call('GET', req)
  end
  return nil
end
