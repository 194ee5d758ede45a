// The unary calls against the in-process gRPC server: API key, deadlines, retries and idempotency keys, errors,
// projects, paging, cancellation and close.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AuthenticationError,
  CancelledError,
  CheckEntitlementResponseSchema,
  ConflictError,
  DeadlineExceededError,
  EntitlementKind,
  EntitlementSchema,
  EntitlementsClient,
  EntitlementsError,
  type GrantRequest,
  GrantResponseSchema,
  InvalidArgumentError,
  isEntitlementsError,
  type ListEntitlementsRequest,
  ListEntitlementsResponseSchema,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  RetryableError,
  RetryPolicy,
  RevokeResponseSchema,
  ServerError,
  UnavailableError,
} from "@xsolla-entitlements/client";
import { delay, type FakeServer, type Handlers, rejection, startFakeServer } from "./fake-server.js";

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
// Short waits keep the retry tests fast; the backoff itself is tested on RetryPolicy.
const FAST_RETRY = new RetryPolicy({ maxAttempts: 4, initialBackoffMs: 5, maxBackoffMs: 20 });

const servers: FakeServer[] = [];
const clients: EntitlementsClient[] = [];
after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await Promise.all(servers.map((server) => server.close()));
});

async function setup(
  handlers: Handlers,
  options: Partial<ConstructorParameters<typeof EntitlementsClient>[0]> = {},
): Promise<{ server: FakeServer; client: EntitlementsClient }> {
  const server = await startFakeServer(handlers);
  servers.push(server);
  const client = new EntitlementsClient({ target: server.target, apiKey: "key-1", retry: FAST_RETRY, ...options });
  clients.push(client);
  return { server, client };
}

async function collectAll<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) {
    all.push(item);
  }
  return all;
}

function grantResponse(request: GrantRequest) {
  return create(GrantResponseSchema, {
    entitlement: { userId: request.userId, sku: request.sku, quantity: request.quantity ?? 1n, active: true },
    projectId: request.projectId,
  });
}

describe("API key", () => {
  test("every call carries authorization: Bearer <key>", async () => {
    const { server, client } = await setup({ checkEntitlement: () => ({ active: true }) });
    const response = await client.checkEntitlement({ userId: "u1", sku: "dlc" });
    assert.equal(response.active, true);
    assert.equal(server.calls[0]?.authorization, "Bearer key-1");
  });

  test("without a key no authorization header is sent", async () => {
    const { server, client } = await setup({ checkEntitlement: () => ({}) }, { apiKey: undefined });
    await client.checkEntitlement({ userId: "u1", sku: "dlc" });
    assert.equal(server.calls[0]?.authorization, null);
  });

  test("a key that cannot be a header value is refused when the client is built", () => {
    assert.throws(() => new EntitlementsClient({ target: "127.0.0.1:1", apiKey: "a\nb" }), TypeError);
  });
});

describe("deadlines", () => {
  test("unary calls send the default deadline of 5 s", async () => {
    const { server, client } = await setup({ checkEntitlement: () => ({}) });
    await client.checkEntitlement({ userId: "u1", sku: "dlc" });
    const sent = server.calls[0]?.timeoutMs;
    assert.ok(sent !== undefined && sent > 4000 && sent <= 5000, `grpc-timeout was ${sent}`);
  });

  test("a slow answer fails with DeadlineExceededError at the call's own deadline", async () => {
    const { client } = await setup({
      checkEntitlement: async (_request, context) => {
        await delay(2000, context.signal);
        return {};
      },
    });
    const started = performance.now();
    const error = await rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }, { timeoutMs: 150 }));
    assert.ok(error instanceof DeadlineExceededError, String(error));
    assert.equal(error.code, "DEADLINE_EXCEEDED");
    assert.equal(error.retryable, true);
    assert.ok(performance.now() - started < 1500);
  });

  test("timeoutMs: null sends no deadline", async () => {
    const { server, client } = await setup({ checkEntitlement: () => ({}) }, { timeoutMs: null });
    await client.checkEntitlement({ userId: "u1", sku: "dlc" });
    assert.equal(server.calls[0]?.timeoutMs, undefined);
  });

  test("retries stay within the deadline: each attempt is sent what is left of it", async () => {
    const { server, client } = await setup(
      {
        checkEntitlement: async () => {
          await delay(60);
          throw new ConnectError("store down", Code.Unavailable);
        },
      },
      { retry: { maxAttempts: 10, initialBackoffMs: 1, maxBackoffMs: 2 }, timeoutMs: 400 },
    );
    const error = await rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }));
    assert.ok(error instanceof RetryableError, String(error));
    const sent = server.calls.map((call) => call.timeoutMs ?? Infinity);
    assert.ok(sent.length >= 2 && sent.length < 10, `attempts: ${sent.length}`);
    for (let i = 1; i < sent.length; i++) {
      assert.ok(sent[i]! < sent[i - 1]!, `deadlines sent: ${sent.join(", ")}`);
    }
  });
});

