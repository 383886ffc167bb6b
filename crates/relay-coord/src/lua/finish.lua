-- Ends a lease: gives back its reservation (unless it had already expired) and, when the
-- request settled, adds what it really used. ARGV: now, lease member, settled (1/0), cost,
-- tokens, window ms (-1: none), bucket width, period count, then per period (name, start).
if redis.call('ZREM', leases, ARGV[2]) == 1 then unreserve(ARGV[2]) end
if ARGV[3] ~= '1' or redis.call('EXISTS', ledger) == 0 then return 0 end
local now, cost, tokens = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
add('tc', cost)
add('tt', tokens)
local window, width = tonumber(ARGV[6]), tonumber(ARGV[7])
local index = 9
for _ = 1, tonumber(ARGV[8]) do
  add_period(ARGV[index], tonumber(ARGV[index + 1]), cost)
  index = index + 2
end
if window >= 0 then
  trim_window(window, now)
  add_window(width, now, 0, tokens, cost)
end
return 1
