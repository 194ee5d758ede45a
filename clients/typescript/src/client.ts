/**
 * The client game servers use: `EntitlementsClient`.
 *
 * @module
 */
import { randomUUID } from "node:crypto";
import { clone, create, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import { CancelledError, InvalidArgumentError, toEntitlementsError } from "./errors.js";
import { type FollowOptions, OrderFollower } from "./follow.js";
import {
  CheckEntitlementRequestSchema,
  type CheckEntitlementResponse,
  CheckEntitlementsRequestSchema,
  type CheckEntitlementsResponse,
  type Entitlement,
  EntitlementService,
  type GetOrderStatusRequest,
  GetOrderStatusRequestSchema,
  GrantRequestSchema,
  type GrantResponse,
  ListEntitlementsRequestSchema,
  type ListEntitlementsResponse,
  ListLedgerRequestSchema,
  type ListLedgerResponse,
  ListSubscriptionsRequestSchema,
  type ListSubscriptionsResponse,
  type OrderStatusUpdate,
  RevokeRequestSchema,
  type RevokeResponse,
  WatchEntitlementsRequestSchema,
} from "./gen/entitlements/v1/entitlements_pb.js";
import {
  type CallOptions,
  type ClientOptions,
  createTransport,
  type ResolvedOptions,
  resolveOptions,
  validTimeout,
} from "./options.js";
import { WatchStream } from "./watch.js";

/** A GrantRequest as a plain object: `{ userId, sku, quantity: 5n, idempotencyKey, ... }`. */
export type GrantRequestInit = MessageInitShape<typeof GrantRequestSchema>;
/** A RevokeRequest as a plain object. */
export type RevokeRequestInit = MessageInitShape<typeof RevokeRequestSchema>;
/** A CheckEntitlementRequest as a plain object. */
export type CheckEntitlementRequestInit = MessageInitShape<typeof CheckEntitlementRequestSchema>;
/** A CheckEntitlementsRequest as a plain object: `{ checks: [{ userId, sku }, ...] }`. */
export type CheckEntitlementsRequestInit = MessageInitShape<typeof CheckEntitlementsRequestSchema>;
/** The first message of a WatchEntitlements stream as a plain object: `{ cursor, addUserIds, snapshot, ... }`. */
export type WatchEntitlementsRequestInit = MessageInitShape<typeof WatchEntitlementsRequestSchema>;
/** A ListEntitlementsRequest as a plain object. */
export type ListEntitlementsRequestInit = MessageInitShape<typeof ListEntitlementsRequestSchema>;
/** A ListSubscriptionsRequest as a plain object. */
export type ListSubscriptionsRequestInit = MessageInitShape<typeof ListSubscriptionsRequestSchema>;
/** A ListLedgerRequest as a plain object. */
export type ListLedgerRequestInit = MessageInitShape<typeof ListLedgerRequestSchema>;
/** A GetOrderStatusRequest as a plain object; `maxWait: durationFromMs(300_000)` for five minutes. */
export type GetOrderStatusRequestInit = MessageInitShape<typeof GetOrderStatusRequestSchema>;

/** Per-call options of `getOrderStatus`: no deadline unless you give one. */
export interface StreamOptions {
  /** A deadline for the whole stream, in milliseconds; none by default (the server ends it after `maxWait`). */
  readonly timeoutMs?: number | null | undefined;
  /** Cancels the stream (the iteration then rejects with `CancelledError`). */
  readonly signal?: AbortSignal | undefined;
}

/**
 * The entitlement service's client: one HTTP/2 connection (opened on the first call), shared by every call.
 *
 * Every method rejects only with an `EntitlementsError` subclass (see `errors`). Unary calls have a deadline
 * (5 s by default, retries included) and are retried on UNAVAILABLE by the retry policy, resending the same
 * request, so a Grant or Revoke keeps its idempotency key. Create one client per process and `close()` it on
 * shutdown.
 */
export class EntitlementsClient {
  readonly #options: ResolvedOptions;
  readonly #rpc: Client<typeof EntitlementService>;
  readonly #session: Http2SessionManager;
  readonly #closed = new AbortController();

  /**
   * @throws TypeError or RangeError when an option cannot work (a target that is not `host:port`, a
   *   negative timeout, half an mTLS pair, ...). Nothing is dialed here.
   */
  constructor(options: ClientOptions) {
    this.#options = resolveOptions(options);
    const { transport, session } = createTransport(this.#options);
    this.#rpc = createClient(EntitlementService, transport);
    this.#session = session;
  }

  /**
   * Grants an item to a player (see the .proto for each kind's rules).
   *
   * Without `idempotencyKey` (undefined) the client makes one, a random UUID, that its own retries reuse; a
   * call you repeat yourself after an error then gets a new key and may grant twice. For anything you may
   * retry (a purchase, a reward) pass a key derived from your data, such as `order-${orderId}:${sku}`:
   * replaying it returns the first response with `replayed: true`.
   *
   * @throws InvalidArgumentError, ConflictError (key reused with another request, another kind),
   *   AuthenticationError, PermissionDeniedError, RetryableError (call again with the same key), ...
   */
  async grant(request: GrantRequestInit, options?: CallOptions): Promise<GrantResponse> {
    const message = this.#message(GrantRequestSchema, request);
    if (request.idempotencyKey === undefined) {
      message.idempotencyKey = randomUUID();
    }
    return this.#unary((req, opts) => this.#rpc.grant(req, opts), message, options);
  }

  /**
   * Removes an item from a player completely; `revoked` is false when there was nothing to remove. The
   * idempotency key works as in `grant`.
   */
  async revoke(request: RevokeRequestInit, options?: CallOptions): Promise<RevokeResponse> {
    const message = this.#message(RevokeRequestSchema, request);
    if (request.idempotencyKey === undefined) {
      message.idempotencyKey = randomUUID();
    }
    return this.#unary((req, opts) => this.#rpc.revoke(req, opts), message, options);
  }

  /** Tells whether a player holds an item now (`active`), with the stored entitlement when there is one. */
  async checkEntitlement(
    request: CheckEntitlementRequestInit,
    options?: CallOptions,
  ): Promise<CheckEntitlementResponse> {
    const message = this.#message(CheckEntitlementRequestSchema, request);
    return this.#unary((req, opts) => this.#rpc.checkEntitlement(req, opts), message, options);
  }

  /**
   * Checks up to 1,000 (player, sku) pairs in one call: `results[i]` answers `checks[i]` as `checkEntitlement`
   * would. One bad pair rejects the whole call with `InvalidArgumentError` naming it (`checks[1].sku: ...`); no
   * pair, or more than 1,000, names `checks`. A read: retried on UNAVAILABLE within the deadline.
   */
  async checkEntitlements(
    request: CheckEntitlementsRequestInit,
    options?: CallOptions,
  ): Promise<CheckEntitlementsResponse> {
    const message = this.#message(CheckEntitlementsRequestSchema, request);
    return this.#unary((req, opts) => this.#rpc.checkEntitlements(req, opts), message, options);
  }

  /**
   * Opens the change stream of one project with `first` as its first message (project, `cursor` to resume,
   * `allPlayers` or the first `addUserIds`, `heartbeatInterval`): see `WatchStream`. The call starts when you
   * iterate. No deadline unless `options.timeoutMs`; `options.signal` or `close()` cancels it.
   *
   * ```ts
   * const stream = client.watchEntitlements({ addUserIds: ["player-1"], snapshot: true });
   * for await (const message of stream) {
   *   if (message.event.case === "change") cursor = message.cursor;
   * }
   * ```
   */
  watchEntitlements(first: WatchEntitlementsRequestInit, options?: StreamOptions): WatchStream {
    const message = this.#message(WatchEntitlementsRequestSchema, first);
    const timeoutMs = validTimeout("timeoutMs", options?.timeoutMs);
    return new WatchStream(
      message,
      (requests, signal) =>
        this.#rpc.watchEntitlements(requests, timeoutMs === undefined ? { signal } : { signal, timeoutMs }),
      this.#signal(options?.signal),
    );
  }

  /**
   * One page of a player's entitlements, in sku order. A page may hold fewer than `pageSize`, even none, while
   * `nextPageToken` is set: only an empty token ends the listing. `entitlements()` pages for you.
   */
  async listEntitlements(
    request: ListEntitlementsRequestInit,
    options?: CallOptions,
  ): Promise<ListEntitlementsResponse> {
    const message = this.#message(ListEntitlementsRequestSchema, request);
    return this.#unary((req, opts) => this.#rpc.listEntitlements(req, opts), message, options);
  }

  /**
   * Every entitlement of a player, page after page (`for await (const e of client.entitlements({ userId }))`),
   * from `pageToken` (the first page when empty). Each page is one call with its own deadline and retries; an
   * error ends the iteration with that error.
   */
  async *entitlements(
    request: ListEntitlementsRequestInit,
    options?: CallOptions,
  ): AsyncGenerator<Entitlement, void, undefined> {
    const message = this.#message(ListEntitlementsRequestSchema, request);
    for (;;) {
      const page = await this.#unary((req, opts) => this.#rpc.listEntitlements(req, opts), message, options);
      yield* page.entitlements;
      if (page.nextPageToken === "") {
        return;
      }
      message.pageToken = page.nextPageToken;
    }
  }

  /** A player's subscriptions, in the shape of Xsolla's user subscriptions API (`hasMore` for the next page). */
  async listSubscriptions(
    request: ListSubscriptionsRequestInit,
    options?: CallOptions,
  ): Promise<ListSubscriptionsResponse> {
    const message = this.#message(ListSubscriptionsRequestSchema, request);
    return this.#unary((req, opts) => this.#rpc.listSubscriptions(req, opts), message, options);
  }

  /** One page of a player's audit ledger, newest first (`nextPageToken` for older entries). */
  async listLedger(request: ListLedgerRequestInit, options?: CallOptions): Promise<ListLedgerResponse> {
    const message = this.#message(ListLedgerRequestSchema, request);
    return this.#unary((req, opts) => this.#rpc.listLedger(req, opts), message, options);
  }

  /**
   * The raw GetOrderStatus stream: one open, no reopening (`followOrder` reopens). It starts when you iterate;
   * leaving the loop early cancels the call. No deadline unless `options.timeoutMs`: the server ends the stream
   * after a terminal status or `maxWait`.
   */
  async *getOrderStatus(
    request: GetOrderStatusRequestInit,
    options?: StreamOptions,
  ): AsyncGenerator<OrderStatusUpdate, void, undefined> {
    const message = this.#message(GetOrderStatusRequestSchema, request);
    yield* this.#stream(message, options?.signal, validTimeout("timeoutMs", options?.timeoutMs));
  }

  /**
   * Follows an order until it is done, across broken streams, delivering each status once (see
   * `OrderFollower`). `maxWait` is the overall time to follow, 10 minutes (the service's default) when unset.
   *
   * ```ts
   * const follower = client.followOrder({ orderId, userId, maxWait: durationFromMs(300_000) });
   * for await (const update of follower) {
   *   if (update.entitlementsGranted) break;
   * }
   * ```
   */
  followOrder(request: GetOrderStatusRequestInit, options?: FollowOptions): OrderFollower {
    // The request is built when the iteration starts, so that a bad one rejects it like any other error.
    const message = () => this.#message(GetOrderStatusRequestSchema, request);
    return new OrderFollower(message, (req, signal) => this.#stream(req, signal, undefined), options);
  }

  /**
   * Closes the connection. Calls still running reject with `CancelledError`, and so does every later call.
   * Idempotent.
   */
  close(): Promise<void> {
    if (!this.#closed.signal.aborted) {
      const reason = new CancelledError("CANCELLED", "the client was closed");
      this.#closed.abort(reason);
      this.#session.abort(reason);
    }
    return Promise.resolve();
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed.signal.aborted;
  }

  /** A copy of the request as its message, with the client's project when the request gives none. */
  #message<Desc extends DescMessage>(
    schema: Desc,
    init: MessageInitShape<Desc>,
  ): MessageShape<Desc> & { projectId: bigint } {
    let message: MessageShape<Desc> & { projectId: bigint };
    try {
      // create() returns a message it is given as it is: clone it, so that filling in the project or the key
      // never changes the caller's object.
      message = clone(schema, create(schema, init)) as MessageShape<Desc> & { projectId: bigint };
    } catch (error) {
      // A value the field cannot hold (an int64 out of range, a string for a number): nothing is sent.
      const reason = error instanceof Error ? error.message : String(error);
      throw new InvalidArgumentError("INVALID_ARGUMENT", `request: ${reason}`, { cause: error });
    }
    if (message.projectId === 0n) {
      message.projectId = this.#options.projectId;
    }
    return message;
  }

  /** The signal of one call: the caller's, and the client's close. */
  #signal(signal: AbortSignal | undefined): AbortSignal {
    return signal ? AbortSignal.any([signal, this.#closed.signal]) : this.#closed.signal;
  }

  async #unary<Req, Res>(
    call: (request: Req, options: { signal: AbortSignal; timeoutMs?: number }) => Promise<Res>,
    request: Req,
    options: CallOptions | undefined,
  ): Promise<Res> {
    const timeoutMs =
      options?.timeoutMs === undefined ? this.#options.timeoutMs : validTimeout("timeoutMs", options.timeoutMs);
    const signal = this.#signal(options?.signal);
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const attempt = async (remainingMs: number | undefined): Promise<Res> => {
      if (signal.aborted) {
        throw toEntitlementsError(signal.reason, signal.reason);
      }
      try {
        return await call(request, remainingMs === undefined ? { signal } : { signal, timeoutMs: remainingMs });
      } catch (error) {
        throw toEntitlementsError(error, signal.aborted ? signal.reason : undefined);
      }
    };
    try {
      return await this.#options.retry.run(attempt, deadline, signal);
    } catch (error) {
      // A wait between attempts cut short by the signal ends with the last attempt's error: say cancelled.
      throw signal.aborted ? toEntitlementsError(signal.reason, signal.reason) : error;
    }
  }

  async *#stream(
    request: GetOrderStatusRequest,
    callerSignal: AbortSignal | undefined,
    timeoutMs: number | undefined,
  ): AsyncGenerator<OrderStatusUpdate, void, undefined> {
    // Connect's stream does not cancel the call when the consumer stops iterating: this controller does.
    const done = new AbortController();
    const caller = this.#signal(callerSignal);
    const signal = AbortSignal.any([caller, done.signal]);
    try {
      if (caller.aborted) {
        throw toEntitlementsError(caller.reason, caller.reason);
      }
      const options = timeoutMs === undefined ? { signal } : { signal, timeoutMs };
      try {
        yield* this.#rpc.getOrderStatus(request, options);
      } catch (error) {
        throw toEntitlementsError(error, caller.aborted ? caller.reason : undefined);
      }
    } finally {
      done.abort();
    }
  }
}
