// CheckEntitlements and the raw WatchEntitlements stream against the in-process gRPC server.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type CheckEntitlementsRequest,
  CancelledError,
  EntitlementsClient,
  type EntitlementsError,
  InvalidArgumentError,
  RetryPolicy,
  type WatchEntitlementsRequest,
  WatchEntitlementsResponseSchema,
  type WatchEntitlementsResponse,
} from "@xsolla-entitlements/client";
import { delay, type FakeServer, type Handlers, rejection, startFakeServer } from "./fake-server.js";

const servers: FakeServer[] = [];
const clients: EntitlementsClient[] = [];
after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await Promise.all(servers.map((server) => server.close()));
});

async function setup(handlers: Handlers): Promise<{ server: FakeServer; client: EntitlementsClient }> {
  const server = await startFakeServer(handlers);
  servers.push(server);
  const retry = new RetryPolicy({ initialBackoffMs: 5, maxBackoffMs: 20 });
  const client = new EntitlementsClient({ target: server.target, apiKey: "reader", projectId: 7, retry });
  clients.push(client);
  return { server, client };
}

describe("checkEntitlements", () => {
  test("sends the batch with the client's project, retries UNAVAILABLE and answers in order", async () => {
    let attempts = 0;
    const { server, client } = await setup({
      checkEntitlements(request) {
        attempts += 1;
        if (attempts === 1) {
          throw new ConnectError("store unreachable", Code.Unavailable);
        }
        return { results: request.checks.map((c) => ({ active: c.sku === "gold" })) };
      },
    });
    const checks = [
      { userId: "a", sku: "gold" },
      { userId: "b", sku: "silver" },
      { userId: "a", sku: "gold" },
    ];
    const response = await client.checkEntitlements({ checks });
    assert.deepEqual(
      response.results.map((r) => r.active),
      [true, false, true],
    );
    assert.equal(server.calls.length, 2);
    assert.equal((server.calls[1]!.request as CheckEntitlementsRequest).projectId, 7n);
    assert.notEqual(server.calls[0]!.timeoutMs, undefined, "the default deadline applies");
  });

  test("a refused batch is an InvalidArgumentError with the server's message", async () => {
    const { client } = await setup({
      checkEntitlements() {
        throw new ConnectError("checks[1].sku: is required", Code.InvalidArgument);
      },
    });
    const error = await rejection(client.checkEntitlements({ checks: [{ userId: "a", sku: "x" }, { userId: "b" }] }));
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.details, "checks[1].sku: is required");
  });
});

function heartbeat(cursor: string): WatchEntitlementsResponse {
  return create(WatchEntitlementsResponseSchema, { event: { case: "heartbeat", value: {} }, cursor });
}

describe("watchEntitlements", () => {
  test("sends the first message with the project, later adds and removes, and delivers what the service sends", async () => {
    const received: WatchEntitlementsRequest[] = [];
    const { client } = await setup({
      async *watchEntitlements(requests) {
        for await (const request of requests) {
          received.push(request);
          if (received.length === 1) {
            yield create(WatchEntitlementsResponseSchema, {
              event: { case: "snapshot", value: { userId: "a", version: 4n } },
            });
          }
          if (received.length === 3) {
            yield heartbeat("c9");
            throw new ConnectError("cursor: older than the history kept", Code.OutOfRange);
          }
        }
      },
    });
    const stream = client.watchEntitlements({ addUserIds: ["a"], snapshot: true });
    const seen: WatchEntitlementsResponse[] = [];
    const error = await rejection(
      (async () => {
        for await (const message of stream) {
          seen.push(message);
          if (seen.length === 1) {
            stream.addPlayers(["b", "c"], true);
            stream.removePlayers(["a"]);
          }
        }
      })(),
    );
    assert.equal((error as EntitlementsError).code, "OUT_OF_RANGE", String(error));
    assert.equal(received[0]!.projectId, 7n);
    assert.deepEqual(received[0]!.addUserIds, ["a"]);
    assert.deepEqual(received[1]!.addUserIds, ["b", "c"]);
    assert.equal(received[1]!.snapshot, true);
    assert.deepEqual(received[2]!.removeUserIds, ["a"]);
    assert.equal(seen[0]!.event.case, "snapshot");
    assert.equal(seen[1]!.cursor, "c9");
  });

  test("close() cancels the call on the server and rejects the iteration with CancelledError", async () => {
    let serverSignal: AbortSignal | undefined;
    const { client } = await setup({
      async *watchEntitlements(_requests, context) {
        serverSignal = context.signal;
        yield heartbeat("c1");
        await delay(5000, context.signal);
      },
    });
    const stream = client.watchEntitlements({ allPlayers: true });
    const error = await rejection(
      (async () => {
        for await (const message of stream) {
          assert.equal(message.cursor, "c1");
          stream.close();
        }
      })(),
    );
    assert.ok(error instanceof CancelledError, String(error));
    await delay(100);
    assert.equal(serverSignal?.aborted, true);
  });
});
