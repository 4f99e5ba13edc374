-- Claim: delete finished one-off runs, append run records, then lease up to
-- `limit` due jobs, the earliest first across the claimed queues.
-- KEYS: jobs, then '{ns}:ids', '{ns}:queues', '{ns}:paused', '{ns}:locked',
-- '{ns}:runs', the due sets (and, but for the default queue, id indexes) of the
-- claimed queues and of the finished jobs' queues, the task keys of the
-- finished jobs.
-- ARGV: now in microseconds ('' = the server's clock), limit, token, default
-- lease in microseconds, the task key prefix, '*' to claim every known queue
-- (the default one and those in '{ns}:queues') or '' to claim the listed
-- ones, the number of listed queues, the queue names, the number of finished
-- one-off runs to delete first (only while still locked by that token), id1,
-- token1, id2, token2..., then run records (see append_runs).
-- Queues in '{ns}:paused' are not claimed. Returns {'missing', {queue, ...}}
-- without writing anything when a claimed queue's due set was not passed, else
-- {now, count of finished ids left alone because their keys were not passed,
-- those ids..., id1, document1 before the claim, id2, ...}.

local jobs, ids = KEYS[1], TAG .. 'ids'
local now = clock(ARGV[1])
local limit = tonumber(ARGV[2])
local token = ARGV[3]
local default_lease = tonumber(ARGV[4])
local prefix = ARGV[5]
local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end

-- The claimed queues: every known or the listed ones, less the paused ones.
local paused = {}
for _, q in ipairs(redis.call('SMEMBERS', TAG .. 'paused')) do paused[q] = true end
local names = {}
local listed = tonumber(ARGV[7])
for i = 8, 7 + listed do names[#names + 1] = ARGV[i] end
if ARGV[6] == '*' then
  names[#names + 1] = DEFAULT_QUEUE
  for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do names[#names + 1] = q end
end
local served, seen, missing = {}, {}, {}
for _, q in ipairs(names) do
  if is_queue_name(q) and not paused[q] and not seen[q] then
    seen[q] = true
    if declared[due_key(q)] then served[#served + 1] = q else missing[#missing + 1] = q end
  end
end
if #missing > 0 then return {'missing', missing} end

-- One call for many arguments (in slices: Lua's unpack has a limit).
local function batch(command, key, args)
  for first = 1, #args, 1000 do
    redis.call(command, key, unpack(args, first, math.min(first + 999, #args)))
  end
end
local function fetch_all(list)
  local found = {}
  for first = 1, #list, 1000 do
    local part = redis.call('HMGET', jobs, unpack(list, first, math.min(first + 999, #list)))
    for _, raw in ipairs(part) do found[#found + 1] = raw end
  end
  return found
end

-- Finished runs: deleted while still locked by the claim that ran them.
local count = tonumber(ARGV[8 + listed])
local finished, owners = {}, {}
for i = 9 + listed, 8 + listed + 2 * count, 2 do
  finished[#finished + 1] = ARGV[i]
  owners[#owners + 1] = ARGV[i + 1]
end
local left, gone, by_task, by_queue = {}, {}, {}, {}
for k, raw in ipairs(fetch_all(finished)) do
  local id, owner = finished[k], owners[k]
  local mine = false
  if raw then
    -- Documents are written by encode() or the Python twin of it: a job still
    -- locked by this owner carries exactly this text (quotes inside strings
    -- are escaped, so it cannot occur elsewhere). Otherwise decode to be sure.
    if string.find(raw, '"locked_by":' .. cjson.encode(owner) .. ',', 1, true) then
      mine = true
    else
      local ok, doc = pcall(decode, raw)
      mine = ok and type(doc) == 'table' and doc.locked_by == owner
    end
  end
  if mine then
    -- A task name without quotes or escapes is the text itself.
    local task = string.match(raw, '^{"task":"([^"\\]+)",')
    if not task then
      local ok, doc = pcall(decode, raw)
      task = ok and type(doc) == 'table' and doc.task
    end
    local task_key = task and prefix .. tostring(task)
    local q = queue_of_raw(raw)
    local known = declared[due_key(q)] and (q == DEFAULT_QUEUE or declared[queue_key(q)])
    if task_key and declared[task_key] and known then
      gone[#gone + 1] = id
      by_task[task_key] = by_task[task_key] or {}
      table.insert(by_task[task_key], id)
      by_queue[q] = by_queue[q] or {}
      table.insert(by_queue[q], id)
    else
      left[#left + 1] = id
    end
  end
end
if #gone > 0 then
  batch('HDEL', jobs, gone)
  batch('ZREM', ids, gone)
  batch('HDEL', LOCKED, gone)
  for task_key, members in pairs(by_task) do batch('ZREM', task_key, members) end
  for q, members in pairs(by_queue) do
    touch(q)
    batch('ZREM', due_key(q), members)
    if q ~= DEFAULT_QUEUE then
      batch('ZREM', queue_key(q), members)
      if redis.call('ZCARD', queue_key(q)) == 0 then redis.call('SREM', QUEUES, q) end
    end
  end
end
append_runs(TAG .. 'runs', 9 + listed + 2 * count)

-- Due jobs, the earliest first across the claimed queues (ties by id).
local found, found_in = {}, {}
if limit > 0 and #served == 1 then
  -- The usual daemon serves one queue (or only the default one exists).
  found = redis.call('ZRANGEBYSCORE', due_key(served[1]), '-inf', num(now), 'LIMIT', 0, limit)
  for k = 1, #found do found_in[k] = served[1] end
elseif limit > 0 then
  local candidates = {}
  for _, q in ipairs(served) do
    local due = redis.call('ZRANGEBYSCORE', due_key(q), '-inf', num(now), 'WITHSCORES',
                           'LIMIT', 0, limit)
    for i = 1, #due, 2 do
      candidates[#candidates + 1] = {due[i], tonumber(due[i + 1]), q}
    end
  end
  -- Ties by id in byte order (as a due set orders them), whatever the
  -- server's locale makes of Lua's string comparison.
  local function before(x, y)
    for i = 1, math.min(#x, #y) do
      local p, q = string.byte(x, i), string.byte(y, i)
      if p ~= q then return p < q end
    end
    return #x < #y
  end
  table.sort(candidates, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return before(a[1], b[1])
  end)
  local taken = {}
  for _, candidate in ipairs(candidates) do
    if #found >= limit then break end
    -- An id in two due sets (one of them stale) is taken once.
    if not taken[candidate[1]] then
      taken[candidate[1]] = true
      found[#found + 1] = candidate[1]
      found_in[#found] = candidate[3]
    end
  end
end

-- Leased, and returned as they were before.
local out = {num(now), #left}
for _, id in ipairs(left) do out[#out + 1] = id end
local lease_by = ',"locked_by":' .. cjson.encode(token) .. ',"attempts":'
local writes, scores, locks = {}, {}, {}
for k, raw in ipairs(fetch_all(found)) do
  local id, q = found[k], found_in[k]
  -- The usual document of this queue is leased by editing its text (see above
  -- on why that is safe); anything else is decoded and encoded again.
  local head, due_at, next_run_at, attempts, tail, lease
  if raw and in_queue(raw, q) then
    head, due_at, next_run_at, attempts, tail = string.match(raw,
      '^({"task":.-),"due_at":("%d+"),"next_run_at":([^,]*),"locked_by":.-,"attempts":(%d+),' ..
      '("last_run_at":.*)$')
  end
  if head and (next_run_at == 'null' or string.match(next_run_at, '^"%d+"$')) then
    local text = string.match(tail, ',"lease_us":([^,]*),"job":"')
    if text == 'null' then
      lease = default_lease
    elseif text and string.match(text, '^%d+$') then
      lease = tonumber(text)
    end
  end
  if lease then
    local until_at = num(now + lease)
    if next_run_at == 'null' then next_run_at = due_at end
    writes[#writes + 1] = id
    writes[#writes + 1] = head .. ',"due_at":"' .. until_at .. '","next_run_at":' ..
      next_run_at .. lease_by .. num(tonumber(attempts) + 1) .. ',' .. tail
    scores[q] = scores[q] or {}
    table.insert(scores[q], until_at)
    table.insert(scores[q], id)
    locks[#locks + 1] = id
    locks[#locks + 1] = q
    out[#out + 1] = id
    out[#out + 1] = raw
  elseif raw then
    local ok, doc = pcall(decode, raw)
    if ok and type(doc) == 'table' and queue_of(doc) ~= q then
      -- The document says the job is not of this queue: the entry is stale.
      leave_queue(id, q)
    else
      if ok and type(doc) == 'table' then
        ok = pcall(function()
          doc.next_run_at = doc.next_run_at or doc.due_at
          doc.attempts = (tonumber(doc.attempts) or 0) + 1
          doc.locked_by = token
          doc.due_at = num(now + (tonumber(doc.lease_us) or default_lease))
        end)
      else
        ok = false
      end
      if ok then
        save(jobs, id, doc)
        out[#out + 1] = id
        out[#out + 1] = raw
      else
        -- Unreadable: out of the due index (it would block every claim), reported
        -- to the caller with an empty document.
        touch(q)
        redis.call('ZREM', due_key(q), id)
        out[#out + 1] = id
        out[#out + 1] = ''
      end
    end
  else
    touch(q)
    redis.call('ZREM', due_key(q), id)
  end
end
if #writes > 0 then
  batch('HSET', jobs, writes)
  batch('HSET', LOCKED, locks)
  for q, members in pairs(scores) do
    touch(q)
    batch('ZADD', due_key(q), members)
  end
end
fix_heads()
return out
