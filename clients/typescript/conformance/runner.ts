// The TypeScript client's conformance runner: JSON lines on stdin/stdout, as conformance/PROTOCOL.md says. It only
// maps each op onto the client's public API; the scenarios, expectations and comparisons live in the harness.
import { createInterface } from "node:readline";
import { type DescMessage, fromJson, type JsonValue, type MessageShape, toJson } from "@bufbuild/protobuf";
import {
  CheckEntitlementRequestSchema,
  CheckEntitlementResponseSchema,
  CheckEntitlementsRequestSchema,
  CheckEntitlementsResponseSchema,
  EntitlementSchema,
  EntitlementsClient,
  GetOrderStatusRequestSchema,
  GrantRequestSchema,
  GrantResponseSchema,
  isEntitlementsError,
  ListEntitlementsRequestSchema,
  ListEntitlementsResponseSchema,
  ListLedgerRequestSchema,
  ListLedgerResponseSchema,
  ListSubscriptionsRequestSchema,
  ListSubscriptionsResponseSchema,
  type OrderStatusUpdate,
  OrderStatusUpdateSchema,
  RevokeRequestSchema,
  RevokeResponseSchema,
  type RetryOptions,
  tlsFromFiles,
} from "@xsolla-entitlements/client";

type Args = Record<string, JsonValue>;
type Result = Record<string, JsonValue>;

interface Request {
  readonly id: JsonValue;
  readonly op: string;
  readonly client?: string;
  readonly args?: Args;
}

/** A request the runner cannot carry out (a bad line, an unknown op or connection): code RUNNER. */
class RunnerError extends Error {
  override name = "RunnerError";
}

const clients = new Map<string, EntitlementsClient>();

function write(line: Record<string, JsonValue>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function client(request: Request): EntitlementsClient {
  const found = request.client === undefined ? undefined : clients.get(request.client);
  if (found === undefined) {
    throw new RunnerError(`no connection named ${JSON.stringify(request.client)}`);
  }
  return found;
}

/** The request message of `args` (proto3 JSON, .proto field names or lowerCamelCase). */
function parse<Desc extends DescMessage>(schema: Desc, args: Args): MessageShape<Desc> {
  try {
    return fromJson(schema, args);
  } catch (error) {
    throw new RunnerError(`args are not a ${schema.typeName}: ${(error as Error).message}`);
  }
}

/** Whether `args` gives an idempotency key (an absent one means the client must make its own). */
function givesKey(args: Args): boolean {
  return "idempotency_key" in args || "idempotencyKey" in args;
}

function optionalString(args: Args, name: string): string | undefined {
  const value = args[name];
  if (value === undefined || value === null) {
    return undefined;
  }
  if (typeof value !== "string") {
    throw new RunnerError(`${name} must be a string`);
  }
  return value;
}

function optionalNumber(args: Args, name: string): number | undefined {
  const value = args[name];
  if (value === undefined || value === null) {
    return undefined;
  }
  const number = typeof value === "string" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isFinite(number)) {
    throw new RunnerError(`${name} must be a number`);
  }
  return number;
}

function connect(args: Args): Result {
  const name = optionalString(args, "name");
  const target = optionalString(args, "target");
  if (name === undefined || target === undefined) {
    throw new RunnerError("connect needs name and target");
  }
  const tlsArgs = args["tls"];
  const retryArgs = args["retry"];
  let retry: RetryOptions | undefined;
  if (retryArgs !== undefined && retryArgs !== null) {
    const r = retryArgs as Args;
    retry = {
      ...(optionalNumber(r, "max_attempts") !== undefined && { maxAttempts: optionalNumber(r, "max_attempts")! }),
      ...(optionalNumber(r, "initial_backoff_ms") !== undefined && {
        initialBackoffMs: optionalNumber(r, "initial_backoff_ms")!,
      }),
      ...(optionalNumber(r, "max_backoff_ms") !== undefined && { maxBackoffMs: optionalNumber(r, "max_backoff_ms")! }),
    };
  }
  let tls: ReturnType<typeof tlsFromFiles> | false = false;
  if (tlsArgs !== undefined && tlsArgs !== null) {
    const t = tlsArgs as Args;
    tls = tlsFromFiles({
      caFile: optionalString(t, "ca_file"),
      certFile: optionalString(t, "cert_file"),
      keyFile: optionalString(t, "key_file"),
      serverName: optionalString(t, "server_name"),
    });
  }
  const projectId = args["project_id"];
  const created = new EntitlementsClient({
    target,
    apiKey: optionalString(args, "api_key"),
    tls,
    timeoutMs: optionalNumber(args, "timeout_ms"),
    retry,
    projectId: projectId === undefined || projectId === null ? 0n : BigInt(projectId as string | number),
  });
  const previous = clients.get(name);
  clients.set(name, created);
  void previous?.close();
  return {};
}

