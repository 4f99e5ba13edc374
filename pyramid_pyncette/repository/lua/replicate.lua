-- Loaded first by the scripts that read the server's clock (TIME) and then
-- write: before Redis 5 such a script is refused unless it asks for its
-- effects, not its text, to be replicated (a replica running TIME again would
-- compute other leases). Redis 5 and later replicate effects anyway (the call
-- is then a no-op); the guard keeps the script working where it is absent.
if redis.replicate_commands then redis.replicate_commands() end