describe("retries and idempotency keys", () => {
  function flakyGrant(failures: number): Handlers {
    let calls = 0;
    return {
      grant: (request) => {
        calls++;
        if (calls <= failures) {
          throw new ConnectError("store unreachable", Code.Unavailable);
        }
        return grantResponse(request);
      },
    };
  }

  test("UNAVAILABLE is retried with the caller's idempotency key unchanged", async () => {
    const { server, client } = await setup(flakyGrant(2));
    const response = await client.grant({ userId: "u1", sku: "gold", quantity: 5n, idempotencyKey: "order-1:gold" });
    assert.equal(response.entitlement?.quantity, 5n);
    const keys = server.calls.map((call) => (call.request as GrantRequest).idempotencyKey);
    assert.deepEqual(keys, ["order-1:gold", "order-1:gold", "order-1:gold"]);
  });

  test("without a key the client makes a UUID v4 and keeps it across retries", async () => {
    const { server, client } = await setup(flakyGrant(2));
    await client.grant({ userId: "u1", sku: "gold" });
    const keys = server.calls.map((call) => (call.request as GrantRequest).idempotencyKey);
    assert.equal(keys.length, 3);
    assert.match(keys[0]!, UUID_V4);
    assert.equal(new Set(keys).size, 1);
  });

  test("each call without a key gets a new key; revoke too", async () => {
    const { server, client } = await setup({
      grant: grantResponse,
      revoke: () => create(RevokeResponseSchema, { revoked: true }),
    });
    await client.grant({ userId: "u1", sku: "gold" });
    await client.grant({ userId: "u1", sku: "gold" });
    await client.revoke({ userId: "u1", sku: "gold" });
    const keys = server.calls.map((call) => (call.request as { idempotencyKey: string }).idempotencyKey);
    assert.equal(new Set(keys).size, 3);
    for (const key of keys) {
      assert.match(key, UUID_V4);
    }
  });

  test("an empty key is sent as given (the service answers INVALID_ARGUMENT)", async () => {
    const { server, client } = await setup({ grant: grantResponse });
    await client.grant({ userId: "u1", sku: "gold", idempotencyKey: "" });
    assert.equal((server.calls[0]?.request as GrantRequest).idempotencyKey, "");
  });

  test("the retries stop after maxAttempts with UnavailableError", async () => {
    const { server, client } = await setup(flakyGrant(100));
    const error = await rejection(client.grant({ userId: "u1", sku: "gold", idempotencyKey: "k" }));
    assert.ok(error instanceof UnavailableError, String(error));
    assert.equal(error.details, "store unreachable");
    assert.equal(server.calls.length, FAST_RETRY.maxAttempts);
  });

  test("retry: false makes one attempt", async () => {
    const { server, client } = await setup(flakyGrant(1), { retry: false });
    await assert.rejects(client.grant({ userId: "u1", sku: "gold" }), UnavailableError);
    assert.equal(server.calls.length, 1);
  });

  test("other codes are not retried", async () => {
    const { server, client } = await setup({
      grant: () => {
        throw new ConnectError("sku: must be 1..256 bytes", Code.InvalidArgument);
      },
    });
    await assert.rejects(client.grant({ userId: "u1", sku: "" }), InvalidArgumentError);
    assert.equal(server.calls.length, 1);
  });

  test("the backoff grows exponentially up to the maximum, with jitter below the bound", () => {
    const policy = new RetryPolicy({ initialBackoffMs: 100, maxBackoffMs: 2000 });
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7].map((n) => policy.backoffBoundMs(n)),
      [100, 200, 400, 800, 1600, 2000, 2000],
    );
    assert.equal(
      policy.backoffMs(3, () => 0.5),
      200,
    );
    assert.ok(policy.backoffMs(3) < 400);
    assert.equal(policy.maxAttempts, 5);
    assert.deepEqual(policy.retryableCodes, ["UNAVAILABLE"]);
    assert.throws(() => new RetryPolicy({ maxAttempts: 0 }), RangeError);
    assert.throws(() => new RetryPolicy({ retryableCodes: ["NOPE" as never] }), RangeError);
  });

  test("an unreachable service is UnavailableError after the retries", async () => {
    const server = await startFakeServer({});
    await server.close();
    const client = new EntitlementsClient({ target: server.target, retry: FAST_RETRY });
    clients.push(client);
    const error = await rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }));
    assert.ok(error instanceof UnavailableError, String(error));
    assert.match(error.details, /ECONNREFUSED/);
  });
});

