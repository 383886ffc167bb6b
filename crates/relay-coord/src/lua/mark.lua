-- Marks an account's health for every instance. KEYS[1]: the account's marks (a hash).
-- ARGV: channel, account id, at (ms), the operator reset the marker has applied (ms), reason,
-- then (field, value) pairs kept at their maximum: `cool` and `f:<family>` (until, ms) and
-- `blocked` (1). Marks older than the reset are dropped first.
local marks = KEYS[1]
local at, reset = tonumber(ARGV[3]), tonumber(ARGV[4])
local function num(field)
  return tonumber(redis.call('HGET', marks, field) or '0') or 0
end
if num('at') <= reset then redis.call('DEL', marks) end
for index = 6, #ARGV, 2 do
  local field, value = ARGV[index], tonumber(ARGV[index + 1])
  if value > num(field) then
    redis.call('HSET', marks, field, string.format('%.0f', value))
  end
end
if at > num('at') then redis.call('HSET', marks, 'at', string.format('%.0f', at)) end
redis.call('HSET', marks, 'reason', ARGV[5])
-- Kept while blocked; otherwise a minute after the last cooldown ends.
if num('blocked') == 1 then
  redis.call('PERSIST', marks)
else
  local last = at
  for _, field in ipairs(redis.call('HKEYS', marks)) do
    if field == 'cool' or string.sub(field, 1, 2) == 'f:' then
      last = math.max(last, num(field))
    end
  end
  redis.call('PEXPIREAT', marks, string.format('%.0f', last + 60000))
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
