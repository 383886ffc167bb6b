-- Ends leases of one key, in order: each gives back its reservation (unless it had already
-- expired) and, when its request settled, adds what it really used. ARGV: the count, then per
-- lease: now, lease member, settled (1/0), cost, tokens, window ms (-1: none), bucket width,
-- period count, then per period (name, start). One script for all of a batch's finishes of a
-- key: a script's fixed cost is paid once.
local index = 2
for _ = 1, tonumber(ARGV[1]) do
  local now, member, settled = tonumber(ARGV[index]), ARGV[index + 1], ARGV[index + 2]
  local cost, tokens = tonumber(ARGV[index + 3]), tonumber(ARGV[index + 4])
  local window, width = tonumber(ARGV[index + 5]), tonumber(ARGV[index + 6])
  local periods, first = tonumber(ARGV[index + 7]), index + 8
  index = first + 2 * periods
  if redis.call('ZREM', leases, member) == 1 then unreserve(member) end
  if settled == '1' and redis.call('EXISTS', ledger) == 1 then
    add('tc', cost)
    add('tt', tokens)
    for period = 0, periods - 1 do
      add_period(ARGV[first + 2 * period], tonumber(ARGV[first + 2 * period + 1]), cost)
    end
    if window >= 0 then
      trim_window(window, now)
      add_window(width, now, 0, tokens, cost)
    end
  end
end
flush()
return 1
