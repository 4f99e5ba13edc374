-- Claim: delete finished one-off runs, then lease up to `limit` due jobs.
-- KEYS: jobs, due, ids, the task keys of the finished jobs.
-- ARGV: now in microseconds ('' = the server's clock), limit, token, default
-- lease in microseconds, the task key prefix, then id1, token1, id2, token2...
-- of finished one-off runs to delete first (only while still locked by that
-- token). Returns {now, count of finished ids left alone because their task key
-- was not passed, those ids..., id1, document1 before the claim, id2, ...}.

local jobs, due, ids = KEYS[1], KEYS[2], KEYS[3]
local now = clock(ARGV[1])
local token = ARGV[3]
local default_lease = tonumber(ARGV[4])
local prefix = ARGV[5]
local declared = {}
for i = 4, #KEYS do declared[KEYS[i]] = true end

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
local finished, owners = {}, {}
for i = 6, #ARGV, 2 do
  finished[#finished + 1] = ARGV[i]
  owners[#owners + 1] = ARGV[i + 1]
end
local left, gone, by_task = {}, {}, {}
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
    if task_key and declared[task_key] then
      gone[#gone + 1] = id
      by_task[task_key] = by_task[task_key] or {}
      table.insert(by_task[task_key], id)
    else
      left[#left + 1] = id
    end
  end
end
if #gone > 0 then
  batch('HDEL', jobs, gone)
  batch('ZREM', due, gone)
  batch('ZREM', ids, gone)
  for task_key, members in pairs(by_task) do batch('ZREM', task_key, members) end
end

-- Due jobs: leased, and returned as they were before.
local found = {}
if tonumber(ARGV[2]) > 0 then
  found = redis.call('ZRANGEBYSCORE', due, '-inf', num(now), 'LIMIT', 0, tonumber(ARGV[2]))
end
local out = {num(now), #left}
for _, id in ipairs(left) do out[#out + 1] = id end
local lease_by = ',"locked_by":' .. cjson.encode(token) .. ',"attempts":'
local writes, scores = {}, {}
for k, raw in ipairs(fetch_all(found)) do
  local id = found[k]
  -- The usual document is leased by editing its text (see above on why that
  -- is safe); anything else is decoded and encoded again.
  local head, due_at, next_run_at, attempts, tail, lease
  if raw then
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
    scores[#scores + 1] = until_at
    scores[#scores + 1] = id
    out[#out + 1] = id
    out[#out + 1] = raw
  elseif raw then
    local ok, doc = pcall(decode, raw)
    if ok and type(doc) == 'table' then
      ok = pcall(function()
        doc.next_run_at = doc.next_run_at or doc.due_at
        doc.attempts = (tonumber(doc.attempts) or 0) + 1
        doc.locked_by = token
        doc.due_at = num(now + (tonumber(doc.lease_us) or default_lease))
      end)
    end
    if ok then
      save(jobs, due, id, doc)
      out[#out + 1] = id
      out[#out + 1] = raw
    else
      -- Unreadable: out of the due index (it would block every claim), reported
      -- to the caller with an empty document.
      redis.call('ZREM', due, id)
      out[#out + 1] = id
      out[#out + 1] = ''
    end
  else
    redis.call('ZREM', due, id)
  end
end
if #writes > 0 then
  batch('HSET', jobs, writes)
  batch('ZADD', due, scores)
end
return out
