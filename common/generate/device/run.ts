/**
 * One image's hold on a device: every device tensor the loop is given is tracked here until it
 * is released, and `dispose()` frees whatever is still held (the end of an image, an abort, an
 * error), so nothing outlives the image. The loop's small graphs get one session each per device,
 * made on first use and kept for later images.
 */
import type { Feeds, TensorLike } from '../../pipeline.ts';
import type { SessionLike } from '../feeds.ts';
import { CONCAT, concatGraph, type FloatType } from './step-graph.ts';
import { type DeviceFeeds, type DeviceSessionLike, type DeviceTensor, isDeviceTensor, type SessionDevice } from './types.ts';

/** Who a session call is for: a pipeline component, or the loop's own graphs (scheduler steps, text batching). */
export type LoopRole = 'text_encoder' | 'text_encoder_2' | 'unet' | 'vae_decoder' | 'scheduler' | 'conditioning';

/** hooks.run's shape: on a device, feeds may hold device tensors and `keep` names the outputs that stay there. */
export type SessionCall = (role: LoopRole, session: SessionLike, feeds: DeviceFeeds, keep?: readonly string[], read?: readonly string[]) => Promise<DeviceFeeds>;

/** A CPU tensor or one on the device: what the loop passes between its steps. */
export type LoopTensor = TensorLike | DeviceTensor;

const graphSessions = new WeakMap<SessionDevice, Map<string, Promise<DeviceSessionLike>>>();

export class DeviceRun {
  readonly #held = new Set<DeviceTensor>();

  constructor(
    readonly device: SessionDevice,
    readonly call: SessionCall,
  ) {}

  /** A session for one of the loop's graphs on this device (made once per device and key). */
  graph(key: string, build: () => Uint8Array): Promise<DeviceSessionLike> {
    let sessions = graphSessions.get(this.device);
    if (!sessions) graphSessions.set(this.device, (sessions = new Map()));
    let session = sessions.get(key);
    if (!session) {
      session = this.device.createSession(build());
      session.catch(() => sessions.delete(key));
      sessions.set(key, session);
    }
    return session;
  }

  /** Runs a session through hooks.run; the outputs in `keep` are held until released (or the image ends). */
  async run(role: LoopRole, session: SessionLike, feeds: DeviceFeeds, keep: readonly string[], read: readonly string[] = []): Promise<DeviceFeeds> {
    const outputs = await this.call(role, session, feeds, keep, read);
    for (const t of Object.values(outputs)) if (isDeviceTensor(t)) this.#held.add(t);
    for (const name of keep) if (!outputs[name]) throw new Error(`${role}: the session returned no output "${name}"`);
    return outputs;
  }

  /** Frees tensors the loop no longer needs (CPU values and undefined are let be). */
  release(...tensors: unknown[]): void {
    for (const t of tensors) {
      if (!isDeviceTensor(t) || !this.#held.delete(t)) continue;
      t.dispose();
    }
  }

  /** Everything still held, freed: the end of an image however it ends. */
  dispose(): void {
    for (const t of this.#held) t.dispose();
    this.#held.clear();
  }

  get held(): number {
    return this.#held.size;
  }

  /**
   * concat(parts; axis) as one device tensor of `type`: UNet conditioning batched and joined on
   * the device. A single part already there in that type is returned as it is.
   */
  async concat(parts: readonly LoopTensor[], axis: number, type: FloatType): Promise<DeviceTensor> {
    if (parts.length === 1 && isDeviceTensor(parts[0]) && parts[0].type === type) return parts[0];
    const types = parts.map((p) => floatType(p.type));
    const rank = parts[0].dims.length;
    const key = `concat:${types.join(',')}:${rank}:${axis}:${type}`;
    const session = await this.graph(key, () => concatGraph(types, rank, axis, type));
    const feeds: DeviceFeeds = {};
    parts.forEach((p, i) => (feeds[CONCAT.input(i)] = p));
    const out = await this.run('conditioning', session, feeds, [CONCAT.output]);
    return out[CONCAT.output] as DeviceTensor;
  }
}

function floatType(type: string): FloatType {
  if (type === 'float32' || type === 'float16') return type;
  throw new RangeError(`device loop: a ${type} tensor where float32 or float16 was expected`);
}

/** hooks.run's default: the device API where asked and offered, else `run`. */
export const defaultCall: SessionCall = (_role, session, feeds, keep, read) => {
  if (keep && session.runDevice) return session.runDevice(feeds, keep, read);
  return session.run(feeds as Feeds);
};
