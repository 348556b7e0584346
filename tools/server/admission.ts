/**
 * Who may generate now: at most `concurrency` at once, their pixel areas together within
 * `pixelBudget`, `queue` more waiting in arrival order (first in, first served, so a large
 * request is not starved by small ones). A waiter whose signal aborts (its client left, its
 * deadline passed) leaves the queue at once.
 */
export interface AdmissionOptions {
  concurrency: number;
  queue: number;
  pixelBudget: number;
}

interface Waiter {
  cost: number;
  start: () => void;
}

export class Admission {
  #running = 0;
  #pixels = 0;
  readonly #waiting: Waiter[] = [];

  constructor(readonly options: AdmissionOptions) {}

  get running(): number {
    return this.#running;
  }
  get waiting(): number {
    return this.#waiting.length;
  }
  /** Pixels of the generations running now. */
  get pixelsInFlight(): number {
    return this.#pixels;
  }

  /** False when the queue is full: the caller answers 503. */
  hasRoom(): boolean {
    return this.#running + this.#waiting.length < this.options.concurrency + this.options.queue;
  }

  /**
   * Waits for a slot for `cost` pixels and returns its release (call it once, when the work has
   * settled). Rejects with `signal.reason` if the signal aborts first.
   */
  enter(cost: number, signal?: AbortSignal): Promise<() => void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(signal!.reason);
        this.#dispatch();
      };
      const waiter: Waiter = {
        cost,
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          this.#running++;
          this.#pixels += cost;
          let released = false;
          resolve(() => {
            if (released) return;
            released = true;
            this.#running--;
            this.#pixels -= cost;
            this.#dispatch();
          });
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiter);
      this.#dispatch();
    });
  }

  #dispatch(): void {
    for (;;) {
      const next = this.#waiting[0];
      if (!next || this.#running >= this.options.concurrency) return;
      // Alone it always fits (the server refuses a cost over the whole budget up front).
      if (this.#running > 0 && this.#pixels + next.cost > this.options.pixelBudget) return;
      this.#waiting.shift();
      next.start();
    }
  }
}
