-- Admits requests of one key under the same limits, in order: each sees what the ones before
-- it reserved. One script for a batch's admissions of a key: a script's fixed cost, and the
-- limits, are sent once. ARGV: the count, concurrency, token quota, total cost, lifetime after
-- first use (-1: none), period count, then per period (name, start, limit, family or ''), then
-- window ms (-1: none), bucket width, rate requests, rate tokens, rate cost (-1: none); then
-- per request: now, lease member, lease expiry, cost, tokens, family.
-- Returns {-1} when the ledger is not in Redis (seed it, then ask again), else the refusals as
-- three numbers each (empty: all admitted): the request's position (from 1), the reason
-- (1 expired, 2 concurrency, 3 token quota, 4 total cost, 5 period, 6/7/8 rate
-- requests/tokens/cost) and a detail (the period's index, or retry after ms).
if redis.call('EXISTS', ledger) == 0 then return {-1} end

local count = tonumber(ARGV[1])
local concurrency, quota, total, lifetime =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local periods = {}
local at = 7
for period = 1, tonumber(ARGV[6]) do
  periods[period] = {ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3]}
  at = at + 4
end
local window, width = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
local rate_requests, rate_tokens, rate_cost =
  tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
local first_request = at + 5

local function exceeds(used, more, limit)
  return more > 0 and (used >= limit or used + more > limit)
end

local expired_until = nil
local first_used = redis.call('HGET', ledger, 'fu')
if first_used then first_used = tonumber(first_used) end
-- The leases admitted, as ZADD's score, member pairs: added in one call at the end.
local added = {}

-- The request whose arguments start at `index`: nil admitted, else reason and detail.
local function admit(index)
  local now = tonumber(ARGV[index])
  local cost, tokens, family = tonumber(ARGV[index + 3]), tonumber(ARGV[index + 4]), ARGV[index + 5]
  if expired_until == nil or now > expired_until then
    expire_leases(now)
    expired_until = now
  end
  if lifetime >= 0 and first_used and now >= first_used + lifetime then return 1, 0 end
  if concurrency >= 0 and num('n') >= concurrency then return 2, 0 end
  if quota >= 0 and exceeds(num('tt') + num('rt'), tokens, quota) then return 3, 0 end
  if total >= 0 and exceeds(num('tc') + num('rc'), cost, total) then return 4, 0 end
  for position, period in ipairs(periods) do
    local reserved = num('rc')
    if period[4] ~= '' then reserved = num('rf:' .. period[4]) end
    if exceeds(period_cost(period[1], period[2]) + reserved, cost, period[3]) then
      return 5, position
    end
  end
  if window >= 0 then
    trim_window(window, now)
    local first = redis.call('LINDEX', buckets, 0)
    local retry_after = 1000
    if first then
      retry_after = math.max(tonumber(split(first)[1]) + window - now, 1)
    end
    if rate_requests >= 0 and num('wr') >= rate_requests then return 6, retry_after end
    if rate_tokens >= 0 and exceeds(num('wt') + num('rt'), tokens, rate_tokens) then
      return 7, retry_after
    end
    if rate_cost >= 0 and exceeds(num('wc') + num('rc'), cost, rate_cost) then
      return 8, retry_after
    end
    add_window(width, now, 1, 0, 0)
  end

  reserve(1, cost, tokens, family)
  if not first_used then
    first_used = now
    set('fu', now)
  end
  added[#added + 1] = ARGV[index + 2]
  added[#added + 1] = ARGV[index + 1]
  return nil
end

local refusals = {}
for request = 1, count do
  local reason, detail = admit(first_request + 6 * (request - 1))
  if reason then
    refusals[#refusals + 1] = request
    refusals[#refusals + 1] = reason
    refusals[#refusals + 1] = detail
  end
end
if #added > 0 then redis.call('ZADD', leases, unpack(added)) end
flush()
return refusals
