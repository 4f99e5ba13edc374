-- Heartbeat: renew the leases still held.
-- KEYS: jobs, then the due sets of the queues the leased jobs may be in.
-- ARGV: now ('' = the server's clock), JSON [[id, token, µs], ...].
-- Returns the ids whose lease is still held (and was renewed), or {'missing',
-- {queue, ...}} without writing anything when a held job's queue's due set
-- was not passed.

local jobs = KEYS[1]
local now = clock(ARGV[1])
local declared, missing, noted = {}, {}, {}
for i = 2, #KEYS do declared[KEYS[i]] = true end
local items, docs = cjson.decode(ARGV[2]), {}
for k, item in ipairs(items) do
  local token = item[2]
  if token == NULL then token = nil end
  local doc = fetch(jobs, item[1])
  if doc and doc.locked_by == token then
    docs[k] = doc
    local q = queue_of(doc)
    if not declared[due_key(q)] and not noted[q] then
      noted[q] = true
      missing[#missing + 1] = q
    end
  end
end
if #missing > 0 then return {'missing', missing} end
local held = {}
for k, item in ipairs(items) do
  local doc = docs[k]
  if doc then
    -- The lock is unchanged, so '{ns}:locked' is too.
    doc.due_at = num(now + item[3])
    redis.call('HSET', jobs, item[1], encode(doc))
    touch(queue_of(doc))
    redis.call('ZADD', due_key(queue_of(doc)), doc.due_at, item[1])
    held[#held + 1] = item[1]
  end
end
fix_heads()
return held
