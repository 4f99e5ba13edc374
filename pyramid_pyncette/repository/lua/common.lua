-- Helpers shared by claim.lua, extend.lua and write.lua: the store loads this
-- text in front of each of them (see pyramid_pyncette/repository/redis.py).
--
-- A job document is one JSON object whose fields are written in the order of
-- FIELDS by encode(), the twin of the Python encoder, so that claim.lua can
-- recognise and edit the usual document as text. Times are strings of integer
-- microseconds since the epoch; num() prints 17 significant digits, so such
-- a time computed as a number prints exactly and without an exponent.
--
-- Every script is called with the jobs key of one partition first
-- ('{ns}:jobs', or '{ns:p}:jobs' in a namespace of several partitions); the
-- other keys of that partition are named after its tag ('{ns}:' or
-- '{ns:p}:'), so all share one slot. A script only touches those of them the
-- caller declared in KEYS.

local NULL = cjson.null
local FIELDS = {'task', 'due_at', 'next_run_at', 'locked_by', 'attempts',
                'last_run_at', 'last_status', 'last_error', 'lease_us', 'job', 'queue'}

local TAG = string.sub(KEYS[1], 1, -5)
local QUEUES, LOCKED = TAG .. 'queues', TAG .. 'locked'

-- A store of several partitions declares '{ns:p}:heads' (ZSET: queue -> the
-- earliest due time in its due set): a probe over every queue reads it
-- instead of every due set. Scripts note the queues whose due sets they
-- change (touch) and bring their heads up to date before returning
-- (fix_heads).
local HEADS = TAG .. 'heads'
local heads_on = false
for i = 2, #KEYS do
  if KEYS[i] == HEADS then heads_on = true end
end
local touched = {}
local function touch(q)
  touched[q] = true
end
local DEFAULT_QUEUE = 'default'
local STAGED_PREFIX = 'staged:'

local function num(x)
  return string.format('%.17g', x)
end

-- A queue name (see jobs.QUEUE_NAME): anything else counts as the default
-- queue, so a document holding garbage there never names a key.
local function is_queue_name(q)
  return type(q) == 'string' and #q <= 64 and string.match(q, '^[%w][%w_.%-]*$') ~= nil
end

local function queue_of(doc)
  if is_queue_name(doc.queue) then return doc.queue end
  return DEFAULT_QUEUE
end

-- The due set of a queue: '{ns}:due' for the default queue (the key every
-- job used before there were queues), '{ns}:due:<queue>' for the others.
local due_keys, queue_keys, queue_tails = {}, {}, {}
local function due_key(q)
  local key = due_keys[q]
  if not key then
    if q == DEFAULT_QUEUE then key = TAG .. 'due' else key = TAG .. 'due:' .. q end
    due_keys[q] = key
  end
  return key
end

-- The id index of a queue other than the default one.
local function queue_key(q)
  local key = queue_keys[q]
  if not key then
    key = TAG .. 'queue:' .. q
    queue_keys[q] = key
  end
  return key
end

local function decode(raw)
  local doc = cjson.decode(raw)
  for k, v in pairs(doc) do
    if v == NULL then doc[k] = nil end
  end
  return doc
end

