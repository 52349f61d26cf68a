-- Compare-and-set one record: the primitive behind every read-check-write of a record.
-- KEYS[1]: record key; ARGV[1]: the version read (the stored text), "" for "absent";
-- ARGV[2]: the new text, "" to delete. Returns 1 if written, 0 if another write came first.
local current = redis.call("GET", KEYS[1])
if (current or "") ~= ARGV[1] then
  return 0
end
if ARGV[2] == "" then
  redis.call("DEL", KEYS[1])
else
  -- a record written with an expiry (a session) keeps it through every change
  redis.call("SET", KEYS[1], ARGV[2], "KEEPTTL")
end
return 1
