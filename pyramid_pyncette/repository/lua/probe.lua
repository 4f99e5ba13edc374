-- Whether one partition holds a job due at `now` in the claimed queues: a
-- claim over several partitions asks every partition at once (one pipeline)
-- and runs claim.lua only where something is due.
-- KEYS: jobs, '{ns}:queues', '{ns}:paused', the due sets of the claimed queues.
-- ARGV: now in microseconds ('' = the server's clock), '*' for every known
-- queue (the default one and those in '{ns}:queues') or '' for the listed
-- ones, then the queue names listed.
-- Paused queues do not count. Returns {now, 1 when a job is due else 0}, or
-- {'missing', {queue, ...}} when a claimed queue's due set was not passed.

local tag = string.sub(KEYS[1], 1, -5)
local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The same rules as claim.lua (see common.lua for the key names).
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', KEYS[3])) do paused[q] = true end
local names = {}
for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
if ARGV[2] == '*' then
  names[#names + 1] = 'default'
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[2])) do names[#names + 1] = q end
end
local due, missing, seen = 0, {}, {}
for _, q in ipairs(names) do
  local valid = type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$')
  if valid and not paused[q] and not seen[q] then
    seen[q] = true
    local key = tag .. 'due'
    if q ~= 'default' then key = key .. ':' .. q end
    if declared[key] then
      if due == 0 then
        local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        if #head > 0 and tonumber(head[2]) <= now then due = 1 end
      end
    else
      missing[#missing + 1] = q
    end
  end
end
if #missing > 0 then return {'missing', missing} end
return {string.format('%.17g', now), due}
