-- The earliest due time and the server's clock.
-- KEYS: due, jobs. Returns {the due_at of the earliest due job ('' when there
-- is none or its document is unreadable), the server's clock}, both strings of
-- microseconds since the epoch: the clock is read by the same script, so a
-- caller can measure the wait by the server's clock alone.

local t = redis.call('TIME')
local now = t[1] .. string.sub('00000' .. t[2], -6)
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if #first == 0 then return {'', now} end
local raw = redis.call('HGET', KEYS[2], first[1])
if not raw then return {'', now} end
local ok, doc = pcall(cjson.decode, raw)
if not ok or type(doc) ~= 'table' or type(doc.due_at) ~= 'string' then return {'', now} end
return {doc.due_at, now}
