/**
 * Progress for one load: per-file events plus the aggregate over every blob, in the
 * `{ phase, file, loaded, total }` shape any progress bar can use (DESIGN.md, "Interfaces").
 */
import type { BlobRef } from '../manifest.ts';
import type { ProgressEvent, ProgressPhase } from '../pipeline.ts';

export class Progress {
  total = 0;
  readonly #received = new Map<string, number>();
  #loaded = 0;
  constructor(private readonly listener?: (event: ProgressEvent) => void) {}

  emit(phase: ProgressPhase, file: string, loaded: number, total: number, extra?: Partial<ProgressEvent>): void {
    if (!this.listener) return;
    try {
      this.listener({ phase, file, loaded, total, aggregate: { loaded: this.#loaded, total: this.total }, ...extra });
    } catch {
      // A throwing progress bar must not break the load.
    }
  }
  bytes(phase: ProgressPhase, ref: BlobRef, received: number): void {
    this.#loaded += received - (this.#received.get(ref.digest) ?? 0);
    this.#received.set(ref.digest, received);
    this.emit(phase, ref.digest, received, ref.size);
  }
  blobDone(ref: BlobRef, phase: 'memory' | 'store'): void {
    this.bytes(phase === 'memory' ? 'download' : 'store', ref, ref.size);
  }
}
