/**
 * SHA-256 of files on a worker thread, so hashing the base's external data (for its digest
 * and the cache key) overlaps the build pass instead of preceding it. Plain JavaScript in an
 * eval'd worker: it needs no TypeScript loader.
 */
import { Worker } from 'node:worker_threads';
import type { Digest } from '../../common/digest.ts';

const SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
const buf = Buffer.allocUnsafe(8 << 20);
const out = [];
for (const path of workerData.paths) {
  const hash = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      parentPort.postMessage({ progress: n });
    }
  } finally {
    closeSync(fd);
  }
  out.push('sha256:' + hash.digest('hex'));
}
parentPort.postMessage({ digests: out });
`;

export interface FileHashing {
  digests: Promise<Digest[]>;
  /** Stops the worker (when the build fails early); the promise then rejects. */
  cancel(): Promise<void>;
}

export function hashFilesInWorker(paths: string[], onProgress?: (bytes: number) => void): FileHashing {
  const worker = new Worker(SOURCE, { eval: true, workerData: { paths } });
  const digests = new Promise<Digest[]>((resolve, reject) => {
    worker.on('message', (m: { progress?: number; digests?: Digest[] }) => {
      if (m.progress !== undefined) onProgress?.(m.progress);
      if (m.digests) resolve(m.digests);
    });
    worker.on('error', reject);
    worker.on('exit', (code) => reject(new Error(`hash worker exited with ${code}`)));
  });
  digests.catch(() => {}); // awaited by the build; a cancelled one is not an unhandled rejection
  return {
    digests,
    cancel: async () => {
      await worker.terminate();
    },
  };
}
