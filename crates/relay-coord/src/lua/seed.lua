-- Writes a ledger read from the usage records, unless another instance already did.
-- ARGV: total cost, total tokens, first used (-1: never), period count, then per period
-- (name, start, cost), then bucket count, then per bucket its "end|requests|tokens|cost".
if redis.call('EXISTS', ledger) == 1 then return 0 end
redis.call('DEL', leases, buckets)
redis.call('HSET', ledger, 'tc', ARGV[1], 'tt', ARGV[2], 'n', '0', 'rc', '0', 'rt', '0')
if tonumber(ARGV[3]) >= 0 then redis.call('HSET', ledger, 'fu', ARGV[3]) end
local index = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', ledger, 'p:' .. ARGV[index] .. ':s', ARGV[index + 1], 'p:' .. ARGV[index], ARGV[index + 2])
  index = index + 3
end
local count = tonumber(ARGV[index])
for bucket = 1, count do
  local parts = split(ARGV[index + bucket])
  redis.call('RPUSH', buckets, ARGV[index + bucket])
  add('wr', tonumber(parts[2]))
  add('wt', tonumber(parts[3]))
  add('wc', tonumber(parts[4]))
end
flush()
return 1
