-- An instance's allotment of a busy key: one lease that reserves what the instance's requests
-- under it have in flight and, where the ledger has ample room, a spare from which the instance
-- admits more requests without asking Redis. Each call settles what those requests used since
-- the call before, ends the allotment's lease and takes the next.
-- ARGV: now, the lease held ('' none), the next lease's expiry, the next lease with the spare,
-- the next lease without it ('' when it would hold nothing), the family ('' none), the ratio,
-- in-flight places, cost, tokens, carried places, cost, tokens, spare places, cost, tokens,
-- settled cost, settled tokens,
-- period count, then per period (name, start) the settled cost counts in; then the limits as
-- admit.lua has them (the lifetime and the window are not looked at: keys with those get no
-- allotment).
-- The in-flight amounts and the carry (part of the spare the lease held, which the instance may
-- go on admitting from while this call is under way) are reserved whatever the limits say: they
-- come out of the lease this call ends. The carry counts as spare. The new spare is reserved
-- only if `ratio` times it fits in every limit beside everything else reserved and spent: close to a limit, every request is admitted on its own, and spares held
-- elsewhere shrink at their holder's next call.
-- Returns {-1} when the ledger is not in Redis (nothing written), else {1} if the spare was
-- reserved, {0} if not.
if redis.call('EXISTS', ledger) == 0 then return {-1} end

local now = tonumber(ARGV[1])
expire_leases(now)
local held = ARGV[2]
if held ~= '' and redis.call('ZREM', leases, held) == 1 then unreserve(held) end

local family, ratio = ARGV[6], tonumber(ARGV[7])
reserve(tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), family)
local carry_slots, carry_cost, carry_tokens = tonumber(ARGV[11]), tonumber(ARGV[12]),
  tonumber(ARGV[13])
reserve(carry_slots, carry_cost, carry_tokens, family)
add('sn', carry_slots)
add('sc', carry_cost)
add('st', carry_tokens)
local slots, spare_cost, spare_tokens = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local cost, tokens = tonumber(ARGV[17]), tonumber(ARGV[18])
add('tc', cost)
add('tt', tokens)
local at = 20
for _ = 1, tonumber(ARGV[19]) do
  add_period(ARGV[at], tonumber(ARGV[at + 1]), cost)
  at = at + 2
end

local function exceeds(used, more, limit)
  return limit >= 0 and more > 0 and (used >= limit or used + more > limit)
end

local concurrency, quota, total = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
local fits = slots + spare_cost + spare_tokens > 0
  and not exceeds(num('n'), ratio * slots, concurrency)
  and not exceeds(num('tt') + num('rt'), ratio * spare_tokens, quota)
  and not exceeds(num('tc') + num('rc'), ratio * spare_cost, total)
at = at + 5
for _ = 1, tonumber(ARGV[at - 1]) do
  if fits then
    local reserved = num('rc')
    if ARGV[at + 3] ~= '' then reserved = num('rf:' .. ARGV[at + 3]) end
    fits = not exceeds(period_cost(ARGV[at], tonumber(ARGV[at + 1])) + reserved,
      ratio * spare_cost, tonumber(ARGV[at + 2]))
  end
  at = at + 4
end

local member = ARGV[5]
if fits then
  reserve(slots, spare_cost, spare_tokens, family)
  add('sn', slots)
  add('sc', spare_cost)
  add('st', spare_tokens)
  member = ARGV[4]
end
if member ~= '' then redis.call('ZADD', leases, ARGV[3], member) end
flush()
if fits then return {1} end
return {0}
