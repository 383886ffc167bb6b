-- ARGV: now, lease member, lease expiry, cost, tokens, family, concurrency, token quota,
-- total cost, lifetime after first use (-1: none), period count, then per period (name, start,
-- limit, family or ''), then window ms (-1: none), bucket width, rate requests, rate tokens,
-- rate cost (-1: none).
-- Returns {0} admitted, {9} the ledger is not in Redis (seed it, then ask again), or
-- {1, reason, detail}: 1 expired, 2 concurrency, 3 token quota, 4 total cost,
-- 5 period (detail: its index), 6/7/8 rate requests/tokens/cost (detail: retry after ms).
if redis.call('EXISTS', ledger) == 0 then return {9} end
local now = tonumber(ARGV[1])
local member, expiry = ARGV[2], tonumber(ARGV[3])
local cost, tokens, family = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local concurrency, quota, total, lifetime =
  tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
expire_leases(now)

local function exceeds(used, more, limit)
  return more > 0 and (used >= limit or used + more > limit)
end

local first_used = redis.call('HGET', ledger, 'fu')
if lifetime >= 0 and first_used and now >= tonumber(first_used) + lifetime then
  return {1, 1, 0}
end
if concurrency >= 0 and num('n') >= concurrency then return {1, 2, 0} end
if quota >= 0 and exceeds(num('tt') + num('rt'), tokens, quota) then return {1, 3, 0} end
if total >= 0 and exceeds(num('tc') + num('rc'), cost, total) then return {1, 4, 0} end

local index = 12
for period = 1, tonumber(ARGV[11]) do
  local name, start, limit, period_family =
    ARGV[index], tonumber(ARGV[index + 1]), tonumber(ARGV[index + 2]), ARGV[index + 3]
  index = index + 4
  local reserved = num('rc')
  if period_family ~= '' then reserved = num('rf:' .. period_family) end
  if exceeds(period_cost(name, start) + reserved, cost, limit) then return {1, 5, period} end
end

local window, width = tonumber(ARGV[index]), tonumber(ARGV[index + 1])
local rate_requests, rate_tokens, rate_cost =
  tonumber(ARGV[index + 2]), tonumber(ARGV[index + 3]), tonumber(ARGV[index + 4])
if window >= 0 then
  trim_window(window, now)
  local first = redis.call('LINDEX', buckets, 0)
  local retry_after = 1000
  if first then
    retry_after = math.max(tonumber(split(first)[1]) + window - now, 1)
  end
  if rate_requests >= 0 and num('wr') >= rate_requests then return {1, 6, retry_after} end
  if rate_tokens >= 0 and exceeds(num('wt') + num('rt'), tokens, rate_tokens) then
    return {1, 7, retry_after}
  end
  if rate_cost >= 0 and exceeds(num('wc') + num('rc'), cost, rate_cost) then
    return {1, 8, retry_after}
  end
  add_window(width, now, 1, 0, 0)
end

add('n', 1)
add('rc', cost)
add('rt', tokens)
if family ~= '' then add('rf:' .. family, cost) end
if not first_used then redis.call('HSET', ledger, 'fu', string.format('%.0f', now)) end
redis.call('ZADD', leases, expiry, member)
return {0}
