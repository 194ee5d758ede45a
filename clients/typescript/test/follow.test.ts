// Order following against the in-process gRPC server: the raw stream, and followOrder across broken streams
// (UNAVAILABLE from the server, a dropped connection) without delivering a status twice.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AuthenticationError,
  CancelledError,
  DEFAULT_MAX_WAIT_MS,
  durationFromMs,
  durationMs,
  EntitlementsClient,
  type GetOrderStatusRequest,
  OrderStatus,
  OrderStatusSource,
  type OrderStatusUpdate,
  OrderStatusUpdateSchema,
  RetryPolicy,
  UnavailableError,
} from "@xsolla-entitlements/client";
import { delay, type FakeServer, type Handlers, rejection, startFakeServer } from "./fake-server.js";

const servers: FakeServer[] = [];
const clients: EntitlementsClient[] = [];
after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await Promise.all(servers.map((server) => server.close()));
});

const FAST_BACKOFF = new RetryPolicy({ initialBackoffMs: 5, maxBackoffMs: 20 });

async function setup(handlers: Handlers): Promise<{ server: FakeServer; client: EntitlementsClient }> {
  const server = await startFakeServer(handlers);
  servers.push(server);
  const client = new EntitlementsClient({ target: server.target, apiKey: "reader", projectId: 7 });
  clients.push(client);
  return { server, client };
}

function update(
  status: OrderStatus,
  fields: { source?: OrderStatusSource; entitlementsGranted?: boolean; timedOut?: boolean } = {},
): OrderStatusUpdate {
  return create(OrderStatusUpdateSchema, { orderId: "o1", status, source: OrderStatusSource.WEBHOOK, ...fields });
}

async function collect(updates: AsyncIterable<OrderStatusUpdate>): Promise<OrderStatusUpdate[]> {
  const seen: OrderStatusUpdate[] = [];
  for await (const u of updates) {
    seen.push(u);
  }
  return seen;
}

const brief = (updates: OrderStatusUpdate[]) =>
  updates.map(
    (u) => `${OrderStatus[u.status]}${u.entitlementsGranted ? "+granted" : ""}${u.timedOut ? "+timeout" : ""}`,
  );

describe("getOrderStatus", () => {
  test("delivers the raw stream once, with the client's project and API key", async () => {
    const { server, client } = await setup({
      async *getOrderStatus() {
        yield update(OrderStatus.NEW);
        yield update(OrderStatus.PAID);
        yield update(OrderStatus.DONE);
      },
    });
    const seen = await collect(client.getOrderStatus({ orderId: "o1", userId: "u1" }));
    assert.deepEqual(brief(seen), ["NEW", "PAID", "DONE"]);
    const call = server.calls[0]!;
    assert.equal((call.request as GetOrderStatusRequest).projectId, 7n);
    assert.equal(call.authorization, "Bearer reader");
    assert.equal(call.timeoutMs, undefined, "no deadline on the stream by default");
  });

  test("a failure is an EntitlementsError and the stream is not reopened", async () => {
    const { server, client } = await setup({
      async *getOrderStatus() {
        yield update(OrderStatus.NEW);
        throw new ConnectError("replica shutting down", Code.Unavailable);
      },
    });
    const seen: OrderStatusUpdate[] = [];
    const error = await rejection(
      (async () => {
        for await (const u of client.getOrderStatus({ orderId: "o1", userId: "u1" })) {
          seen.push(u);
        }
      })(),
    );
    assert.ok(error instanceof UnavailableError, String(error));
    assert.equal(seen.length, 1);
    assert.equal(server.calls.length, 1);
  });

  test("leaving the loop early cancels the call on the server", async () => {
    let serverSignal: AbortSignal | undefined;
    const { client } = await setup({
      async *getOrderStatus(_request, context) {
        serverSignal = context.signal;
        yield update(OrderStatus.NEW);
        await delay(5000, context.signal);
      },
    });
    for await (const u of client.getOrderStatus({ orderId: "o1", userId: "u1" })) {
      assert.equal(u.status, OrderStatus.NEW);
      break;
    }
    await delay(100);
    assert.equal(serverSignal?.aborted, true);
  });
});

