// The package as users load it: the ESM and the CommonJS builds export the same API.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";
import * as esm from "@xsolla-entitlements/client";

const require = createRequire(import.meta.url);

test("require() loads the CommonJS build with the same exports as import", () => {
  const cjs = require("@xsolla-entitlements/client") as typeof esm;
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.notEqual(cjs.EntitlementsClient, esm.EntitlementsClient);
  const client = new cjs.EntitlementsClient({ target: "127.0.0.1:1", retry: false });
  assert.equal(client.closed, false);
  void client.close();
  assert.equal(new cjs.RetryPolicy().maxAttempts, 5);
});
