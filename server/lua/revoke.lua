-- Revoke (after prologue.lua): removes the sku completely, whatever its kind or quantity.
if not current_raw then
  -- Nothing held: nothing changes and nothing is written to the ledger, but the key remembers the answer.
  return remember('{}')
end
redis.call('HDEL', KEYS[1], sku)
redis.call('ZREM', KEYS[2], sku)
return commit(current_raw, nil, {})
