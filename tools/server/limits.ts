/**
 * The generation server's limits and their defaults, apart from the app so the CLI can show
 * the defaults in `--help` without loading the server.
 */
export interface ServerLimits {
  /** Largest width and height in pixels. Default 512. */
  maxSide: number;
  /** Width and height must be multiples of this (8 keeps VAEs happy). Default 8. */
  sideMultiple: number;
  /** Request body bytes. Default 16 KiB. */
  maxBodyBytes: number;
  /** Generations running at once. Default 1 (one GPU, one session at a time). */
  concurrency: number;
  /** Generations waiting beyond those; one more is refused with 503. Default 8. */
  queue: number;
  /** LoRAs per request. Default 8. */
  maxLoras: number;
  /**
   * Pipelines (model × LoRA set × scales) kept warm; the least recently used one past this is
   * disposed, so a client cycling through LoRA scales cannot pile up sessions. Default 4.
   */
  maxPipelines: number;
  /**
   * The memory budget, as pixels (width × height) generating at once: a generation's buffers
   * grow with its area. A request larger than the whole budget is refused (413); others wait
   * until their area fits beside those running. Default (0): maxSide² × concurrency, i.e.
   * `concurrency` generations at the largest size — 262 144 pixels with the defaults.
   */
  pixelBudget: number;
  /**
   * Milliseconds one generation may take from admission (queue wait, load, run). Past it the
   * request is answered 504 and its load or generation is aborted, freeing the slot. Default 300 s.
   */
  generationTimeoutMs: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxSide: 512,
  sideMultiple: 8,
  maxBodyBytes: 16 * 1024,
  concurrency: 1,
  queue: 8,
  maxLoras: 8,
  maxPipelines: 4,
  pixelBudget: 0,
  generationTimeoutMs: 300_000,
};

/** The budget in pixels `limits` stands for (its default worked out). */
export function pixelBudgetOf(limits: Pick<ServerLimits, 'pixelBudget' | 'maxSide' | 'concurrency'>): number {
  return limits.pixelBudget > 0 ? limits.pixelBudget : limits.maxSide * limits.maxSide * limits.concurrency;
}
