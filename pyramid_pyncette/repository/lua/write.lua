-- Every other write, as a list of operations applied atomically.
-- KEYS: jobs, due, ids, then the other keys the ops may touch: '{ns}:queues',
-- '{ns}:locked', '{ns}:runs', task keys, the due set and id index of each queue.
-- ARGV: the task key prefix, JSON list of ops:
--   {"o": "put", "id", "task", "queue", "lock", "due", "doc", "replace"}
--   {"o": "del", "id"}
--   {"o": "plan", "id", "token", "action": "delete"|"settle"|"note", "values"}
--   {"o": "release", "id", "token", "due"}
--   {"o": "publish", "id", "token", "lock", "due"}: unlock a staged row (or lock it
--     as "lock" says: a daemon's lease the written job keeps), due at "due"
--   {"o": "unstage", "id", "token"[, "task", "queue", "lock", "due", "doc"]}: delete a
--     staged row, or put back the document it replaced
-- then optionally a channel to announce new jobs on, then optionally run
-- records to append to '{ns}:runs' (see append_runs).
-- A put or del with "old": true answers with the document it replaced or
-- deleted (0 if none) instead of 1/0; publish and unstage only touch a row
-- still locked by their token.
-- Returns one 1/0 per op (written / skipped), or {"missing", task, ...[, {queue,
-- ...}]} without writing anything when a job belongs to a task or a queue
-- whose keys were not passed.

local jobs, ids = KEYS[1], KEYS[3]
local prefix = ARGV[1]
local ops = cjson.decode(ARGV[2])

local declared = {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local missing, noted, missing_queues = {}, {}, {}
local function need(task)
  local key = prefix .. tostring(task)
  if not declared[key] and not noted[key] then
    noted[key] = true
    missing[#missing + 1] = tostring(task)
  end
end
local function need_queue(q)
  local keys = {due_key(q)}
  if q ~= DEFAULT_QUEUE then keys[2] = queue_key(q) end
  for _, key in ipairs(keys) do
    if not declared[key] and not noted[key] then
      noted[key] = true
      missing_queues[#missing_queues + 1] = q
      return
    end
  end
end
for _, op in ipairs(ops) do
  local raw = redis.call('HGET', jobs, op.id)
  if raw then
    need_queue(queue_of_raw(raw))
    if op.o ~= 'release' and op.o ~= 'publish' and not (op.o == 'plan' and op.action ~= 'delete') then
      need(decode(raw).task)
    end
  end
  if op.o == 'put' or (op.o == 'unstage' and op.doc) then
    need(op.task)
    need_queue(op.queue)
  end
end
if #missing > 0 or #missing_queues > 0 then
  table.insert(missing, 1, 'missing')
  if #missing_queues > 0 then missing[#missing + 1] = missing_queues end
  return missing
end

local function drop(id, doc)
  redis.call('HDEL', jobs, id)
  redis.call('ZREM', ids, id)
  redis.call('ZREM', prefix .. tostring(doc.task), id)
  leave_queue(id, queue_of(doc))
  redis.call('HDEL', LOCKED, id)
end

local function put(id, old, op)
  if old and old.task ~= op.task then redis.call('ZREM', prefix .. tostring(old.task), id) end
  if old and queue_of(old) ~= op.queue then leave_queue(id, queue_of(old)) end
  redis.call('HSET', jobs, id, op.doc)
  redis.call('ZADD', ids, 0, id)
  redis.call('ZADD', prefix .. op.task, 0, id)
  join_queue(id, op.queue)
  touch(op.queue)
  if op.due == NULL then
    redis.call('ZREM', due_key(op.queue), id)
  else
    redis.call('ZADD', due_key(op.queue), op.due, id)
  end
  track(id, op.lock, op.queue)
end

local results = {}
for i, op in ipairs(ops) do
  local id = op.id
  local done = 0
  if op.o == 'put' then
    local raw = op.old and redis.call('HGET', jobs, id)
    local old = fetch(jobs, id)
    if not old or op.replace then
      put(id, old, op)
      done = 1
    end
    if op.old then done = raw or 0 end
  elseif op.o == 'del' then
    local raw = op.old and redis.call('HGET', jobs, id)
    local old = fetch(jobs, id)
    if old then
      drop(id, old)
      done = 1
    end
    if op.old then done = raw or 0 end
  elseif op.o == 'publish' then
    local doc = fetch(jobs, id)
    if doc and doc.locked_by == op.token then
      if op.lock == NULL then doc.locked_by = nil else doc.locked_by = op.lock end
      if op.due == NULL then doc.due_at = nil else doc.due_at = op.due end
      save(jobs, id, doc)
      done = 1
    end
  elseif op.o == 'unstage' then
    local doc = fetch(jobs, id)
    if doc and doc.locked_by == op.token then
      if op.doc then put(id, doc, op) else drop(id, doc) end
      done = 1
    end
  elseif op.o == 'plan' then
    local doc = fetch(jobs, id)
    if doc and (op.token == NULL or doc.locked_by == op.token) then
      if op.action == 'delete' then
        drop(id, doc)
      else
        for k, v in pairs(op.values) do
          if v == NULL then doc[k] = nil else doc[k] = v end
        end
        if op.action == 'settle' then
          doc.locked_by = nil
          save(jobs, id, doc)
        else
          redis.call('HSET', jobs, id, encode(doc))
        end
      end
      done = 1
    end
  elseif op.o == 'release' then
    local doc = fetch(jobs, id)
    if doc and doc.locked_by == op.token then
      doc.locked_by = nil
      doc.due_at = op.due
      doc.attempts = math.max((doc.attempts or 0) - 1, 0)
      save(jobs, id, doc)
      done = 1
    end
  end
  results[i] = done
end
-- ARGV[3]: a channel to announce new jobs on (daemons subscribe to it).
if ARGV[3] and ARGV[3] ~= '' then
  for i, op in ipairs(ops) do
    local announced = op.o == 'put' or op.o == 'publish' or (op.o == 'unstage' and op.doc)
    if announced and results[i] == 1 then
      redis.call('PUBLISH', ARGV[3], '1')
      break
    end
  end
end
append_runs(TAG .. 'runs', 4)
fix_heads()
return results
