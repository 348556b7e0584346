/**
 * The one `--lora <src>[:scale]` grammar and the one PEFT-config finder, for every command
 * (build, generate, serve's `loras`). `src` is a file, an http(s)/s3 URL or a sha256 digest;
 * the scale is a trailing `:<number>`, so URLs keep their colons and `sha256:<hex>` its own.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { badInput } from '../common/errors.ts';
import { parsePeftConfig, type PeftConfig } from '../common/lora/adapter.ts';

export interface LoraSource {
  /** As given, without the scale. */
  source: string;
  scale: number;
}

export function parseLoraSource(arg: string, flag = '--lora'): LoraSource {
  const m = /^(.*):([^:/\\]*)$/.exec(arg);
  // No colon, a drive letter (`C:\…`), a digest's own `sha256:` or a URL's `host:port/…`: no scale.
  if (!m || !m[1] || /^[a-zA-Z]$/.test(m[1]) || m[1] === 'sha256' || /^(https?|s3)$/i.test(m[1])) return { source: arg, scale: 1 };
  const text = m[2].trim();
  const scale = text === '' ? Number.NaN : Number(text);
  if (!Number.isFinite(scale)) throw badInput(`${flag} ${arg}`, `scale "${m[2]}" is not a finite number`);
  return { source: m[1], scale };
}

/**
 * A PEFT adapter config pairs with its weights as `<stem>.adapter_config.json` beside the
 * file, or as `adapter_config.json` in the same folder (the PEFT save_pretrained layout).
 */
export function findPeftConfig(path: string): string | undefined {
  const stem = basename(path).replace(/\.safetensors$/, '');
  for (const candidate of [join(dirname(path), `${stem}.adapter_config.json`), join(dirname(path), 'adapter_config.json')]) {
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** The PEFT config beside a LoRA file, parsed and checked; undefined when there is none. */
export function readPeftConfig(path: string): { config: PeftConfig; file: string } | undefined {
  const file = findPeftConfig(path);
  if (!file || !existsSync(file)) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw badInput(basename(file), `is not valid JSON (${(e as Error).message})`);
  }
  return { config: parsePeftConfig(json, basename(file)), file };
}
