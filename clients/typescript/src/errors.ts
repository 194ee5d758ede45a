/**
 * One error hierarchy for every failure of the client: a call never rejects with anything but an
 * `EntitlementsError` (transport errors, Node.js network errors and the server's status are all translated here).
 *
 * ```
 * EntitlementsError
 * ├── InvalidArgumentError        INVALID_ARGUMENT     fix the request; the message names the field
 * ├── AuthenticationError         UNAUTHENTICATED      missing or unknown API key (or Xsolla rejected the order token)
 * ├── PermissionDeniedError       PERMISSION_DENIED    the key lacks the read/write scope, or the project
 * ├── NotFoundError               NOT_FOUND
 * ├── ConflictError               ALREADY_EXISTS       idempotency key reused with a different request
 * │                               FAILED_PRECONDITION  e.g. sku held as another kind
 * ├── CancelledError              CANCELLED            the caller's AbortSignal, or the client was closed
 * ├── UnimplementedError          UNIMPLEMENTED
 * ├── ServerError                 INTERNAL, UNKNOWN, DATA_LOSS, ABORTED, OUT_OF_RANGE
 * └── RetryableError              (`retryable` is true)
 *     ├── UnavailableError        UNAVAILABLE          the store or the connection; call again, same key
 *     ├── DeadlineExceededError   DEADLINE_EXCEEDED    the deadline passed first; call again, same key
 *     └── ResourceExhaustedError  RESOURCE_EXHAUSTED   too many order streams; later, or another replica
 * ```
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";

/** The gRPC status codes, as gRPC names them (the numbers are gRPC's too). */
export const StatusCode = {
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** A gRPC status code name other than OK, such as `"INVALID_ARGUMENT"`. */
export type StatusCodeName = keyof typeof StatusCode;

const NAMES: ReadonlyMap<number, StatusCodeName> = new Map(
  (Object.entries(StatusCode) as [StatusCodeName, number][]).map(([name, value]) => [value, name]),
);

/** Returns the name of a numeric gRPC status code; `"UNKNOWN"` for numbers gRPC does not define. */
export function statusCodeName(code: number): StatusCodeName {
  return NAMES.get(code) ?? "UNKNOWN";
}

/** Whether `name` is a gRPC status code name other than OK. */
export function isStatusCodeName(name: string): name is StatusCodeName {
  return Object.prototype.hasOwnProperty.call(StatusCode, name);
}

/** Any failure of a call: the gRPC status code and the server's message. */
export class EntitlementsError extends Error {
  /** The gRPC status code name, such as `"INVALID_ARGUMENT"`. */
  readonly code: StatusCodeName;
  /** The server's message as it sent it (or the client's own, for a failure it detected). */
  readonly details: string;

  constructor(code: StatusCodeName, details: string, options?: { cause?: unknown }) {
    super(details ? `${code}: ${details}` : code, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }

  /** The numeric gRPC status code (3 for INVALID_ARGUMENT, ...). */
  get grpcCode(): number {
    return StatusCode[this.code];
  }

  /**
   * Whether calling again, with the same idempotency key, may succeed: UNAVAILABLE, DEADLINE_EXCEEDED and
   * RESOURCE_EXHAUSTED. The client has already retried UNAVAILABLE by its retry policy when this is thrown.
   */
  get retryable(): boolean {
    return false;
  }
}

/** INVALID_ARGUMENT: a field is missing or out of range; the message names it. Do not retry. */
export class InvalidArgumentError extends EntitlementsError {}
/** UNAUTHENTICATED: no or unknown API key (GetOrderStatus: also Xsolla rejected the order token). */
export class AuthenticationError extends EntitlementsError {}
/** PERMISSION_DENIED: the API key lacks the scope the call needs, or is not bound to the request's project. */
export class PermissionDeniedError extends EntitlementsError {}
/** NOT_FOUND: e.g. Xsolla does not know the order. */
export class NotFoundError extends EntitlementsError {}
/** ALREADY_EXISTS (an idempotency key reused with another request) or FAILED_PRECONDITION (e.g. another kind). */
export class ConflictError extends EntitlementsError {}
/** CANCELLED: the caller's AbortSignal fired, the client was closed, or the server cancelled the call. */
export class CancelledError extends EntitlementsError {}
/** UNIMPLEMENTED: the server does not have this RPC. */
export class UnimplementedError extends EntitlementsError {}
/** INTERNAL, UNKNOWN, DATA_LOSS, ABORTED, OUT_OF_RANGE: a fault on the server's side or in between. */
export class ServerError extends EntitlementsError {}

/** A failure that calling again later, with the same idempotency key, may cure. */
export class RetryableError extends EntitlementsError {
  override get retryable(): boolean {
    return true;
  }
}
/** UNAVAILABLE: the service or its store could not be reached; nothing was written. */
export class UnavailableError extends RetryableError {}
/** DEADLINE_EXCEEDED: the call's deadline passed before the answer came; the write may or may not have happened. */
export class DeadlineExceededError extends RetryableError {}
/** RESOURCE_EXHAUSTED: the replica or the API key holds its maximum of order streams. */
export class ResourceExhaustedError extends RetryableError {}

type ErrorClass = new (code: StatusCodeName, details: string, options?: { cause?: unknown }) => EntitlementsError;

const CLASSES: Partial<Record<StatusCodeName, ErrorClass>> = {
  INVALID_ARGUMENT: InvalidArgumentError,
  UNAUTHENTICATED: AuthenticationError,
  PERMISSION_DENIED: PermissionDeniedError,
  NOT_FOUND: NotFoundError,
  ALREADY_EXISTS: ConflictError,
  FAILED_PRECONDITION: ConflictError,
  CANCELLED: CancelledError,
  UNIMPLEMENTED: UnimplementedError,
  UNAVAILABLE: UnavailableError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  RESOURCE_EXHAUSTED: ResourceExhaustedError,
};

/** Builds the error of the class that matches `code`. */
export function errorFor(code: StatusCodeName, details: string, options?: { cause?: unknown }): EntitlementsError {
  const Class = CLASSES[code] ?? ServerError;
  return new Class(code, details, options);
}

/** Whether `value` is an error thrown by this client. */
export function isEntitlementsError(value: unknown): value is EntitlementsError {
  return value instanceof EntitlementsError;
}

// Node.js error codes that mean the connection failed or was lost, not that the server answered. gRPC's other
// implementations report all of these as UNAVAILABLE; Connect reports some as ABORTED or INTERNAL.
const CONNECTION_ERROR_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ERR_STREAM_PREMATURE_CLOSE",
]);
// HTTP/2 session failures, and TLS handshakes that failed (the server's certificate is not trusted or names
// another host, the server wants a client certificate): gRPC reports a connection that could not be set up as
// UNAVAILABLE too.
const CONNECTION_ERROR_PATTERN =
  /^(ERR_HTTP2_|ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$)/;

