-- Helpers shared by claim.lua, extend.lua and write.lua: the store loads this
-- text in front of each of them (see pyramid_pyncette/repository/redis.py).
--
-- A job document is one JSON object whose fields are written in the order of
-- FIELDS by encode(), the twin of the Python encoder, so that claim.lua can
-- recognise and edit the usual document as text. Times are strings of integer
-- microseconds since the epoch; num() prints 17 significant digits, so such
-- a time computed as a number prints exactly and without an exponent.

local NULL = cjson.null
local FIELDS = {'task', 'due_at', 'next_run_at', 'locked_by', 'attempts',
                'last_run_at', 'last_status', 'last_error', 'lease_us', 'job'}

local function num(x)
  return string.format('%.17g', x)
end

local function decode(raw)
  local doc = cjson.decode(raw)
  for k, v in pairs(doc) do
    if v == NULL then doc[k] = nil end
  end
  return doc
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

local function save(jobs, due, id, doc)
  redis.call('HSET', jobs, id, encode(doc))
  if doc.due_at then
    redis.call('ZADD', due, doc.due_at, id)
  else
    redis.call('ZREM', due, id)
  end
end

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
