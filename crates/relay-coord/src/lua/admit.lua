-- Admits requests of one key, in order: each sees what the ones before it reserved. ARGV: the
-- count, then per request: now, lease member, lease expiry, cost, tokens, family,
-- concurrency, token quota, total cost, lifetime after first use (-1: none), period count,
-- then per period (name, start, limit, family or ''), then window ms (-1: none), bucket
-- width, rate requests, rate tokens, rate cost (-1: none). One script for all of a batch's
-- admissions of a key: a script's fixed cost is paid once.
-- Returns {9} when the ledger is not in Redis (seed it, then ask again), else three numbers
-- per request: {0, 0, 0} admitted, or {1, reason, detail}: 1 expired, 2 concurrency,
-- 3 token quota, 4 total cost, 5 period (detail: its index), 6/7/8 rate requests/tokens/cost
-- (detail: retry after ms).
if redis.call('EXISTS', ledger) == 0 then return {9} end

local function exceeds(used, more, limit)
  return more > 0 and (used >= limit or used + more > limit)
end

local expired_until = nil
local first_used = redis.call('HGET', ledger, 'fu')
if first_used then first_used = tonumber(first_used) end
-- The leases admitted, as ZADD's score, member pairs: added in one call at the end.
local added = {}

-- One request, its arguments from `index`: 0 or 1, reason, detail.
local function admit(index)
  local now = tonumber(ARGV[index])
  local member, expiry = ARGV[index + 1], tonumber(ARGV[index + 2])
  local cost, tokens, family = tonumber(ARGV[index + 3]), tonumber(ARGV[index + 4]), ARGV[index + 5]
  local concurrency, quota, total, lifetime =
    tonumber(ARGV[index + 6]), tonumber(ARGV[index + 7]), tonumber(ARGV[index + 8]),
    tonumber(ARGV[index + 9])
  if expired_until == nil or now > expired_until then
    expire_leases(now)
    expired_until = now
  end
  if lifetime >= 0 and first_used and now >= first_used + lifetime then
    return 1, 1, 0
  end
  if concurrency >= 0 and num('n') >= concurrency then return 1, 2, 0 end
  if quota >= 0 and exceeds(num('tt') + num('rt'), tokens, quota) then return 1, 3, 0 end
  if total >= 0 and exceeds(num('tc') + num('rc'), cost, total) then return 1, 4, 0 end

  local at = index + 11
  for period = 1, tonumber(ARGV[index + 10]) do
    local name, start, limit, period_family =
      ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3]
    at = at + 4
    local reserved = num('rc')
    if period_family ~= '' then reserved = num('rf:' .. period_family) end
    if exceeds(period_cost(name, start) + reserved, cost, limit) then return 1, 5, period end
  end

  local window, width = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local rate_requests, rate_tokens, rate_cost =
    tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  if window >= 0 then
    trim_window(window, now)
    local first = redis.call('LINDEX', buckets, 0)
    local retry_after = 1000
    if first then
      retry_after = math.max(tonumber(split(first)[1]) + window - now, 1)
    end
    if rate_requests >= 0 and num('wr') >= rate_requests then return 1, 6, retry_after end
    if rate_tokens >= 0 and exceeds(num('wt') + num('rt'), tokens, rate_tokens) then
      return 1, 7, retry_after
    end
    if rate_cost >= 0 and exceeds(num('wc') + num('rc'), cost, rate_cost) then
      return 1, 8, retry_after
    end
    add_window(width, now, 1, 0, 0)
  end

  add('n', 1)
  add('rc', cost)
  add('rt', tokens)
  if family ~= '' then add('rf:' .. family, cost) end
  if not first_used then
    first_used = now
    set('fu', now)
  end
  added[#added + 1] = expiry
  added[#added + 1] = member
  return 0, 0, 0
end

local replies = {}
local index = 2
for request = 1, tonumber(ARGV[1]) do
  local code, reason, detail = admit(index)
  replies[3 * request - 2], replies[3 * request - 1], replies[3 * request] = code, reason, detail
  index = index + 16 + 4 * tonumber(ARGV[index + 10])
end
if #added > 0 then redis.call('ZADD', leases, unpack(added)) end
flush()
return replies
