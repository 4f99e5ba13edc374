-- Heartbeat: renew the leases still held.
-- KEYS: jobs, due. ARGV: now ('' = the server's clock), JSON [[id, token, µs], ...].
-- Returns the ids whose lease is still held (and was renewed).

local jobs, due = KEYS[1], KEYS[2]
local now = clock(ARGV[1])
local held = {}
for _, item in ipairs(cjson.decode(ARGV[2])) do
  local id, token = item[1], item[2]
  if token == NULL then token = nil end
  local doc = fetch(jobs, id)
  if doc and doc.locked_by == token then
    doc.due_at = num(now + item[3])
    save(jobs, due, id, doc)
    held[#held + 1] = id
  end
end
return held
