/**
 * Following an order across broken streams: `EntitlementsClient.followOrder`.
 *
 * @module
 */
import { clone } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { type EntitlementsError, CancelledError, toEntitlementsError } from "./errors.js";
import {
  type GetOrderStatusRequest,
  GetOrderStatusRequestSchema,
  type OrderStatusUpdate,
} from "./gen/entitlements/v1/entitlements_pb.js";
import { RetryPolicy, sleep } from "./retry.js";

/**
 * How long `followOrder` follows an order in all when the request's `maxWait` is unset: the service's documented
 * default. The first stream is opened as the request says (the service applies its own default); reopened
 * streams ask for what is left of this.
 */
export const DEFAULT_MAX_WAIT_MS = 10 * 60 * 1000;

/** Options of `followOrder`. */
export interface FollowOptions {
  /** Stops following; the iteration then rejects with `CancelledError`. */
  readonly signal?: AbortSignal | undefined;
  /**
   * The waits before opening the stream again. Default: from 100 ms doubling up to 2 s, with jitter. Only the
   * backoff settings are used: reopening goes on until `maxWait` has passed, whatever `maxAttempts` says.
   */
  readonly backoff?: RetryPolicy | undefined;
}

/** Opens one GetOrderStatus stream (the raw stream of the client). */
export type OpenStream = (request: GetOrderStatusRequest, signal: AbortSignal) => AsyncIterable<OrderStatusUpdate>;

/**
 * The updates of one order, each status once, across as many GetOrderStatus streams as it takes.
 *
 * Iterate it once with `for await`. It opens the stream, delivers each update that is new, and when the stream
 * fails with UNAVAILABLE (the replica shut down, the connection dropped) opens it again after a backoff, with
 * `maxWait` reduced by the time already spent. A reopened stream starts with the stored state, usually a status
 * already delivered: it is skipped. An update is new when its status is after the last one delivered (statuses
 * only move forward), when the status is the same and `entitlementsGranted` turned true, or when it is the final
 * `timedOut` message.
 *
 * The iteration ends when a stream ends OK (after DONE, CANCELED or EXPIRED, or the `timedOut` message). It
 * rejects with the stream's error for anything but UNAVAILABLE, with the last UNAVAILABLE error when `maxWait`
 * passed while reopening, and with `CancelledError` when the signal fires or the client is closed. Leaving the
 * loop early (`break`) cancels the open stream.
 */
export class OrderFollower implements AsyncIterable<OrderStatusUpdate> {
  #opens = 0;
  #started = false;
  readonly #request: () => GetOrderStatusRequest;
  readonly #open: OpenStream;
  readonly #signal: AbortSignal | undefined;
  readonly #backoff: RetryPolicy;

  /** @internal Built by `EntitlementsClient.followOrder`. */
  constructor(request: () => GetOrderStatusRequest, open: OpenStream, options: FollowOptions = {}) {
    this.#request = request;
    this.#open = open;
    this.#signal = options.signal;
    this.#backoff = options.backoff ?? new RetryPolicy();
  }

  /** How many times the stream has been opened so far (1 when it never broke). */
  get opens(): number {
    return this.#opens;
  }

  [Symbol.asyncIterator](): AsyncIterator<OrderStatusUpdate> {
    if (this.#started) {
      throw new TypeError("an OrderFollower can be iterated only once; call followOrder again");
    }
    this.#started = true;
    return this.#follow();
  }

  async *#follow(): AsyncGenerator<OrderStatusUpdate, void, undefined> {
    const asked = this.#request();
    const maxWaitMs = asked.maxWait ? durationMs(asked.maxWait) : DEFAULT_MAX_WAIT_MS;
    const started = performance.now();
    const stop = new AbortController();
    const signal = this.#signal ? AbortSignal.any([this.#signal, stop.signal]) : stop.signal;
    let last: OrderStatusUpdate | undefined;
    let lastError: EntitlementsError | undefined;
    let failures = 0;
    try {
      for (;;) {
        const leftMs = maxWaitMs - (performance.now() - started);
        if (lastError !== undefined && leftMs < 1) {
          throw lastError;
        }
        let request = asked;
        if (this.#opens > 0) {
          // A reopened stream follows the order for what is left of the overall maxWait, so the final
          // `timedOut` message comes when the caller asked for it, however many times the stream was reopened.
          request = clone(GetOrderStatusRequestSchema, asked);
          request.maxWait = durationFromMs(Math.max(1, Math.floor(leftMs)));
        }
        this.#opens++;
        try {
          for await (const update of this.#open(request, signal)) {
            failures = 0;
            if (isNew(update, last)) {
              last = update;
              yield update;
            }
          }
          return;
        } catch (error) {
          const failure = toEntitlementsError(error);
          if (failure.code !== "UNAVAILABLE" || signal.aborted) {
            throw failure;
          }
          lastError = failure;
        }
        failures++;
        const waitMs = this.#backoff.backoffMs(failures);
        const remainingMs = maxWaitMs - (performance.now() - started);
        if (waitMs >= remainingMs) {
          throw lastError;
        }
        if (!(await sleep(waitMs, signal))) {
          throw new CancelledError("CANCELLED", "following the order was cancelled by the caller", {
            cause: this.#signal?.reason,
          });
        }
      }
    } finally {
      // Also on `break` in the caller's loop: the open stream is cancelled, not left running.
      stop.abort();
    }
  }
}

function isNew(update: OrderStatusUpdate, last: OrderStatusUpdate | undefined): boolean {
  if (update.timedOut || last === undefined) {
    return true;
  }
  if (update.status > last.status) {
    return true;
  }
  return update.status === last.status && update.entitlementsGranted && !last.entitlementsGranted;
}
