/**
 * How much of a load the browser loader takes in memory by default (web/browser-loader.ts,
 * `defaultInMemoryLoadBytes`): an eighth of what `navigator.deviceMemory` says, capped as Chromium
 * caps it, never below the memory tier. Chromium itself is in test/browser/load-paths.test.ts.
 */
import { afterEach, describe, expect, test, vi } from 'vitest';
import { DEFAULT_MEMORY_BUDGET_BYTES, defaultInMemoryLoadBytes } from '../../web/browser-loader.ts';

const MiB = 1024 * 1024;
afterEach(() => vi.unstubAllGlobals());

describe('defaultInMemoryLoadBytes', () => {
  test('an eighth of the device memory, capped at 8 GiB of it, at least the memory tier', () => {
    for (const [gib, want] of [[8, 1024], [16, 1024], [4, 512], [2, 256], [0.5, 256]] as const) {
      vi.stubGlobal('navigator', { deviceMemory: gib });
      expect(defaultInMemoryLoadBytes(DEFAULT_MEMORY_BUDGET_BYTES) / MiB, `deviceMemory ${gib}`).toBe(want);
    }
    vi.stubGlobal('navigator', { deviceMemory: 8 });
    expect(defaultInMemoryLoadBytes(2048 * MiB) / MiB).toBe(2048);
  });

  test('4 GiB of device memory is assumed where the browser does not say', () => {
    vi.stubGlobal('navigator', {});
    expect(defaultInMemoryLoadBytes(DEFAULT_MEMORY_BUDGET_BYTES) / MiB).toBe(512);
  });
});
