-- CheckEntitlements on a single server: the stored values of many (player, sku) pairs in one command
-- (server/store/batcher.py, `read_pairs`; on a cluster the players' keys live in many slots, and it sends one HMGET
-- per player instead).
--
-- KEYS[i]  a player's items hash (core.keys.items_key)
-- ARGV[i]  that player's skus, joined by "\n" (skus are identifiers: non-empty, no control character)
--
-- Returns one flat array: the values of KEYS[1]'s skus in order, then KEYS[2]'s, ...; nil where the sku is not held.
local out, n = {}, 0
for i, key in ipairs(KEYS) do
  local skus = {}
  for sku in string.gmatch(ARGV[i], '[^\n]+') do
    skus[#skus + 1] = sku
  end
  local values = redis.call('HMGET', key, unpack(skus))
  for j = 1, #skus do
    n = n + 1
    out[n] = values[j]
  end
end
return out
