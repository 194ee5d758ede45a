-- CheckEntitlements on a single server: the stored values of many (player, sku) pairs in one command
-- (server/store/batcher.py, `read_pairs`; on a cluster the players' keys live in many slots, and it sends one HMGET
-- per player instead).
--
-- KEYS[i]  a player's items hash (core.keys.items_key)
-- ARGV[i]  that player's skus, joined by "\n" (skus are identifiers: non-empty, no control character)
--
-- Returns one flat array, an entry per sku: KEYS[1]'s skus in order, then KEYS[2]'s, ...; nil where the sku is not
-- held, else the stored record's fields as integers {k, q, g, u, e, p, m} (server.store.records.StoredFields; nil
-- for an absent e, p or m), decoded here rather than by the service: the JSON is parsed in C, on Redis's core.
local out, n = {}, 0
for i, key in ipairs(KEYS) do
  local skus = {}
  for sku in string.gmatch(ARGV[i], '[^\n]+') do
    skus[#skus + 1] = sku
  end
  local values = redis.call('HMGET', key, unpack(skus))
  for j = 1, #skus do
    n = n + 1
    local raw = values[j]
    if raw then
      local r = cjson.decode(raw)
      out[n] = {r.k, r.q, r.g, r.u, r.e or false, r.p or false, r.m or false}
    else
      out[n] = false
    end
  end
end
return out