describe("errors", () => {
  const cases: [Code, string, new (...args: never[]) => EntitlementsError, boolean][] = [
    [Code.InvalidArgument, "INVALID_ARGUMENT", InvalidArgumentError, false],
    [Code.Unauthenticated, "UNAUTHENTICATED", AuthenticationError, false],
    [Code.PermissionDenied, "PERMISSION_DENIED", PermissionDeniedError, false],
    [Code.NotFound, "NOT_FOUND", NotFoundError, false],
    [Code.AlreadyExists, "ALREADY_EXISTS", ConflictError, false],
    [Code.FailedPrecondition, "FAILED_PRECONDITION", ConflictError, false],
    [Code.ResourceExhausted, "RESOURCE_EXHAUSTED", ResourceExhaustedError, true],
    [Code.Internal, "INTERNAL", ServerError, false],
    [Code.Unavailable, "UNAVAILABLE", UnavailableError, true],
  ];
  for (const [code, name, Class, retryable] of cases) {
    test(`${name} is ${Class.name} with the server's message`, async () => {
      const { client } = await setup(
        {
          grant: () => {
            throw new ConnectError("what the server said", code);
          },
        },
        { retry: false },
      );
      const error = await rejection(client.grant({ userId: "u1", sku: "gold" }));
      assert.ok(error instanceof Class, String(error));
      assert.ok(isEntitlementsError(error));
      assert.equal(error.code, name);
      assert.equal(error.grpcCode, code);
      assert.equal(error.details, "what the server said");
      assert.equal(error.message, `${name}: what the server said`);
      assert.equal(error.retryable, retryable);
      assert.equal(error instanceof RetryableError, retryable);
      assert.equal(error.name, Class.name);
    });
  }

  test("a handler that throws something else is a ServerError, never a raw error", async () => {
    const { client } = await setup({
      grant: () => {
        throw new Error("boom");
      },
    });
    const error = await rejection(client.grant({ userId: "u1", sku: "gold" }));
    assert.ok(error instanceof ServerError, String(error));
  });
});

describe("projects and requests", () => {
  test("the client's projectId fills requests that leave it at 0; a request's own wins", async () => {
    const { server, client } = await setup(
      { grant: grantResponse, checkEntitlement: () => ({}) },
      { projectId: 308077 },
    );
    const response = await client.grant({ userId: "u1", sku: "gold" });
    assert.equal(response.projectId, 308077n);
    await client.checkEntitlement({ userId: "u1", sku: "gold", projectId: 310000n });
    assert.deepEqual(
      server.calls.map((call) => (call.request as { projectId: bigint }).projectId),
      [308077n, 310000n],
    );
  });

  test("a value a field cannot hold rejects with InvalidArgumentError and sends nothing", async () => {
    const { server, client } = await setup({ grant: grantResponse });
    const pending = client.grant({ userId: "u1", sku: "gold", quantity: 2n ** 70n });
    assert.ok(pending instanceof Promise, "a rejected promise, not a synchronous throw");
    const error = await rejection(pending);
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.match(error.details, /^request: /);
    const follower = client.followOrder({ orderId: "o1", userId: "u1", projectId: -(2n ** 64n) });
    assert.ok((await rejection(collectAll(follower))) instanceof InvalidArgumentError);
    assert.equal(server.calls.length, 0);
  });

  test("the caller's request object is never changed", async () => {
    const { client } = await setup({ grant: grantResponse });
    const request = { userId: "u1", sku: "gold", kind: EntitlementKind.CONSUMABLE };
    await client.grant(request);
    assert.deepEqual(request, { userId: "u1", sku: "gold", kind: EntitlementKind.CONSUMABLE });
  });
});

