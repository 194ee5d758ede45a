-- Revoke (after index.lua and prologue.lua): removes the sku completely, whatever its kind or quantity.
if not current_raw then
  -- Nothing held: nothing changes and nothing is written to the ledger, but the key remembers the answer.
  return remember('{}')
end
put_item(sku, nil, nil, now)
return commit(current_raw, nil, {})