function causedByConnectionLoss(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e = error; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && (CONNECTION_ERROR_CODES.has(code) || CONNECTION_ERROR_PATTERN.test(code))) {
      return true;
    }
  }
  return false;
}

/**
 * Translates anything a call threw into an `EntitlementsError`.
 *
 * @param error What the transport or the call threw.
 * @param aborted The reason when the caller's signal (or the client's close) ended the call, else undefined.
 */
export function toEntitlementsError(error: unknown, aborted?: unknown): EntitlementsError {
  if (error instanceof EntitlementsError) {
    return error;
  }
  if (aborted !== undefined) {
    if (aborted instanceof EntitlementsError) {
      // The client's close(): a new error per call, so that each has its own stack.
      return errorFor(aborted.code, aborted.details, { cause: error });
    }
    if (aborted instanceof Error && aborted.name === "TimeoutError") {
      // AbortSignal.timeout(): the caller's own deadline.
      return new DeadlineExceededError("DEADLINE_EXCEEDED", `the caller's signal timed out: ${aborted.message}`, {
        cause: error,
      });
    }
    const reason = aborted instanceof Error ? aborted.message : typeof aborted === "string" ? aborted : "aborted";
    return new CancelledError("CANCELLED", `call cancelled by the caller: ${reason}`, { cause: error });
  }
  const connectError = ConnectError.from(error);
  let code = statusCodeName(connectError.code);
  if (code !== "UNAVAILABLE" && causedByConnectionLoss(connectError)) {
    code = "UNAVAILABLE";
  } else if (code === "CANCELLED" && connectError.code === Code.Canceled && isLocalStreamReset(connectError)) {
    // Node.js closes every stream of an HTTP/2 session that dies (the server went away, the connection
    // dropped) with RST_STREAM CANCEL, which Connect reports as CANCELED. The caller did not cancel (that is
    // `aborted` above): for the caller this is a lost connection, which gRPC reports as UNAVAILABLE.
    code = "UNAVAILABLE";
  }
  return errorFor(code, connectError.rawMessage, { cause: error });
}

function isLocalStreamReset(error: ConnectError): boolean {
  return error.rawMessage.startsWith("http/2 stream closed with error code CANCEL");
}
