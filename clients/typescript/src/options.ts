/**
 * How the client connects: its options, TLS, and the gRPC transport built from them.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import type * as http2 from "node:http2";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { RetryPolicy, type RetryOptions } from "./retry.js";

/** TLS settings. PEM contents (not file names: see `tlsFromFiles`). */
export interface TlsOptions {
  /** CA certificates that verify the server; the system's default roots when absent. */
  readonly ca?: string | Buffer;
  /** The client's certificate chain, for mTLS; set together with `key`. */
  readonly cert?: string | Buffer;
  /** The client's private key, for mTLS; set together with `cert`. */
  readonly key?: string | Buffer;
  /**
   * The name the server's certificate must carry (and the SNI sent), when it is not the target's host, e.g.
   * when connecting by IP address.
   */
  readonly serverName?: string;
}

/** Reads PEM files into `TlsOptions`; every file is optional (`ca` absent: the default roots). */
export function tlsFromFiles(files: {
  readonly caFile?: string | undefined;
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  readonly serverName?: string | undefined;
}): TlsOptions {
  return {
    ...(files.caFile !== undefined && { ca: readFileSync(files.caFile) }),
    ...(files.certFile !== undefined && { cert: readFileSync(files.certFile) }),
    ...(files.keyFile !== undefined && { key: readFileSync(files.keyFile) }),
    ...(files.serverName !== undefined && { serverName: files.serverName }),
  };
}

/** What `new EntitlementsClient(...)` takes. */
export interface ClientOptions {
  /** `host:port` of the service's gRPC port (`[::1]:50051` for IPv6), or `dns:///host:port`. */
  readonly target: string;
  /** Sent as `authorization: Bearer <apiKey>` with every call. Keys have a `read` and/or `write` scope. */
  readonly apiKey?: string | undefined;
  /** `true` for TLS with the default roots, `TlsOptions` for your own CA and/or mTLS; plaintext by default. */
  readonly tls?: boolean | TlsOptions | undefined;
  /**
   * Deadline of each unary call, in milliseconds, retries included; default 5000. `null` for none. Every call
   * also takes its own `timeoutMs`. GetOrderStatus has no deadline by default (the server ends it after
   * `maxWait`).
   */
  readonly timeoutMs?: number | null | undefined;
  /** Which failures the client retries by itself; `false` for none. Default: `new RetryPolicy()`. */
  readonly retry?: RetryPolicy | RetryOptions | false | undefined;
  /**
   * The Xsolla project of every call whose request leaves `projectId` unset or 0. When both are 0 the service
   * decides: the project the API key is bound to when it is bound to one, else its default project.
   */
  readonly projectId?: bigint | number | undefined;
  /**
   * Interval of HTTP/2 keepalive pings while calls are open, in milliseconds; default 300000 (the shortest a
   * gRPC server accepts by default), so a long order stream notices a dead connection.
   */
  readonly keepaliveMs?: number | undefined;
}

/** Per-call options of the unary methods. */
export interface CallOptions {
  /** This call's deadline in milliseconds, retries included; `null` for none. Default: the client's. */
  readonly timeoutMs?: number | null | undefined;
  /** Cancels the call (it then rejects with `CancelledError`). */
  readonly signal?: AbortSignal | undefined;
}

/** The options after validation, with their defaults. */
export interface ResolvedOptions {
  readonly baseUrl: string;
  readonly apiKey: string | undefined;
  readonly timeoutMs: number | undefined;
  readonly retry: RetryPolicy;
  readonly projectId: bigint;
  readonly keepaliveMs: number;
  readonly nodeOptions: http2.ClientSessionOptions | http2.SecureClientSessionOptions;
}

/**
 * Validates the options and applies the defaults.
 *
 * @throws TypeError or RangeError for an option that cannot work.
 */
export function resolveOptions(options: ClientOptions): ResolvedOptions {
  const tls = options.tls ?? false;
  const host = parseTarget(options.target);
  const apiKey = options.apiKey;
  // An API key with a control character cannot be an HTTP header value; say so now rather than on every call.
  if (apiKey !== undefined && (apiKey === "" || /\p{Cc}/u.test(apiKey))) {
    throw new TypeError("apiKey must be a non-empty string without control characters");
  }
  let nodeOptions: http2.ClientSessionOptions | http2.SecureClientSessionOptions = {};
  if (typeof tls === "object") {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      throw new TypeError("tls.cert and tls.key go together (mTLS): give both or neither");
    }
    nodeOptions = {
      ...(tls.ca !== undefined && { ca: tls.ca }),
      ...(tls.cert !== undefined && { cert: tls.cert }),
      ...(tls.key !== undefined && { key: tls.key }),
      ...(tls.serverName !== undefined && { servername: tls.serverName }),
    };
  }
  const projectId = BigInt(options.projectId ?? 0);
  if (projectId < 0n) {
    throw new RangeError(`projectId must be >= 0, not ${projectId}`);
  }
  const retry = options.retry;
  return {
    baseUrl: `${tls === false ? "http" : "https"}://${host}`,
    apiKey,
    timeoutMs: validTimeout("timeoutMs", options.timeoutMs === undefined ? 5000 : options.timeoutMs),
    retry: retry === false ? RetryPolicy.NONE : retry instanceof RetryPolicy ? retry : new RetryPolicy(retry),
    projectId,
    keepaliveMs: validTimeout("keepaliveMs", options.keepaliveMs ?? 300_000) ?? 300_000,
    nodeOptions,
  };
}

/** Checks a timeout: a positive finite number, or null/undefined for none (returned as undefined). */
export function validTimeout(name: string, value: number | null | undefined): number | undefined {
  if (value === null || value === undefined) {
    return undefined;
  }
  if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`${name} must be a positive number of milliseconds or null, not ${String(value)}`);
  }
  return value;
}

function parseTarget(target: string): string {
  if (typeof target !== "string" || target === "") {
    throw new TypeError("target must be 'host:port'");
  }
  const hostPort = target.startsWith("dns:///") ? target.slice("dns:///".length) : target;
  let url: URL;
  try {
    url = new URL(`http://${hostPort}`);
  } catch {
    throw new TypeError(`target must be 'host:port', not ${JSON.stringify(target)}`);
  }
  if (url.port === "" || url.pathname !== "/" || url.search !== "" || url.username !== "" || hostPort.includes("/")) {
    throw new TypeError(`target must be 'host:port', not ${JSON.stringify(target)}`);
  }
  return url.host;
}

/**
 * The gRPC transport of a client, and the HTTP/2 session it owns (closed by `close()`).
 */
export function createTransport(options: ResolvedOptions): { transport: Transport; session: Http2SessionManager } {
  // Keepalive pings only while calls are open, never on an idle connection: a gRPC server closes connections
  // that ping more often than it allows (too_many_pings), and unary calls have their deadline anyway.
  const session = new Http2SessionManager(
    options.baseUrl,
    { pingIntervalMs: options.keepaliveMs, pingTimeoutMs: 20_000, pingIdleConnection: false },
    options.nodeOptions,
  );
  const interceptors: Interceptor[] = [];
  const apiKey = options.apiKey;
  if (apiKey !== undefined) {
    const value = `Bearer ${apiKey}`;
    interceptors.push((next) => (request) => {
      request.header.set("authorization", value);
      return next(request);
    });
  }
  const transport = createGrpcTransport({ baseUrl: options.baseUrl, sessionManager: session, interceptors });
  return { transport, session };
}
