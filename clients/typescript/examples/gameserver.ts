// A game server's use of the entitlement service, to copy from: check an item, grant a purchase once (whatever
// retries happen), and follow the Xsolla order until its items are in the player's inventory.
//
//   ENTITLEMENTS_TARGET=entitlements.internal:50051 ENTITLEMENTS_API_KEY=... PLAYER_ID=p-1 ORDER_ID=123 \
//     node dist-tools/examples/gameserver.js
//
// Environment: ENTITLEMENTS_TARGET (host:port, default 127.0.0.1:50051), ENTITLEMENTS_API_KEY (a key with the
// read and write scopes), ENTITLEMENTS_PROJECT_ID (the Xsolla project; optional when the key or the service
// names one), ENTITLEMENTS_CA_FILE (TLS with this CA; ENTITLEMENTS_TLS=1 for TLS with the system's roots;
// plaintext otherwise, as for a local `make run`), ENTITLEMENTS_CERT_FILE and ENTITLEMENTS_KEY_FILE (mTLS),
// PLAYER_ID (default player-42), ORDER_ID (the order just created for the player, default 10000001),
// ORDER_TOKEN (the player's Pay Station token, optional), ORDER_MAX_WAIT (seconds, as "30s"; default 30s).
// It exits 0 when every call answered, 1 otherwise. The same environment drives the other clients' examples.
import {
  ConflictError,
  durationFromMs,
  EntitlementKind,
  EntitlementsClient,
  type EntitlementsError,
  isEntitlementsError,
  OrderStatus,
  tlsFromFiles,
} from "@xsolla-entitlements/client";

function clientFromEnv(env: NodeJS.ProcessEnv): EntitlementsClient {
  const tls =
    env["ENTITLEMENTS_CA_FILE"] || env["ENTITLEMENTS_CERT_FILE"]
      ? tlsFromFiles({
          caFile: env["ENTITLEMENTS_CA_FILE"] || undefined,
          certFile: env["ENTITLEMENTS_CERT_FILE"] || undefined,
          keyFile: env["ENTITLEMENTS_KEY_FILE"] || undefined,
        })
      : env["ENTITLEMENTS_TLS"] === "1";
  return new EntitlementsClient({
    target: env["ENTITLEMENTS_TARGET"] ?? "127.0.0.1:50051",
    apiKey: env["ENTITLEMENTS_API_KEY"],
    tls,
    projectId: BigInt(env["ENTITLEMENTS_PROJECT_ID"] ?? 0),
    timeoutMs: 3000, // a game server's tick budget, retries included
  });
}

/** Lets the player into the VIP lounge only when they hold an active vip_pass. */
async function canEnterVipLounge(client: EntitlementsClient, playerId: string): Promise<boolean> {
  const { active } = await client.checkEntitlement({ userId: playerId, sku: "vip_pass" });
  return active;
}

/**
 * Grants the order's gold pack. The idempotency key names the logical grant (this order's gold): if this process
 * crashes or the call times out, calling again with the same key grants once (the replay answers `replayed: true`).
 */
async function grantGoldPack(client: EntitlementsClient, playerId: string, orderId: string): Promise<void> {
  const response = await client.grant({
    userId: playerId,
    sku: "gold_pack",
    quantity: 500n,
    kind: EntitlementKind.CONSUMABLE,
    idempotencyKey: `order-${orderId}:gold_pack`,
    reason: `xsolla order ${orderId}`,
    metadata: { order_id: orderId },
  });
  const { quantity } = response.entitlement ?? {};
  console.log(`gold_pack: ${quantity} (replayed: ${response.replayed}, project ${response.projectId})`);
}

/**
 * Waits until the player's Xsolla order is paid and its items are in their inventory, across service restarts
 * (followOrder reopens the stream and never repeats a status). Returns whether the items arrived.
 */
async function waitForPurchase(
  client: EntitlementsClient,
  playerId: string,
  orderId: string,
  token: string,
  maxWaitMs: number,
): Promise<boolean> {
  const follower = client.followOrder(
    { orderId, userId: playerId, token, maxWait: durationFromMs(maxWaitMs) },
    { signal: AbortSignal.timeout(maxWaitMs + 60_000) },
  );
  for await (const update of follower) {
    console.log(`order ${orderId}: ${OrderStatus[update.status]}, granted: ${update.entitlementsGranted}`);
    if (update.entitlementsGranted) {
      return true;
    }
    if (update.status === OrderStatus.CANCELED || update.status === OrderStatus.EXPIRED || update.timedOut) {
      return false;
    }
  }
  return false;
}

function explain(error: EntitlementsError): string {
  if (error instanceof ConflictError) {
    return `refused (${error.code}): ${error.details}`;
  }
  if (error.retryable) {
    return `try again later with the same idempotency key (${error.code}): ${error.details}`;
  }
  return `${error.code}: ${error.details}`;
}

async function main(): Promise<number> {
  const playerId = process.env["PLAYER_ID"] || "player-42";
  const orderId = process.env["ORDER_ID"] || "10000001";
  const maxWait = /^(\d+(?:\.\d+)?)s$/.exec(process.env["ORDER_MAX_WAIT"] || "30s");
  if (!maxWait) {
    console.error('ORDER_MAX_WAIT: seconds, as "30s"');
    return 2;
  }
  const client = clientFromEnv(process.env);
  try {
    console.log(`VIP lounge: ${(await canEnterVipLounge(client, playerId)) ? "welcome" : "no pass"}`);
    await grantGoldPack(client, playerId, orderId);
    const delivered = await waitForPurchase(
      client,
      playerId,
      orderId,
      process.env["ORDER_TOKEN"] ?? "",
      Number(maxWait[1]) * 1000,
    );
    console.log(delivered ? "purchase delivered" : "purchase not delivered");
    for await (const entitlement of client.entitlements({ userId: playerId })) {
      console.log(`owns ${entitlement.sku} x${entitlement.quantity}`);
    }
    return 0;
  } catch (error) {
    if (isEntitlementsError(error)) {
      console.error(explain(error));
      return 1;
    }
    throw error;
  } finally {
    await client.close();
  }
}

process.exitCode = await main();
