/**
 * The raw WatchEntitlements stream: `EntitlementsClient.watchEntitlements`.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { CancelledError, InvalidArgumentError, toEntitlementsError } from "./errors.js";
import {
  type WatchEntitlementsRequest,
  WatchEntitlementsRequestSchema,
  type WatchEntitlementsResponse,
} from "./gen/entitlements/v1/entitlements_pb.js";

/** The service's limit on players added or removed by one message of the stream. */
export const MAX_IDS_PER_WATCH_MESSAGE = 10_000;

/** Opens the call: the requests to send (the first one first) and the signal that cancels it. */
export type OpenWatch = (
  requests: AsyncIterable<WatchEntitlementsRequest>,
  signal: AbortSignal,
) => AsyncIterable<WatchEntitlementsResponse>;

/**
 * One open WatchEntitlements call (see the .proto): iterate it with `for await` for the changes (each with the
 * cursor after it), snapshots and heartbeats; `addPlayers` and `removePlayers` change the players watched while
 * it is open; `close()` (or leaving the loop) cancels it. It is not reopened when it breaks: open a new one with
 * the last `cursor` received (codes UNAVAILABLE, CANCELLED from a stopping server), or without a cursor and with
 * snapshots after OUT_OF_RANGE (the cursor is older than the history kept).
 *
 * The iteration rejects with an `EntitlementsError` (`CancelledError` after `close()` or the signal), and ends
 * when the service ends the stream without an error. Iterate it once.
 */
export class WatchStream implements AsyncIterable<WatchEntitlementsResponse> {
  readonly #pending: WatchEntitlementsRequest[] = [];
  #wake: (() => void) | undefined;
  #iterated = false;
  readonly #done = new AbortController();
  readonly #caller: AbortSignal;
  readonly #open: OpenWatch;

  /** @internal Built by `EntitlementsClient.watchEntitlements`. */
  constructor(first: WatchEntitlementsRequest, open: OpenWatch, caller: AbortSignal) {
    this.#pending.push(first);
    this.#open = open;
    this.#caller = caller;
  }

  /** Starts watching `ids` (in messages of at most 10,000); with `snapshot`, each is answered by a snapshot. */
  addPlayers(ids: readonly string[], snapshot = false): void {
    for (let i = 0; i < ids.length; i += MAX_IDS_PER_WATCH_MESSAGE) {
      this.#send({ addUserIds: ids.slice(i, i + MAX_IDS_PER_WATCH_MESSAGE), snapshot });
    }
  }

  /** Stops watching `ids` (in messages of at most 10,000). */
  removePlayers(ids: readonly string[]): void {
    for (let i = 0; i < ids.length; i += MAX_IDS_PER_WATCH_MESSAGE) {
      this.#send({ removeUserIds: ids.slice(i, i + MAX_IDS_PER_WATCH_MESSAGE) });
    }
  }

  /** Cancels the call; the iteration rejects with `CancelledError`. Idempotent. */
  close(): void {
    if (!this.#done.signal.aborted) {
      this.#done.abort(new CancelledError("CANCELLED", "the watch stream was closed"));
      this.#wake?.();
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<WatchEntitlementsResponse, void, undefined> {
    if (this.#iterated) {
      throw new InvalidArgumentError("INVALID_ARGUMENT", "a WatchStream is iterated once");
    }
    this.#iterated = true;
    const signal = AbortSignal.any([this.#caller, this.#done.signal]);
    try {
      if (signal.aborted) {
        throw toEntitlementsError(signal.reason, signal.reason);
      }
      try {
        yield* this.#open(this.#requests(signal), signal);
      } catch (error) {
        throw toEntitlementsError(error, signal.aborted ? signal.reason : undefined);
      }
    } finally {
      this.close();
    }
  }

  #send(init: Parameters<typeof create<typeof WatchEntitlementsRequestSchema>>[1]): void {
    if (this.#done.signal.aborted) {
      return; // the stream is over: the iteration says why
    }
    this.#pending.push(create(WatchEntitlementsRequestSchema, init));
    this.#wake?.();
  }

  /** The messages to send, as they are queued, until the stream ends. */
  async *#requests(signal: AbortSignal): AsyncGenerator<WatchEntitlementsRequest, void, undefined> {
    signal.addEventListener("abort", () => this.#wake?.(), { once: true });
    for (;;) {
      while (this.#pending.length > 0) {
        yield this.#pending.shift() as WatchEntitlementsRequest;
      }
      if (signal.aborted) {
        return;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
  }
}
