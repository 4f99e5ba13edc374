-- The jobs due at `now` in one partition's claimed queues, the earliest
-- first: a claim over several partitions asks every partition at once (one
-- pipeline), picks the earliest due jobs across them and runs claim.lua only
-- in the partitions that hold some of them. Reads only, but for rebuilding
-- heads that are missing.
-- KEYS: jobs, '{ns}:queues', '{ns}:paused', the due sets of the claimed queues
-- and, in a store of several partitions, '{ns}:heads' (read instead of every
-- due set when every queue is claimed).
-- ARGV: now in microseconds ('' = the server's clock), the most jobs to list,
-- '*' for every known queue (the default one and those in '{ns}:queues') or
-- '' for the listed ones, then the queue names listed.
-- Paused queues do not count. Returns {now, id1, due time1, id2, ...} (up to
-- the most jobs to list per queue), or {'missing', {queue, ...}} when a claimed
-- queue's due set was not passed.

local tag = string.sub(KEYS[1], 1, -5)

local function rebuild_head(prefix, q)
  local key = prefix .. 'due'
  if q ~= 'default' then key = key .. ':' .. q end
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #head > 0 then redis.call('ZADD', prefix .. 'heads', head[2], q) end
end
local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = tonumber(ARGV[2])

-- The same rules as claim.lua (see common.lua for the key names).
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', KEYS[3])) do paused[q] = true end
local upto = string.format('%.17g', now)
local names = {}
for i = 4, #ARGV do names[#names + 1] = ARGV[i] end
-- Heads that are gone (evicted, deleted) while due sets are not empty would
-- hide the partition's due jobs: read every due set instead, and rebuild them.
local rebuild = ARGV[3] == '*' and declared[tag .. 'heads']
  and redis.call('EXISTS', tag .. 'heads') == 0
  and (redis.call('ZCARD', tag .. 'due') > 0 or redis.call('SCARD', KEYS[2]) > 0)
if ARGV[3] == '*' and declared[tag .. 'heads'] and not rebuild then
  -- The partition's heads (see common.lua) name the queues with a job due.
  for _, q in ipairs(redis.call('ZRANGEBYSCORE', tag .. 'heads', '-inf', upto)) do
    names[#names + 1] = q
  end
elseif ARGV[3] == '*' then
  names[#names + 1] = 'default'
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[2])) do names[#names + 1] = q end
end
local out, missing, seen = {upto}, {}, {}
for _, q in ipairs(names) do
  local valid = type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$')
  -- A rebuild needs the paused queues' due sets too (their heads are kept).
  if valid and (rebuild or not paused[q]) and not seen[q] then
    seen[q] = true
    local key = tag .. 'due'
    if q ~= 'default' then key = key .. ':' .. q end
    if declared[key] then
      -- Counting first costs less than a range that finds nothing (the usual case).
      if not paused[q] and redis.call('ZCOUNT', key, '-inf', upto) > 0 then
        local due = redis.call('ZRANGEBYSCORE', key, '-inf', upto, 'WITHSCORES', 'LIMIT', 0, limit)
        for i = 1, #due do out[#out + 1] = due[i] end
      end
    else
      missing[#missing + 1] = q
    end
  end
end
if #missing > 0 then return {'missing', missing} end
if rebuild then
  for q in pairs(seen) do rebuild_head(tag, q) end
end
return out
