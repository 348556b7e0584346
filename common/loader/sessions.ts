/**
 * One routine for "the first execution provider that works", like onnxruntime's
 * `resolveBackend`: try each in order, remember why each failed, report every fallback.
 * Every place that creates a session (bytes or store files, any component) calls it.
 */
import { FuseloadError } from '../errors.ts';
import type { EngineSession, Provider } from '../pipeline.ts';
import { throwIfAborted } from './download.ts';

export interface Fallback {
  provider: Provider;
  reason: string;
}

export interface CreatedSession {
  session: EngineSession;
  provider: Provider;
  fallbacks: Fallback[];
}

export interface CreateSessionOptions {
  /** Names what is being loaded in messages (`sample/unet`). */
  label: string;
  providers: readonly Provider[];
  /** Creates on one provider; null means "cannot on this path" (the caller then tries another path). */
  create(provider: Provider): Promise<EngineSession | null>;
  warn: (message: string) => void;
  signal?: AbortSignal;
  /** Before and after each attempt. */
  onAttempt?(provider: Provider, done: boolean): void;
  /**
   * Skip warning about fallbacks and return null when every provider fails (the byte path
   * then gives the real reason): for the store-file path, which is only a shortcut.
   */
  quiet?: boolean;
}

export async function createSession(o: CreateSessionOptions): Promise<CreatedSession | null> {
  const fallbacks: Fallback[] = [];
  for (const provider of o.providers) {
    throwIfAborted(o.signal, o.label);
    o.onAttempt?.(provider, false);
    let session: EngineSession | null;
    try {
      session = await o.create(provider);
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      fallbacks.push({ provider, reason });
      if (!o.quiet) o.warn(`${o.label}: ${provider} could not run it (${reason}); trying the next provider`);
      continue;
    }
    if (!session) return null;
    if (o.quiet) for (const f of fallbacks) o.warn(`${o.label}: ${f.provider} could not run it (${f.reason}); trying the next provider`);
    o.onAttempt?.(provider, true);
    return { session, provider, fallbacks };
  }
  if (o.quiet) return null;
  throw new FuseloadError('engine', `${o.label}: no execution provider could run it: ${fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ')}`);
}
