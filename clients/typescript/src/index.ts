/**
 * The entitlement service's TypeScript client.
 *
 * ```ts
 * import { EntitlementsClient } from "@xsolla-entitlements/client";
 *
 * const client = new EntitlementsClient({ target: "entitlements.internal:50051", apiKey, tls: true });
 * const { active } = await client.checkEntitlement({ userId: "player-1", sku: "vip_pass" });
 * ```
 *
 * @module
 */
export {
  type CheckEntitlementRequestInit,
  type CheckEntitlementsRequestInit,
  EntitlementsClient,
  type GetOrderStatusRequestInit,
  type GrantRequestInit,
  type ListEntitlementsRequestInit,
  type ListLedgerRequestInit,
  type ListSubscriptionsRequestInit,
  type RevokeRequestInit,
  type StreamOptions,
  type WatchEntitlementsRequestInit,
} from "./client.js";
export { MAX_IDS_PER_WATCH_MESSAGE, WatchStream } from "./watch.js";
export {
  AuthenticationError,
  CancelledError,
  ConflictError,
  DeadlineExceededError,
  EntitlementsError,
  InvalidArgumentError,
  isEntitlementsError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  RetryableError,
  ServerError,
  StatusCode,
  type StatusCodeName,
  statusCodeName,
  UnavailableError,
  UnimplementedError,
} from "./errors.js";
export { DEFAULT_MAX_WAIT_MS, type FollowOptions, OrderFollower } from "./follow.js";
export { type CallOptions, type ClientOptions, type TlsOptions, tlsFromFiles } from "./options.js";
export { RetryPolicy, type RetryOptions } from "./retry.js";
// The messages, enums and their schemas (for toJson, fromJson, create), and the service descriptor.
export * from "./gen/entitlements/v1/entitlements_pb.js";
// Durations and timestamps are google.protobuf messages: these convert them.
export { durationFromMs, durationMs, timestampDate, timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";
