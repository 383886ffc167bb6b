-- Counts a failed credential from one client address on every instance. KEYS[1]: its counter,
-- KEYS[2]: its block. ARGV: now, window ms, failures that block, block ms, channel, address.
-- Reaching the count blocks the address and tells every instance.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if failures < tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '|' .. string.format('%.0f', tonumber(ARGV[1]) + tonumber(ARGV[4])))
return 1
