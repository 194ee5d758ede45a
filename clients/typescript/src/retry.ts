/**
 * The retry policy: which failed calls the client calls again by itself, and how long it waits in between.
 *
 * @module
 */
import { DeadlineExceededError, type EntitlementsError, isStatusCodeName, type StatusCodeName } from "./errors.js";

/** Settings of a `RetryPolicy`; every field has a default. */
export interface RetryOptions {
  /** Attempts in all, the first included: 1 (no retries) to 10. Default 5. */
  readonly maxAttempts?: number;
  /** Upper bound of the first wait, in milliseconds; > 0. Default 100. */
  readonly initialBackoffMs?: number;
  /** Upper bound of any wait, in milliseconds; >= initialBackoffMs. Default 2000. */
  readonly maxBackoffMs?: number;
  /** How much the bound grows per attempt; >= 1. Default 2. */
  readonly backoffMultiplier?: number;
  /**
   * The status codes that are retried. Default `["UNAVAILABLE"]`: the service returns it when nothing was
   * written (its store could not be reached in time), and the client when the connection failed.
   */
  readonly retryableCodes?: readonly StatusCodeName[];
}

const MAX_ATTEMPTS_LIMIT = 10;

/**
 * Exponential backoff with full jitter, within the call's deadline.
 *
 * Before retry n (n = 1 for the second attempt) the client waits a random time between 0 and
 * `min(initialBackoffMs * backoffMultiplier ** (n - 1), maxBackoffMs)`, as gRPC's own retry policy does. Every
 * attempt sends the same request message, so a Grant or Revoke keeps its idempotency key and the server applies
 * it once however many attempts reach it. Retries stop at the call's deadline: when the next wait would end after
 * it, the call fails with the last error.
 *
 * Instances are immutable and may be shared between clients.
 */
export class RetryPolicy {
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly backoffMultiplier: number;
  readonly retryableCodes: readonly StatusCodeName[];

  /**
   * @throws RangeError A value is out of range or a code name is unknown.
   */
  constructor(options: RetryOptions = {}) {
    const maxAttempts = options.maxAttempts ?? 5;
    const initialBackoffMs = options.initialBackoffMs ?? 100;
    const maxBackoffMs = options.maxBackoffMs ?? Math.max(2000, initialBackoffMs);
    const backoffMultiplier = options.backoffMultiplier ?? 2;
    const retryableCodes = options.retryableCodes ?? ["UNAVAILABLE"];
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > MAX_ATTEMPTS_LIMIT) {
      throw new RangeError(`retry.maxAttempts must be an integer 1..${MAX_ATTEMPTS_LIMIT}, not ${maxAttempts}`);
    }
    if (!(initialBackoffMs > 0) || !Number.isFinite(initialBackoffMs)) {
      throw new RangeError(`retry.initialBackoffMs must be > 0, not ${initialBackoffMs}`);
    }
    if (!(maxBackoffMs >= initialBackoffMs) || !Number.isFinite(maxBackoffMs)) {
      throw new RangeError(`retry.maxBackoffMs must be >= initialBackoffMs (${initialBackoffMs}), not ${maxBackoffMs}`);
    }
    if (!(backoffMultiplier >= 1) || !Number.isFinite(backoffMultiplier)) {
      throw new RangeError(`retry.backoffMultiplier must be >= 1, not ${backoffMultiplier}`);
    }
    const unknown = retryableCodes.filter((code) => !isStatusCodeName(code));
    if (unknown.length > 0) {
      throw new RangeError(`retry.retryableCodes: unknown status codes ${unknown.join(", ")}`);
    }
    this.maxAttempts = maxAttempts;
    this.initialBackoffMs = initialBackoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.backoffMultiplier = backoffMultiplier;
    this.retryableCodes = Object.freeze([...retryableCodes]);
    Object.freeze(this);
  }

  /** The policy that never retries. */
  static readonly NONE: RetryPolicy = new RetryPolicy({ maxAttempts: 1 });

  /**
   * The upper bound of the wait before retry `retry` (1 for the second attempt), in milliseconds, before jitter.
   */
  backoffBoundMs(retry: number): number {
    const bound = this.initialBackoffMs * this.backoffMultiplier ** Math.max(0, retry - 1);
    return Math.min(bound, this.maxBackoffMs);
  }

  /** A jittered wait before retry `retry`: uniform in [0, backoffBoundMs(retry)). */
  backoffMs(retry: number, random: () => number = Math.random): number {
    return random() * this.backoffBoundMs(retry);
  }

  /** Whether the policy retries this error (its code is one of `retryableCodes`). */
  retries(error: EntitlementsError): boolean {
    return this.retryableCodes.includes(error.code);
  }

  /**
   * Runs `attempt` until it succeeds, fails with an error this policy does not retry, runs out of attempts, or
   * the deadline or the signal ends it.
   *
   * @param attempt One attempt; it gets the milliseconds left until the deadline (undefined for none), and must
   *   reject with an `EntitlementsError`.
   * @param deadline Epoch milliseconds (`Date.now()` clock) after which no attempt starts; undefined for none.
   * @param signal Stops the waits between attempts (the attempt itself must watch it too).
   */
  async run<T>(
    attempt: (timeoutMs: number | undefined) => Promise<T>,
    deadline: number | undefined,
    signal: AbortSignal,
  ): Promise<T> {
    for (let attempts = 1; ; attempts++) {
      const timeoutMs = deadline === undefined ? undefined : Math.ceil(deadline - Date.now());
      if (timeoutMs !== undefined && timeoutMs <= 0) {
        throw new DeadlineExceededError("DEADLINE_EXCEEDED", "the call's deadline passed before it could be sent");
      }
      try {
        return await attempt(timeoutMs);
      } catch (error) {
        const failure = error as EntitlementsError;
        if (attempts >= this.maxAttempts || !this.retries(failure) || signal.aborted) {
          throw failure;
        }
        const waitMs = this.backoffMs(attempts);
        if (deadline !== undefined && Date.now() + waitMs >= deadline) {
          throw failure;
        }
        if (!(await sleep(waitMs, signal))) {
          throw failure;
        }
      }
    }
  }
}

/**
 * Waits `ms` milliseconds; resolves false early when `signal` aborts, true otherwise. Never rejects.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
