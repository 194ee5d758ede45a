// An in-process gRPC server for the unit tests: Connect's Node.js handler on a real HTTP/2 server on a free
// loopback port, speaking the gRPC protocol the client speaks to the real service. Each test gives the handlers
// it needs and reads what the server received from `calls`.
import * as http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import type { ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { EntitlementService } from "@xsolla-entitlements/client";

/** What the server saw of one call. */
export interface ReceivedCall {
  readonly method: string;
  readonly request: unknown;
  readonly authorization: string | null;
  /** The deadline the client sent (grpc-timeout), in milliseconds. */
  readonly timeoutMs: number | undefined;
}

export interface FakeServer {
  readonly target: string;
  readonly calls: ReceivedCall[];
  /** Drops every open connection, as a crashed server or a broken network does. */
  dropConnections(): void;
  close(): Promise<void>;
}

export type Handlers = Partial<ServiceImpl<typeof EntitlementService>>;

/** Starts a server with `handlers` (an RPC without one is UNIMPLEMENTED); the caller closes it. */
export async function startFakeServer(
  handlers: Handlers,
  tls?: { key: Buffer; cert: Buffer; ca: Buffer; requestCert: boolean },
): Promise<FakeServer> {
  const calls: ReceivedCall[] = [];
  const recorded: Record<string, unknown> = {};
  for (const [name, handler] of Object.entries(handlers)) {
    // Wraps each handler to record the call before it runs; streaming handlers are async generators.
    recorded[name] = function (this: unknown, request: unknown, context: Parameters<ServiceImplFn>[1]) {
      calls.push({
        method: name,
        request,
        authorization: context.requestHeader.get("authorization"),
        timeoutMs: context.timeoutMs(),
      });
      return (handler as ServiceImplFn).call(this, request, context);
    };
  }
  const adapter = connectNodeAdapter({
    routes(router) {
      router.service(EntitlementService, recorded);
    },
  });
  const server = tls
    ? http2.createSecureServer({ key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: tls.requestCert }, adapter)
    : http2.createServer(adapter);
  const sockets = new Set<Socket>();
  server.on(tls ? "secureConnection" : "connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    target: `127.0.0.1:${port}`,
    calls,
    dropConnections() {
      for (const socket of sockets) {
        socket.destroy();
      }
    },
    close() {
      for (const socket of sockets) {
        socket.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

type ServiceImplFn = (
  request: unknown,
  context: { requestHeader: Headers; timeoutMs(): number | undefined },
) => unknown;

/** Resolves after `ms` milliseconds, or rejects when `signal` aborts. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new Error("delay aborted", { cause: signal.reason }));
    });
  });
}

/** The error `promise` rejects with; fails the test when it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the promise to reject, but it resolved");
}