-- The queue of a stored document, read from its text when it ends the usual
-- way (no decoding), else decoded; an unreadable document counts as the
-- default queue's.
local function queue_of_raw(raw)
  -- Only the end is searched: a queue name has at most 64 characters.
  local q = string.match(raw, ',"queue":"([%w_.%-]+)"}$', math.max(#raw - 80, 1))
  if q and is_queue_name(q) then return q end
  if not string.find(raw, ',"queue":', 1, true) then return DEFAULT_QUEUE end
  local ok, doc = pcall(decode, raw)
  if ok and type(doc) == 'table' then return queue_of(doc) end
  return DEFAULT_QUEUE
end

-- Whether a stored document is one of queue q's: the usual document ends
-- with its queue, which is checked in place.
local function in_queue(raw, q)
  local tail = queue_tails[q]
  if not tail then
    tail = ',"queue":"' .. q .. '"}'
    queue_tails[q] = tail
  end
  if string.find(raw, tail, #raw - #tail + 1, true) then return true end
  return queue_of_raw(raw) == q
end

local function fetch(jobs, id)
  local raw = redis.call('HGET', jobs, id)
  if not raw then return nil end
  return decode(raw)
end

local function encode(doc)
  local parts = {}
  for i, name in ipairs(FIELDS) do
    local v = doc[name]
    local text
    if v == nil then
      text = 'null'
    elseif type(v) == 'number' then
      text = num(v)
    else
      text = cjson.encode(v)
    end
    parts[i] = '"' .. name .. '":' .. text
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- Keep '{ns}:locked' (id -> queue, or 'staged:' .. queue for a row an open
-- transaction staged) in step with a job's lock: queue_stats counts from it.
local function track(id, locked_by, q)
  if locked_by == nil or locked_by == NULL then
    redis.call('HDEL', LOCKED, id)
  elseif string.sub(tostring(locked_by), 1, #STAGED_PREFIX) == STAGED_PREFIX then
    redis.call('HSET', LOCKED, id, STAGED_PREFIX .. q)
  else
    redis.call('HSET', LOCKED, id, q)
  end
end

local function fix_heads()
  if not heads_on then return end
  for q in pairs(touched) do
    local head = redis.call('ZRANGE', due_key(q), 0, 0, 'WITHSCORES')
    if #head > 0 then
      redis.call('ZADD', HEADS, head[2], q)
    else
      redis.call('ZREM', HEADS, q)
    end
  end
  touched = {}
end

local function save(jobs, id, doc)
  local q = queue_of(doc)
  touch(q)
  redis.call('HSET', jobs, id, encode(doc))
  if doc.due_at then
    redis.call('ZADD', due_key(q), doc.due_at, id)
  else
    redis.call('ZREM', due_key(q), id)
  end
  track(id, doc.locked_by, q)
end

-- A job leaves its queue: out of its due set and id index; a queue other
-- than the default one that holds no job any more leaves '{ns}:queues'.
local function leave_queue(id, q)
  touch(q)
  redis.call('ZREM', due_key(q), id)
  if q ~= DEFAULT_QUEUE then
    redis.call('ZREM', queue_key(q), id)
    if redis.call('ZCARD', queue_key(q)) == 0 then redis.call('SREM', QUEUES, q) end
  end
end

local function join_queue(id, q)
  if q ~= DEFAULT_QUEUE then
    redis.call('ZADD', queue_key(q), 0, id)
    redis.call('SADD', QUEUES, q)
  end
end

-- Append run records to the run history stream: ARGV from `first` on holds
-- the stream's approximate length cap, then one JSON text per record.
-- A cap written 'u<cap>' is followed by a time in microseconds and then pairs
-- (position in the batch, record): the entries get the ids
-- <time>-<position> (or, when the stream already holds an entry at or past
-- that time, its time and sequence numbers after it). A store of several
-- partitions has a stream per partition and merges them in the order of
-- these ids, so the records of one batch keep their order across partitions.
local function append_runs(runs_key, first)
  if not ARGV[first] then return end
  local cap = ARGV[first]
  if string.sub(cap, 1, 1) ~= 'u' then
    for i = first + 1, #ARGV do
      redis.call('XADD', runs_key, 'MAXLEN', '~', cap, '*', 'run', ARGV[i])
    end
    return
  end
  cap = string.sub(cap, 2)
  local at, base = tonumber(ARGV[first + 1]), 0
  local last = redis.call('XREVRANGE', runs_key, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local head, tail = string.match(last[1][1], '^(%d+)-(%d+)$')
    if tonumber(head) >= at then at, base = tonumber(head), tonumber(tail) + 1 end
  end
  for i = first + 2, #ARGV, 2 do
    local id = num(at) .. '-' .. num(base + tonumber(ARGV[i]))
    redis.call('XADD', runs_key, 'MAXLEN', '~', cap, id, 'run', ARGV[i + 1])
  end
end

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
