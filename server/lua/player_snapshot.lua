-- One player's items and version, read together (a watch's PlayerSnapshot).
-- KEYS[1]: the player's items hash, KEYS[2]: its version. Reply: {flat HGETALL, version ("0" when never changed)}.
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]) or '0'}
