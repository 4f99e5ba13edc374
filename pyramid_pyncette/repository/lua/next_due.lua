-- The earliest due time of the claimed queues and the server's clock.
-- KEYS: jobs, '{ns}:queues', '{ns}:paused', the due sets of the claimed queues
-- and, in a store of several partitions, '{ns}:heads' (read instead of every
-- due set when every queue is claimed).
-- ARGV: '*' for every known queue (the default one and those in
-- '{ns}:queues') or '' for the listed ones, then the queue names listed.
-- Paused queues do not count. Returns {the due_at of the earliest due job (''
-- when there is none or its document is unreadable), the server's clock}, both
-- strings of microseconds since the epoch: the clock is read by the same
-- script, so a caller can measure the wait by the server's clock alone. Returns
-- {'missing', {queue, ...}} when a claimed queue's due set was not passed.

local tag = string.sub(KEYS[1], 1, -5)
local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local t = redis.call('TIME')
local now = t[1] .. string.sub('00000' .. t[2], -6)

-- The same rules as claim.lua (see common.lua for the key names).
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', KEYS[3])) do paused[q] = true end
local names = {}
for i = 2, #ARGV do names[#names + 1] = ARGV[i] end
-- Heads that are gone while due sets are not empty: read every due set (the
-- next probe rebuilds them).
local by_heads = ARGV[1] == '*' and declared[tag .. 'heads']
  and (redis.call('EXISTS', tag .. 'heads') == 1
       or (redis.call('ZCARD', tag .. 'due') == 0 and redis.call('SCARD', KEYS[2]) == 0))
if by_heads then
  -- The partition's heads (see common.lua) in due order: the first queue that
  -- is not paused holds the earliest job.
  for _, q in ipairs(redis.call('ZRANGE', tag .. 'heads', 0, -1)) do names[#names + 1] = q end
elseif ARGV[1] == '*' then
  names[#names + 1] = 'default'
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[2])) do names[#names + 1] = q end
end
local first, score, missing, seen = nil, nil, {}, {}
for _, q in ipairs(names) do
  local valid = type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$')
  if valid and not paused[q] and not seen[q] then
    seen[q] = true
    local key = tag .. 'due'
    if q ~= 'default' then key = key .. ':' .. q end
    if declared[key] then
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #head > 0 and (not score or tonumber(head[2]) < score) then
        first, score = head[1], tonumber(head[2])
      end
      if by_heads and first then break end
    else
      missing[#missing + 1] = q
    end
  end
end
if #missing > 0 then return {'missing', missing} end
if not first then return {'', now} end
local raw = redis.call('HGET', KEYS[1], first)
if not raw then return {'', now} end
local ok, doc = pcall(cjson.decode, raw)
if not ok or type(doc) ~= 'table' or type(doc.due_at) ~= 'string' then return {'', now} end
return {doc.due_at, now}
