/**
 * Tensors that stay on an engine's device (a WebGPU buffer) between session calls, and the
 * optional session API that passes them: what the generation loop needs to keep latents, text
 * embeddings and the noise prediction on the GPU and read back only the image.
 */
import type { Feeds, TensorLike } from '../../pipeline.ts';

/** A tensor held on a device. It is the holder's to `dispose()`, once, as soon as it is not needed. */
export interface DeviceTensor {
  readonly location: 'device';
  readonly type: string;
  readonly dims: readonly number[];
  dispose(): void;
}

/** Feeds and outputs where any tensor may be on the device. */
export type DeviceFeeds = Record<string, TensorLike | DeviceTensor>;

export function isDeviceTensor(t: unknown): t is DeviceTensor {
  return !!t && typeof t === 'object' && (t as DeviceTensor).location === 'device';
}

/** What a session on a device offers besides `run` (web/ort-engine.ts on WebGPU). */
export interface DeviceSession {
  /**
   * Runs with feeds that may be device tensors (of this device; CPU ones are uploaded) and
   * computes only the outputs named in `keep` (returned as device tensors, the caller's to
   * dispose) and `read` (copied back, each a readback).
   */
  runDevice(feeds: DeviceFeeds, keep: readonly string[], read?: readonly string[]): Promise<DeviceFeeds>;
  /** The device it runs on: sessions with the same `device` pass tensors to each other. */
  readonly device: SessionDevice;
}

export interface SessionDevice {
  /** A session for a small graph on this device (the loop's step math), its outputs kept on the device when asked. */
  createSession(graph: Uint8Array): Promise<DeviceSessionLike>;
  /** Device → CPU copies made so far, by any session on this device. */
  readonly readbacks: number;
  /** Device tensors handed out and not yet disposed. */
  readonly liveTensors: number;
}

/** A session created by `SessionDevice.createSession`. */
export interface DeviceSessionLike extends DeviceSession {
  run(feeds: Feeds): Promise<Feeds>;
  release(): Promise<void>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
}
