-- live_head(queue, leases, now): the earliest waiter of the lock queue whose lease still runs.
-- Waiters at the head whose lease lapsed (dead, or stalled past their lease when their turn
-- came) are dropped on the way; a lapsed waiter further back keeps its place until it reaches
-- the head (it may poll again by then). At most 100 dropped per call: bounds the script.
local function live_head(queue, leases, now)
  for _ = 1, 100 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return nil end
    if tonumber(redis.call('ZSCORE', leases, head) or '0') > now then return head end
    redis.call('ZREM', queue, head)
    redis.call('ZREM', leases, head)
  end
  return redis.call('ZRANGE', queue, 0, 0)[1]
end

-- wake(prefix, owner, ttl_ms): push a token on that waiter's wake list (it BLPOPs on it)
local function wake(prefix, owner, ttl_ms)
  local key = prefix .. owner
  redis.call('RPUSH', key, 1)
  redis.call('PEXPIRE', key, ttl_ms)
end

-- now_ms(): server time in milliseconds
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end
