-- One chunk of the job documents counted by queue and state (queue_stats).
-- KEYS: jobs. ARGV: the HSCAN cursor, the chunk size.
-- Returns {next cursor, {queue, scheduled, running, retrying, failed, paused,
-- oldest due time of its jobs waiting for a daemon or '', queue, ...}}.
--
-- The states follow Job.state: paused (the options carry the pause marker),
-- running (locked, not by a transaction's staging), failed (no due time),
-- retrying (attempts counted), scheduled. A chunk holds a bounded number of
-- documents, so the server is never held up for long; an unreadable document
-- is left out (its job is parked when claimed, and counted then).

local NULL = cjson.null
local STAGED_PREFIX = 'staged:'
local MARKER = '"paused":true'

local function is_queue_name(q)
  return type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$') ~= nil
end

local function is_paused(definition)
  -- The marker is written compactly; the definition is decoded only when the
  -- text holds it (an argument may hold the same text).
  if type(definition) ~= 'string' or not string.find(definition, MARKER, 1, true) then
    return false
  end
  local ok, job = pcall(cjson.decode, definition)
  return ok and type(job) == 'table' and type(job.options) == 'table'
    and job.options.paused == true
end

local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local entries = scan[2]
local by_queue, names = {}, {}
for i = 2, #entries, 2 do
  local ok, doc = pcall(cjson.decode, entries[i])
  if ok and type(doc) == 'table' and type(doc.job) == 'string' then
    local q = doc.queue
    if not is_queue_name(q) then q = 'default' end
    local counts = by_queue[q]
    if not counts then
      counts = {0, 0, 0, 0, 0, false}
      by_queue[q] = counts
      names[#names + 1] = q
    end
    local locked_by, due_at = doc.locked_by, doc.due_at
    local locked = locked_by ~= nil and locked_by ~= NULL
    local staged = locked and type(locked_by) == 'string'
      and string.sub(locked_by, 1, #STAGED_PREFIX) == STAGED_PREFIX
    local state
    if is_paused(doc.job) then
      state = 5
    elseif locked and not staged then
      state = 2
    elseif due_at == nil or due_at == NULL then
      state = 4
    elseif type(doc.attempts) == 'number' and doc.attempts > 0 then
      state = 3
    else
      state = 1
    end
    counts[state] = counts[state] + 1
    if not locked and (state == 1 or state == 3) and tonumber(due_at) then
      local oldest = counts[6]
      if not oldest or tonumber(due_at) < tonumber(oldest) then counts[6] = due_at end
    end
  end
end

local out = {}
for _, q in ipairs(names) do
  local counts = by_queue[q]
  out[#out + 1] = q
  for s = 1, 5 do out[#out + 1] = counts[s] end
  out[#out + 1] = counts[6] or ''
end
return {scan[1], out}
