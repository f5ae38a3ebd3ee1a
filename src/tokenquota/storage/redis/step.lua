-- One atomic step of an enforcing operation (docs/redis.md has the key layout).
--
-- On a single Redis the whole operation is one step: idempotency, every
-- check, every counter and hold, the grant burn and the ledger event happen
-- here or not at all. On a cluster the service runs one step per hash slot
-- (ascending slot order, the ledger step last) and undoes the earlier steps
-- when a later one refuses; each step is still all-or-nothing for its keys.
--
-- ARGV[1] is a JSON spec built by tokenquota.storage.redis.ops (layout.Step);
-- keys are named by their index in KEYS. "now" comes from the service's clock,
-- never from Redis, so every backend decides against the same instant. ARGV[2]
-- is the ledger event's body, kept out of the spec: it is stored as it came.
--
-- The spec is shaped for a cheap decode (cjson costs about 0.1 us per value
-- and about 0.6 us per object or array it builds a Lua table for; the decode
-- was the largest single part of a consume's time in Redis): a check is one
-- positional array, "incr" and "cap" are flat lists of 3 and 4 values an
-- operation, and the configuration token and the event's place are plain
-- values of the spec (cfgk, cfgv; evs, evn, evm: stream, shard, shards).
--
-- Reply: { status, event id, readings, wallets, burned }, where status is
-- ok | denied | replay | state | conflict | lost | stale; a replay returns the
-- stored readings and wallets, the stored fingerprint in place of "burned",
-- then the stored decision (older keyspaces), plan and earlier steps' reads.

local spec = cjson.decode(ARGV[1])
local now = spec.now
local dry = spec.dry

local function num(v)
  if v then return tonumber(v) end
  return 0
end

-- Integers as decimal text: Lua numbers are doubles, and the default
-- tostring would print large ones in exponent form.
-- Zero (no holds, no expiry) is the common case, and string.format is one of
-- the costlier calls in the script.
local function int(v)
  if v == 0 then return '0' end
  return string.format('%d', v)
end

-- Live holds of one (series, metric): their sum and the last expiry.
-- Lapsed ones are dropped (a write, so not on a dry read). One read of the
-- whole set, once per step: the checks of one series (its minute, hour and
-- day) share their holds, and nothing this step writes comes before the last
-- read.
local held_of = {}
local function holds(hz, ha)
  if hz == nil then return 0, 0 end
  local known = held_of[hz]
  if known then return known[1], known[2] end
  local all = redis.call('ZRANGE', KEYS[hz], 0, -1, 'WITHSCORES')
  local sum, last = 0, 0
  if #all > 0 then
    local ids, gone = {}, {}
    for i = 1, #all, 2 do
      local score = tonumber(all[i + 1])
      if score > now then
        ids[#ids + 1] = all[i]
        if score > last then last = score end
      else
        gone[#gone + 1] = all[i]
      end
    end
    if #gone > 0 and not dry then
      redis.call('ZREM', KEYS[hz], unpack(gone))
      redis.call('HDEL', KEYS[ha], unpack(gone))
    end
    if #ids > 0 then
      local amounts = redis.call('HMGET', KEYS[ha], unpack(ids))
      for _, a in ipairs(amounts) do sum = sum + num(a) end
    end
  end
  held_of[hz] = { sum, last }
  return sum, last
end

-- Whether a + b <= 2^63 - 1, exactly, for counters given as decimal text.
-- Lua numbers are doubles (exact only to 2^53), so each number is split into
-- its last nine digits and the rest, two parts a double holds exactly.
local function split9(v)
  local n = #v
  if n <= 9 then return 0, tonumber(v) end
  return tonumber(string.sub(v, 1, n - 9)), tonumber(string.sub(v, n - 8))
end
local function fits(a, b)
  if string.sub(a, 1, 1) == '-' then return true end -- below 0: a + b < b, which fits
  local ah, al = split9(a)
  local bh, bl = split9(b)
  local hi, lo = ah + bh, al + bl
  if lo >= 1000000000 then hi, lo = hi + 1, lo - 1000000000 end
  return hi < 9223372036 or (hi == 9223372036 and lo <= 854775807)
end

-- contract §3: a request fits when the limit is not yet reached and the
-- request does not cross it (the same rule as domain.windows.admits).
local function admits(used, amount, limit)
  return used < limit and used + amount <= limit
end

-- A grant counts from its start until its expiry (-1: never expires).
local function live(w, j)
  return w.from[j] <= now and (w.exp[j] < 0 or now < w.exp[j])
end

-- Every number handed to a command goes as text (see int above); the spec
-- sends scores and field values as strings for the same reason.

-- phase 0: what must hold before anything is read ---------------------------
local seq, cfg
if spec.seq then
  if spec.cfgk then -- one call for both: a shard's keys share its hash tag
    local got = redis.call('MGET', KEYS[spec.seq], KEYS[spec.cfgk])
    seq, cfg = got[1], got[2]
  else
    seq = redis.call('GET', KEYS[spec.seq])
  end
  if not seq then
    -- The sequence is set when the store opens or is rebuilt; without it this
    -- Redis has lost its data and would count from zero.
    return { 'lost', 0, '', '', '' }
  end
elseif spec.cfgk then
  cfg = redis.call('GET', KEYS[spec.cfgk])
end
if spec.cfgk and (cfg or '0') ~= spec.cfgv then
  -- The limits this request was planned with changed since: plan again.
  return { 'stale', 0, '', '', '' }
end
if spec.idem then
  local found = redis.call('HMGET', KEYS[spec.idem.k], 'fp', 'eid', 'd', 'rd', 'wl', 'p', 'pre')
  if found[1] then
    return { 'replay', found[2] or '0', found[4] or '', found[5] or '', found[1], found[3] or '',
      found[6] or '', found[7] or '' }
  end
end
if spec.state then
  local state = redis.call('HGET', KEYS[spec.state.k], 'state')
  if state ~= spec.state.want then
    return { 'state', 0, state or '', '', '' }
  end
end
-- The 63-bit bound (domain/bounds.py): key, field, amount, name per lifetime
-- counter this step adds to (they are not in "incr": phase 2 adds them); a
-- refusal names the first that overflows and changes nothing, and comes before
-- a refusal by the checks, as on every backend.
local cap = spec.cap or {}
local function over_bound()
  for i = 1, #cap, 4 do
    local current = redis.call('HGET', KEYS[cap[i]], cap[i + 1]) or '0'
    -- Below 10^18 each (18 digits at most), the sum is below 2^63 - 1: no need to add.
    if (#current > 18 or #cap[i + 2] > 18) and not fits(current, cap[i + 2]) then
      return cap[i + 3]
    end
  end
end
-- An admitted step that writes nothing before phase 2 learns the bound from its
-- HINCRBYs there (Redis refuses one that would overflow, and the step takes
-- back the ones before it), which saves a read per lifetime counter; a dry
-- step, one that drops holds or leases first, and a refusal read it here.
local deferred = not (dry or spec.unhold or spec.unlease)
if not deferred then
  local name = over_bound()
  if name then return { 'too_large', 0, '', '', name } end
end
if not dry and spec.unhold then
  for _, op in ipairs(spec.unhold) do
    redis.call('ZREM', KEYS[op[1]], op[3])
    redis.call('HDEL', KEYS[op[2]], op[3])
  end
end
if not dry and spec.unlease then
  for _, op in ipairs(spec.unlease) do
    redis.call('ZREM', KEYS[op[1]], op[2])
  end
end

-- phase 1: read every check and decide ----------------------------------------
local denied = false
local conflict = false
local readings = {}
-- Per window check: the usage read and each bucket's value (threshold alerts).
local sums, vals = {}, {}
local alerting = spec.alerts ~= nil
-- A check is { 'l', key, amount, limit, enforced } for the leases of a
-- series, else { 'w' or 'g', counter key, holds zset, holds hash, amount,
-- limit, enforced, guard's used, guard's held, bucket... } ('g': a guard, which
-- must find what the decision read).
local checks = spec.checks or {}
-- Holds are rare: when none of the checks' hold sets exists (one EXISTS for all
-- of them), every check reads none, which is what reading each empty set finds,
-- without a ZRANGE per series (about 1.5 us each of a consume's script).
do
  local zsets, seen = {}, {}
  for _, c in ipairs(checks) do
    local hz = c[3]
    if c[1] ~= 'l' and hz and not seen[hz] then
      seen[hz] = true
      zsets[#zsets + 1] = KEYS[hz]
    end
  end
  if #zsets > 0 and redis.call('EXISTS', unpack(zsets)) == 0 then
    local none = { 0, 0 }
    for hz in pairs(seen) do held_of[hz] = none end
  end
end
for i, c in ipairs(checks) do
  local text
  if c[1] == 'l' then
    local z = KEYS[c[2]]
    if not dry then redis.call('ZREMRANGEBYSCORE', z, '-inf', int(now)) end
    local count = redis.call('ZCOUNT', z, '(' .. int(now), '+inf')
    local first = 0
    if count > 0 then
      first = tonumber(redis.call('ZRANGEBYSCORE', z, '(' .. int(now), '+inf',
        'WITHSCORES', 'LIMIT', 0, 1)[2])
    end
    if c[5] == 1 and not admits(count, c[3], c[4]) then denied = true end
    text = int(count) .. ';0;' .. int(first)
  else
    local values, joined
    local used = 0
    local nf = #c - 9
    if nf == 1 then -- a calendar window: one bucket; its value is the text (no table)
      local got = redis.call('HGET', KEYS[c[2]], c[10])
      if got then used = tonumber(got) else got = '0' end
      joined = got
      if alerting then values = { got } end
    elseif nf > 0 then
      values = {}
      local got = redis.call('HMGET', KEYS[c[2]], unpack(c, 10))
      for j = 1, nf do
        local v = num(got[j])
        used = used + v
        values[j] = got[j] or '0' -- the stored text: exact, where int(v) is not past 2^53
      end
    else
      values = {}
    end
    local held, last = holds(c[3], c[4])
    if c[1] == 'g' then
      if used ~= c[8] or held ~= c[9] then conflict = true end
    elseif c[7] == 1 and not admits(used + held, c[5], c[6]) then
      denied = true
    end
    text = (joined or table.concat(values, ',')) .. ';' .. int(held) .. ';' .. int(last)
    sums[i], vals[i] = used, values
  end
  readings[i] = text
end

-- Prepaid wallets: live grants in burn order, less the credits held.
local wallets = {}
local burns = {}
for i, w in ipairs(spec.wallets or {}) do
  local rem = {}
  local available = 0
  if #w.ids > 0 then
    local got = redis.call('HMGET', KEYS[w.g], unpack(w.ids))
    for j = 1, #w.ids do
      rem[j] = num(got[j])
      if live(w, j) then available = available + rem[j] end
    end
  end
  local held = holds(w.hz, w.ha)
  if w.e == 1 and w.n > 0 and w.n > available - held then denied = true end
  local parts = {}
  for j = 1, #rem do parts[j] = int(rem[j]) end
  wallets[i] = table.concat(parts, ',') .. ';' .. int(held)
  burns[i] = rem
end

local rd = table.concat(readings, '|')
local wl = table.concat(wallets, '|')
if (conflict or denied) and deferred then
  local name = over_bound()
  if name then return { 'too_large', 0, '', '', name } end
end
if conflict then return { 'conflict', 0, rd, wl, '' } end
if denied then return { 'denied', 0, rd, wl, '' } end
if dry then return { 'ok', 0, rd, wl, '' } end

-- phase 2: admitted, so write everything -------------------------------------
-- The lifetime counters first: when one would pass 2^63 - 1 (read above unless
-- deferred), the ones added before it are taken back and nothing else is written.
for i = 1, #cap, 4 do
  local added = redis.pcall('HINCRBY', KEYS[cap[i]], cap[i + 1], cap[i + 2])
  if type(added) == 'table' and added.err then
    for j = 1, i - 4, 4 do
      redis.call('HINCRBY', KEYS[cap[j]], cap[j + 1], '-' .. cap[j + 2])
    end
    if string.find(added.err, 'overflow', 1, true) then
      return { 'too_large', 0, '', '', cap[i + 3] }
    end
    return redis.error_reply(added.err)
  end
end
local incr = spec.incr or {}
for i = 1, #incr, 3 do
  redis.call('HINCRBY', KEYS[incr[i]], incr[i + 1], incr[i + 2])
end
for _, op in ipairs(spec.hold or {}) do
  redis.call('ZADD', KEYS[op[1]], op[4], op[3])
  redis.call('HSET', KEYS[op[2]], op[3], op[5])
end
for _, op in ipairs(spec.lease or {}) do
  redis.call('ZADD', KEYS[op[1]], op[3], op[2])
end
for _, op in ipairs(spec.extend or {}) do
  redis.call('ZADD', KEYS[op[1]], 'XX', op[3], op[2])
end
-- The ledger shard's index of live holds (storage/redis/holds.py, for /metrics),
-- in the step of the hold's record: { key, id, expiry } lists it, { key, id } drops it.
if spec.live then
  local l = spec.live
  if l[3] then redis.call('ZADD', KEYS[l[1]], l[3], l[2]) else redis.call('ZREM', KEYS[l[1]], l[2]) end
end
-- Burn credits, earliest expiry first (the order the service sent).
local burned = {}
for i, w in ipairs(spec.wallets or {}) do
  local left = w.burn
  for j = 1, #w.ids do
    if left <= 0 then break end
    if live(w, j) then
      local take = math.min(left, burns[i][j])
      if take > 0 then
        redis.call('HINCRBY', KEYS[w.g], w.ids[j], int(-take))
        burned[#burned + 1] = w.g .. ',' .. w.ids[j] .. ',' .. int(take)
        left = left - take
      end
    end
  end
end

local eid = '0' -- as text: every use below sends or returns it
if spec.evs then
  -- Ids grow with time (in 4 microsecond ticks, so that id * shards stays
  -- an exact double) and within a shard with every event, so the ledger
  -- in SQL reads in time order across shards too.
  local base = math.max(math.floor(now / 4), tonumber(seq) + 1)
  redis.call('SET', KEYS[spec.seq], int(base))
  eid = int(base * spec.evm + spec.evn)
  redis.call('XADD', KEYS[spec.evs], '*', 'id', eid, 'e', ARGV[2])
end
-- Threshold alerts (domain/alerts.py), only as the step commits: an entry is
-- { check, mark, row, bucket, rolling seconds } for a check of this step, added
-- when the usage read goes from below the mark to at or above it (a limit of 0
-- has mark 0: reached by the first usage), or { 0, 0, row } for one decided
-- already from an earlier step's reading (a cluster). The mover writes the rows.
if spec.alerts then
  local stream = KEYS[spec.alerts.s]
  for _, e in ipairs(spec.alerts.e) do
    if e[1] == 0 then
      redis.call('XADD', stream, '*', 'a', e[3], 'u', '', 'r', '')
    else
      local c = spec.checks[e[1]]
      local before = sums[e[1]]
      local after = before + c[5]
      local hit
      if e[2] == 0 then hit = before == 0 and after > 0 else hit = before < e[2] and e[2] <= after end
      if hit then
        local reset = ''
        if e[5] > 0 then -- rolling: when the oldest bucket holding usage leaves the window
          local oldest = e[4]
          for j = 10, #c do
            local b = tonumber(c[j])
            if b < oldest and num(vals[e[1]][j - 9]) > 0 then oldest = b end
          end
          reset = int(oldest + e[5])
        end
        redis.call('XADD', stream, '*', 'a', e[3], 'u', int(after), 'r', reset)
      end
    end
  end
end
-- The first answer's inputs, in the step that charges (no crash can come
-- between): the plan the service sent, what this step and the earlier ones
-- read. A retry recomputes the answer from them (storage/redis/answers.py).
if spec.idem then
  redis.call('HSET', KEYS[spec.idem.k], 'fp', spec.idem.fp, 'eid', eid,
    'rd', rd, 'wl', wl, 'p', spec.idem.p or '', 'pre', spec.idem.pre or '')
end
if spec.record then
  local r = spec.record
  redis.call('HSET', KEYS[r.k], unpack(r.fields))
  if spec.evs then redis.call('HSET', KEYS[r.k], 'eid', eid) end
  -- A commit that is one step keeps its answer's inputs too (see idem above).
  if r.p then redis.call('HSET', KEYS[r.k], 'p', r.p, 'rd', rd, 'wl', wl) end
end
return { 'ok', eid, rd, wl, table.concat(burned, '|') }
