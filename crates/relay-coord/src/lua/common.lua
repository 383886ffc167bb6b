-- Shared by the ledger scripts. KEYS[1]: the ledger hash, KEYS[2]: its leases (a sorted set of
-- "id|cost|tokens|family" by expiry), KEYS[3]: its rate-window buckets (a list of
-- "end|requests|tokens|cost", oldest first). Numbers are integers below 2^53, written with %.0f.
local ledger, leases, buckets = KEYS[1], KEYS[2], KEYS[3]

-- The ledger's fields as this script sees them: each read from Redis at most once, every
-- change kept here and written back by one HSET in flush(), which every script calls before it
-- returns. A batch of N requests costs a few calls, not a few per request.
local cached, dirty = {}, {}

local function num(field)
  local value = cached[field]
  if value == nil then
    value = tonumber(redis.call('HGET', ledger, field) or '0') or 0
    cached[field] = value
  end
  return value
end

local function set(field, value)
  cached[field] = value
  dirty[field] = true
end

-- Exact for the integers the ledger holds (below 2^53); a sum below zero is clamped to zero,
-- one above 2^62 to 2^62, so a field always reads back as a 64-bit integer.
local function add(field, amount)
  if amount ~= 0 then
    set(field, math.min(math.max(num(field) + amount, 0), 4611686018427387904))
  end
end

local function flush()
  local fields = {}
  for field in pairs(dirty) do
    fields[#fields + 1] = field
    fields[#fields + 1] = string.format('%.0f', cached[field])
  end
  if #fields > 0 then redis.call('HSET', ledger, unpack(fields)) end
end

local function split(text)
  local parts = {}
  for part in string.gmatch(text, '([^|]*)|?') do
    parts[#parts + 1] = part
  end
  return parts
end

-- Reserves request places, cost and tokens (negative amounts give them back).
local function reserve(slots, cost, tokens, family)
  add('n', slots)
  add('rc', cost)
  add('rt', tokens)
  if family ~= '' then add('rf:' .. family, cost) end
end

-- Gives back what a lease reserved. A request's lease is "id|cost|tokens|family" and holds one
-- place; an instance's allotment (allot.lua) adds "|places|spare places|spare cost|spare
-- tokens", its spare also counted in the fields sn, sc and st.
local function unreserve(member)
  local parts = split(member)
  local cost, tokens, family = tonumber(parts[2]) or 0, tonumber(parts[3]) or 0, parts[4] or ''
  reserve(-(tonumber(parts[5]) or 1), -cost, -tokens, family)
  add('sn', -(tonumber(parts[6]) or 0))
  add('sc', -(tonumber(parts[7]) or 0))
  add('st', -(tonumber(parts[8]) or 0))
end

-- Leases whose holder stopped renewing them (a crashed instance) give back their reservation.
local function expire_leases(now)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    redis.call('ZREM', leases, member)
    unreserve(member)
  end
end

-- A period's cost so far, zero once the period has turned over.
local function period_cost(name, start)
  if num('p:' .. name .. ':s') ~= start then return 0 end
  return num('p:' .. name)
end

local function add_period(name, start, cost)
  if num('p:' .. name .. ':s') ~= start then
    set('p:' .. name .. ':s', start)
    set('p:' .. name, 0)
  end
  add('p:' .. name, cost)
end

-- Drops the buckets wholly outside the window.
local function trim_window(window, now)
  while true do
    local first = redis.call('LINDEX', buckets, 0)
    if not first then return end
    local parts = split(first)
    if tonumber(parts[1]) > now - window then return end
    redis.call('LPOP', buckets)
    add('wr', -tonumber(parts[2]))
    add('wt', -tonumber(parts[3]))
    add('wc', -tonumber(parts[4]))
  end
end

local function add_window(width, now, requests, tokens, cost)
  local last = redis.call('LINDEX', buckets, -1)
  local parts = last and split(last)
  if parts and now < tonumber(parts[1]) then
    redis.call('LSET', buckets, -1, string.format('%.0f|%.0f|%.0f|%.0f', tonumber(parts[1]),
      tonumber(parts[2]) + requests, tonumber(parts[3]) + tokens, tonumber(parts[4]) + cost))
  else
    local ends = now - (now % width) + width
    redis.call('RPUSH', buckets, string.format('%.0f|%.0f|%.0f|%.0f', ends, requests, tokens, cost))
  end
  add('wr', requests)
  add('wt', tokens)
  add('wc', cost)
end