async function streamed(id: JsonValue, updates: AsyncIterable<OrderStatusUpdate>): Promise<JsonValue[]> {
  const seen: JsonValue[] = [];
  for await (const update of updates) {
    const event = toJson(OrderStatusUpdateSchema, update);
    write({ id, event });
    seen.push(event);
  }
  return seen;
}

async function run(request: Request): Promise<Result> {
  const args = request.args ?? {};
  switch (request.op) {
    case "connect":
      return connect(args);
    case "close": {
      const name = optionalString(args, "name") ?? request.client;
      const found = name === undefined ? undefined : clients.get(name);
      if (found === undefined) {
        throw new RunnerError(`no connection named ${JSON.stringify(name)}`);
      }
      clients.delete(name!);
      await found.close();
      return {};
    }
    case "grant": {
      const { $typeName, $unknown, idempotencyKey, ...fields } = parse(GrantRequestSchema, args);
      const response = await client(request).grant(givesKey(args) ? { ...fields, idempotencyKey } : fields);
      return toJson(GrantResponseSchema, response) as Result;
    }
    case "revoke": {
      const { $typeName, $unknown, idempotencyKey, ...fields } = parse(RevokeRequestSchema, args);
      const response = await client(request).revoke(givesKey(args) ? { ...fields, idempotencyKey } : fields);
      return toJson(RevokeResponseSchema, response) as Result;
    }
    case "check": {
      const response = await client(request).checkEntitlement(parse(CheckEntitlementRequestSchema, args));
      return toJson(CheckEntitlementResponseSchema, response) as Result;
    }
    case "check_entitlements": {
      const response = await client(request).checkEntitlements(parse(CheckEntitlementsRequestSchema, args));
      return toJson(CheckEntitlementsResponseSchema, response) as Result;
    }
    case "list_entitlements": {
      const response = await client(request).listEntitlements(parse(ListEntitlementsRequestSchema, args));
      return toJson(ListEntitlementsResponseSchema, response) as Result;
    }
    case "list_all_entitlements": {
      const entitlements: JsonValue[] = [];
      for await (const entitlement of client(request).entitlements(parse(ListEntitlementsRequestSchema, args))) {
        entitlements.push(toJson(EntitlementSchema, entitlement));
      }
      return { entitlements };
    }
    case "list_subscriptions": {
      const response = await client(request).listSubscriptions(parse(ListSubscriptionsRequestSchema, args));
      return toJson(ListSubscriptionsResponseSchema, response) as Result;
    }
    case "list_ledger": {
      const response = await client(request).listLedger(parse(ListLedgerRequestSchema, args));
      return toJson(ListLedgerResponseSchema, response) as Result;
    }
    case "get_order_status": {
      const updates = client(request).getOrderStatus(parse(GetOrderStatusRequestSchema, args));
      return { updates: await streamed(request.id, updates) };
    }
    case "follow_order": {
      const follower = client(request).followOrder(parse(GetOrderStatusRequestSchema, args));
      const updates = await streamed(request.id, follower);
      return { updates, opens: follower.opens };
    }
    default:
      throw new RunnerError(`unknown op ${JSON.stringify(request.op)}`);
  }
}

function errorLine(id: JsonValue, error: unknown): Record<string, JsonValue> {
  if (isEntitlementsError(error)) {
    return { id, ok: false, error: { code: error.code, message: error.details, type: error.name } };
  }
  const message = error instanceof Error ? error.message : String(error);
  const type = error instanceof Error ? error.name : typeof error;
  return { id, ok: false, error: { code: "RUNNER", message, type } };
}

async function shutdown(): Promise<void> {
  await Promise.all([...clients.values()].map((c) => c.close()));
  clients.clear();
}

async function main(): Promise<void> {
  write({ ready: true, client: "typescript" });
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === "") {
      continue;
    }
    let request: Request;
    try {
      request = JSON.parse(line) as Request;
      if (typeof request !== "object" || request === null || typeof request.op !== "string") {
        throw new RunnerError("a request is an object with an op");
      }
    } catch (error) {
      const id = (() => {
        try {
          return (JSON.parse(line) as { id?: JsonValue }).id ?? null;
        } catch {
          return null;
        }
      })();
      write(errorLine(id, error instanceof RunnerError ? error : new RunnerError(`not JSON: ${line}`)));
      continue;
    }
    if (request.op === "exit") {
      break;
    }
    try {
      write({ id: request.id, ok: true, result: await run(request) });
    } catch (error) {
      write(errorLine(request.id, error));
    }
  }
  lines.close();
  await shutdown();
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`conformance runner failed: ${String(error)}\n`);
    process.exit(2);
  },
);