describe("followOrder", () => {
  test("reopens after UNAVAILABLE and never delivers a status twice", async () => {
    let opens = 0;
    const { server, client } = await setup({
      async *getOrderStatus() {
        opens++;
        if (opens === 1) {
          yield update(OrderStatus.NEW, { source: OrderStatusSource.STORED });
          yield update(OrderStatus.PAID);
          throw new ConnectError("replica shutting down", Code.Unavailable);
        }
        // A reopened stream starts with the stored state: a repeat of PAID.
        yield update(OrderStatus.PAID, { source: OrderStatusSource.STORED });
        yield update(OrderStatus.PAID, { entitlementsGranted: true });
        yield update(OrderStatus.DONE, { entitlementsGranted: true });
      },
    });
    const follower = client.followOrder(
      { orderId: "o1", userId: "u1", maxWait: durationFromMs(60_000) },
      { backoff: FAST_BACKOFF },
    );
    const seen = await collect(follower);
    assert.deepEqual(brief(seen), ["NEW", "PAID", "PAID+granted", "DONE+granted"]);
    assert.equal(follower.opens, 2);
    // The second stream is asked to follow for what is left of the overall maxWait.
    const waits = server.calls.map((call) => durationMs((call.request as GetOrderStatusRequest).maxWait!));
    assert.equal(waits[0], 60_000);
    assert.ok(waits[1]! < 60_000 && waits[1]! > 55_000, `maxWait of the second open: ${waits[1]}`);
  });

  test("reopens after the connection drops", async () => {
    let opens = 0;
    const network: { drop?: () => void } = {};
    const { server, client } = await setup({
      async *getOrderStatus() {
        opens++;
        if (opens === 1) {
          yield update(OrderStatus.NEW);
          await delay(30);
          network.drop?.();
          await delay(5000);
          return;
        }
        yield update(OrderStatus.NEW, { source: OrderStatusSource.STORED });
        yield update(OrderStatus.CANCELED);
      },
    });
    network.drop = () => server.dropConnections();
    const follower = client.followOrder({ orderId: "o1", userId: "u1" }, { backoff: FAST_BACKOFF });
    const seen = await collect(follower);
    assert.deepEqual(brief(seen), ["NEW", "CANCELED"]);
    assert.equal(follower.opens, 2);
    // No maxWait: the first stream gets the service's default, the second what is left of its 10 minutes.
    const [first, second] = server.calls.map((call) => (call.request as GetOrderStatusRequest).maxWait);
    assert.equal(first, undefined);
    assert.ok(second && durationMs(second) > 590_000 && durationMs(second) < DEFAULT_MAX_WAIT_MS);
  });

  test("the final timed_out message is delivered even though its status repeats", async () => {
    const { client } = await setup({
      async *getOrderStatus() {
        yield update(OrderStatus.PAID);
        yield update(OrderStatus.PAID, { timedOut: true });
      },
    });
    const follower = client.followOrder({ orderId: "o1", userId: "u1", maxWait: durationFromMs(1000) });
    assert.deepEqual(brief(await collect(follower)), ["PAID", "PAID+timeout"]);
    assert.equal(follower.opens, 1);
  });

  test("any other error ends following with that error", async () => {
    const { server, client } = await setup({
      async *getOrderStatus() {
        yield update(OrderStatus.NEW);
        throw new ConnectError("order token rejected by Xsolla", Code.Unauthenticated);
      },
    });
    const follower = client.followOrder({ orderId: "o1", userId: "u1" }, { backoff: FAST_BACKOFF });
    await assert.rejects(collect(follower), AuthenticationError);
    assert.equal(server.calls.length, 1);
  });

  test("when maxWait passes while reopening, it ends with the last error", async () => {
    const { server, client } = await setup({
      // eslint-disable-next-line require-yield
      async *getOrderStatus() {
        throw new ConnectError("replica shutting down", Code.Unavailable);
      },
    });
    const started = performance.now();
    const follower = client.followOrder(
      { orderId: "o1", userId: "u1", maxWait: durationFromMs(300) },
      { backoff: new RetryPolicy({ initialBackoffMs: 20, maxBackoffMs: 40 }) },
    );
    const error = await rejection(collect(follower));
    assert.ok(error instanceof UnavailableError, String(error));
    assert.ok(performance.now() - started < 1000);
    assert.ok(follower.opens >= 3, `opens: ${follower.opens}`);
    assert.equal(server.calls.length, follower.opens);
  });

  test("the caller's signal stops following with CancelledError, and break cancels the stream", async () => {
    let serverSignal: AbortSignal | undefined;
    const { client } = await setup({
      async *getOrderStatus(_request, context) {
        serverSignal = context.signal;
        yield update(OrderStatus.NEW);
        await delay(5000, context.signal);
      },
    });
    const controller = new AbortController();
    const follower = client.followOrder({ orderId: "o1", userId: "u1" }, { signal: controller.signal });
    const seen: OrderStatusUpdate[] = [];
    const error = await rejection(
      (async () => {
        for await (const u of follower) {
          seen.push(u);
          controller.abort();
        }
      })(),
    );
    assert.ok(error instanceof CancelledError, String(error));
    assert.equal(seen.length, 1);

    const second = client.followOrder({ orderId: "o1", userId: "u1" });
    for await (const u of second) {
      assert.equal(u.status, OrderStatus.NEW);
      break;
    }
    await delay(100);
    assert.equal(serverSignal?.aborted, true);
  });

  test("an OrderFollower is iterated once", async () => {
    const { client } = await setup({
      async *getOrderStatus() {
        yield update(OrderStatus.DONE);
      },
    });
    const follower = client.followOrder({ orderId: "o1", userId: "u1" });
    await collect(follower);
    assert.throws(() => follower[Symbol.asyncIterator](), TypeError);
  });
});
