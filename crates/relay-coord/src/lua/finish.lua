-- Ends leases of one key, in order: each gives back its reservation (unless it had already
-- expired) and, when its request settled, adds what it really used. One script for a batch's
-- finishes of a key that count in the same periods and window: a script's fixed cost, and
-- those, are sent once. ARGV: the count, window ms (-1: none), bucket width, period count, then
-- per period (name, start); then per lease: now, lease member, settled (1/0), cost, tokens.
local count, window, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local periods = tonumber(ARGV[4])
local first = 5 + 2 * periods
local exists = redis.call('EXISTS', ledger) == 1
for lease = 0, count - 1 do
  local index = first + 5 * lease
  local now, member, settled = tonumber(ARGV[index]), ARGV[index + 1], ARGV[index + 2]
  if redis.call('ZREM', leases, member) == 1 then unreserve(member) end
  if settled == '1' and exists then
    local cost, tokens = tonumber(ARGV[index + 3]), tonumber(ARGV[index + 4])
    add('tc', cost)
    add('tt', tokens)
    for period = 0, periods - 1 do
      add_period(ARGV[5 + 2 * period], tonumber(ARGV[6 + 2 * period]), cost)
    end
    if window >= 0 then
      trim_window(window, now)
      add_window(width, now, 0, tokens, cost)
    end
  end
end
-- A ledger Redis lost is seeded again from the records: nothing is written to it here.
if exists then flush() end
return 1
