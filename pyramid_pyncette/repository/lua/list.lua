-- One page of jobs in id order.
-- KEYS: an id index (all scores 0), jobs. ARGV: ZRANGEBYLEX start, count.
-- Returns {id1, document1, id2, document2, ...}.

local found = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(found) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
end
return out
