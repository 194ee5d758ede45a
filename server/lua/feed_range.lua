-- One partition of a project's change feed, read atomically: what tells whether history after a position was
-- removed (its last generated id, the greatest id deleted, its first entry's id, its length, the entries ever added),
-- and up to ARGV[3] of its entries after ARGV[1] (exclusive) up to ARGV[2] (inclusive). A watch checks a cursor
-- against the first, and catches up with the entries, in the same step, so that trimming cannot remove an entry
-- between the check and the read.
-- KEYS[1]: the partition's stream. ARGV[1]: the id after which to read, ARGV[2]: the last id to read, ARGV[3]:
-- how many entries at most (0: none). Reply: {last, max deleted, first ("0-0" when empty), length, entries added,
-- entries}; a missing stream is {"0-0", "0-0", "0-0", 0, 0, {}}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', '0-0', '0-0', 0, 0, {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted, first, length, added = '0-0', '0-0', '0-0', 0, 0
for i = 1, #info, 2 do
  local name, value = info[i], info[i + 1]
  if name == 'last-generated-id' then
    last = value
  elseif name == 'max-deleted-entry-id' then
    deleted = value
  elseif name == 'first-entry' and value then
    first = value[1]
  elseif name == 'length' then
    length = value
  elseif name == 'entries-added' then
    added = value
  end
end
local entries = {}
local count = tonumber(ARGV[3])
if count > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', count)
end
return {last, deleted, first, length, added, entries}
