-- Adds to an account's cost today. KEYS[1]: the day's counter. ARGV: cost, the account's daily
-- limit (-1: none), channel, account id. Crossing the limit tells every instance.
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 172800000)
if limit >= 0 and total >= limit and total - cost < limit then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return total
