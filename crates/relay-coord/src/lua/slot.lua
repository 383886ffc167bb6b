-- Takes a place on an account for one request if it has room. KEYS[1]: the account's slots (a
-- sorted set of members by expiry). ARGV: now, member, expiry, limit. Places whose instance
-- stopped renewing them (it died) are freed first.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
