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
-- The pause marker as the job's definition holds it, and as the document
-- holds that definition (a JSON string inside the document).
local MARKER = '"paused":true'
local MARKER_IN_DOC = '\\"paused\\":true'
-- The head of a document as the encoders write it (FIELDS in common.lua):
-- due_at, locked_by and attempts read without decoding.
local HEAD = '^{"task":.-,"due_at":([^,]*),"next_run_at":[^,]*,"locked_by":(.-),"attempts":(%d+),'

local function is_queue_name(q)
  return type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$') ~= nil
end

local function is_paused(definition)
  -- The definition is decoded only when its text holds the marker (an
  -- argument may hold the same text).
  if type(definition) ~= 'string' or not string.find(definition, MARKER, 1, true) then
    return false
  end
  local ok, job = pcall(cjson.decode, definition)
  return ok and type(job) == 'table' and type(job.options) == 'table'
    and job.options.paused == true
end

-- {queue, paused, locked_by, due_at (text of digits or nil), attempts} of a
-- document, or nil when it cannot be read. The usual document is read as
-- text; anything else is decoded.
local function fields(raw)
  local due_at, locked_by, attempts = string.match(raw, HEAD)
  if due_at and not string.find(raw, MARKER_IN_DOC, 1, true) then
    local q = string.match(raw, ',"queue":"([%w_.%-]+)"}$', math.max(#raw - 80, 1))
    if q or not string.find(raw, ',"queue":', 1, true) then
      if due_at == 'null' then
        due_at = nil
      else
        due_at = string.match(due_at, '^"(%-?%d+)"$')
      end
      if locked_by == 'null' then
        locked_by = nil
      else
        local ok, text = pcall(cjson.decode, locked_by)
        locked_by = ok and text or locked_by
      end
      return q, false, locked_by, due_at, tonumber(attempts)
    end
  end
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' or type(doc.job) ~= 'string' then return nil end
  local locked = doc.locked_by
  if locked == NULL then locked = nil end
  local due = doc.due_at
  if due == NULL then due = nil end
  local tries = doc.attempts
  if type(tries) ~= 'number' then tries = 0 end
  return doc.queue, is_paused(doc.job), locked, due, tries
end

local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local entries = scan[2]
local by_queue, names = {}, {}
for i = 2, #entries, 2 do
  local q, paused, locked_by, due_at, attempts = fields(entries[i])
  if attempts then
    if not is_queue_name(q) then q = 'default' end
    local counts = by_queue[q]
    if not counts then
      counts = {0, 0, 0, 0, 0, false}
      by_queue[q] = counts
      names[#names + 1] = q
    end
    local staged = type(locked_by) == 'string'
      and string.sub(locked_by, 1, #STAGED_PREFIX) == STAGED_PREFIX
    local state
    if paused then
      state = 5
    elseif locked_by ~= nil and not staged then
      state = 2
    elseif due_at == nil then
      state = 4
    elseif attempts > 0 then
      state = 3
    else
      state = 1
    end
    counts[state] = counts[state] + 1
    if locked_by == nil and (state == 1 or state == 3) and tonumber(due_at) then
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