describe("paging", () => {
  test("entitlements() follows nextPageToken through every page, empty pages included", async () => {
    const skus = ["a", "b", "c", "d", "e", "f", "g"];
    // Pages of 3, with an empty page in the middle as the server may send (AIP-158).
    const pages: Record<string, [string[], string]> = {
      "": [skus.slice(0, 3), "t1"],
      t1: [[], "t2"],
      t2: [skus.slice(3, 6), "t3"],
      t3: [skus.slice(6), ""],
    };
    const { server, client } = await setup({
      listEntitlements: (request) => {
        const [page, next] = pages[request.pageToken]!;
        return create(ListEntitlementsResponseSchema, {
          entitlements: page.map((sku) => create(EntitlementSchema, { userId: request.userId, sku })),
          nextPageToken: next,
        });
      },
    });
    const seen: string[] = [];
    for await (const entitlement of client.entitlements({ userId: "u1", pageSize: 3 })) {
      seen.push(entitlement.sku);
    }
    assert.deepEqual(seen, skus);
    const requests = server.calls.map((call) => call.request as ListEntitlementsRequest);
    assert.deepEqual(
      requests.map((r) => r.pageToken),
      ["", "t1", "t2", "t3"],
    );
    assert.ok(requests.every((r) => r.pageSize === 3 && r.userId === "u1"));
  });

  test("an error on a later page ends the iteration with that error", async () => {
    const { client } = await setup(
      {
        listEntitlements: (request) => {
          if (request.pageToken === "") {
            return { entitlements: [{ sku: "a" }], nextPageToken: "bad" };
          }
          throw new ConnectError("page_token: not a token of this listing", Code.InvalidArgument);
        },
      },
      { retry: false },
    );
    const seen: string[] = [];
    await assert.rejects(async () => {
      for await (const entitlement of client.entitlements({ userId: "u1" })) {
        seen.push(entitlement.sku);
      }
    }, InvalidArgumentError);
    assert.deepEqual(seen, ["a"]);
  });
});

describe("cancellation and close", () => {
  test("an AbortSignal cancels a call with CancelledError", async () => {
    const { client } = await setup({
      checkEntitlement: async (_request, context) => {
        await delay(5000, context.signal);
        return create(CheckEntitlementResponseSchema, {});
      },
    });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const error = await rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }, { signal: controller.signal }));
    assert.ok(error instanceof CancelledError, String(error));
    assert.equal(error.code, "CANCELLED");
  });

  test("close() cancels running calls and refuses later ones", async () => {
    const { client } = await setup({
      checkEntitlement: async (_request, context) => {
        await delay(5000, context.signal);
        return {};
      },
    });
    const running = rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }));
    await delay(50);
    await client.close();
    await client.close();
    assert.ok((await running) instanceof CancelledError);
    const later = await rejection(client.checkEntitlement({ userId: "u1", sku: "dlc" }));
    assert.ok(later instanceof CancelledError, String(later));
    assert.equal(later.details, "the client was closed");
    assert.equal(client.closed, true);
  });

  test("options that cannot work are refused when the client is built", () => {
    assert.throws(() => new EntitlementsClient({ target: "http://host:1/path" }), TypeError);
    assert.throws(() => new EntitlementsClient({ target: "host" }), TypeError);
    assert.throws(() => new EntitlementsClient({ target: "host:1", timeoutMs: -1 }), RangeError);
    assert.throws(() => new EntitlementsClient({ target: "host:1", tls: { cert: "x" } }), TypeError);
    assert.throws(() => new EntitlementsClient({ target: "host:1", projectId: -2 }), RangeError);
    assert.doesNotThrow(() => new EntitlementsClient({ target: "dns:///[::1]:50051", tls: true }).close());
  });
});
