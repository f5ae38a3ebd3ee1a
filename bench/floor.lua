-- The Redis floor (bench/floors.py): one consume's shape with nothing of tokenquota.
-- Check the four counters (three in the user's hash, one in the company's), bump
-- them, append one event. KEYS: user hash, company hash, event stream.
-- ARGV: amount, limit, event body.
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local fields = {{1, 'minute'}, {1, 'hour'}, {1, 'day'}, {2, 'month'}}
for _, f in ipairs(fields) do
  if tonumber(redis.call('HGET', KEYS[f[1]], f[2]) or '0') + n > limit then return 0 end
end
for _, f in ipairs(fields) do redis.call('HINCRBY', KEYS[f[1]], f[2], n) end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
return 1
