/**
 * The prompt tokenizer of a diffusers pipeline (CLIP BPE for Stable Diffusion), through
 * `@huggingface/tokenizers`, encoding the way the pipelines call it:
 * `tokenizer(prompt, padding="max_length", max_length=model_max_length, truncation=True)`.
 * Ids keep BOS/EOS when a long prompt is cut, and pad with the config's pad token.
 *
 * Assets: `tokenizer/tokenizer.json` + `tokenizer/tokenizer_config.json`, or — for exports that
 * ship only the slow tokenizer's files — `tokenizer/vocab.json` + `tokenizer/merges.txt`, from
 * which the tokenizer.json that transformers' CLIPConverter would write is built here.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { badInput, FuseloadError } from '../errors.ts';

export interface TokenizerAssets {
  /** `tokenizer.json`, parsed. */
  tokenizerJson?: unknown;
  /** `tokenizer_config.json`, parsed (model_max_length, pad/bos/eos/unk tokens). */
  tokenizerConfig?: unknown;
  /** `vocab.json`, parsed: used with `merges` when there is no tokenizer.json. */
  vocab?: unknown;
  /** `merges.txt`, as text. */
  merges?: string;
}

export interface PromptTokenizerOptions {
  /** Sequence length; default `model_max_length` from the config, else 77 (CLIP). */
  maxLength?: number;
  /** For messages: the folder the assets came from. Default `tokenizer`. */
  folder?: string;
}

export interface PromptEncoding {
  /** Exactly `maxLength` ids: BOS, the prompt's tokens, EOS, then padding. */
  ids: Int32Array;
  /** How many ids are not padding (BOS and EOS included). */
  length: number;
  /** Whether tokens were cut to fit (diffusers truncates too; it logs what it dropped). */
  truncated: boolean;
}

export interface PromptTokenizer {
  readonly maxLength: number;
  readonly padId: number;
  encode(text: string): PromptEncoding;
}

/** CLIP's default when a config gives no usable model_max_length (transformers uses 1e30 for "unset"). */
const CLIP_MAX_LENGTH = 77;
/** The slow CLIPTokenizer keeps the first 49152 − 256 − 2 merges of merges.txt. */
const CLIP_MAX_MERGES = 49152 - 256 - 2;

export function createPromptTokenizer(assets: TokenizerAssets, options: PromptTokenizerOptions = {}): PromptTokenizer {
  const folder = options.folder ?? 'tokenizer';
  const config = objectOrEmpty(assets.tokenizerConfig, `${folder}/tokenizer_config.json`);
  let json = assets.tokenizerJson;
  if (json === undefined) {
    if (assets.vocab === undefined || assets.merges === undefined) {
      throw badInput(folder, 'needs tokenizer.json, or vocab.json and merges.txt');
    }
    json = clipTokenizerJson(assets.vocab, assets.merges, config, folder);
  } else if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw badInput(`${folder}/tokenizer.json`, 'must be a JSON object');
  }
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(json as object, config);
  } catch (e) {
    throw new FuseloadError('unsupported', `${folder}/tokenizer.json: ${(e as Error).message}`, { cause: e });
  }

  const maxLength = options.maxLength ?? configMaxLength(config);
  if (!Number.isInteger(maxLength) || maxLength < 2) throw badInput('maxLength', `must be an integer ≥ 2, got ${maxLength}`);
  const padToken = tokenContent(config.pad_token) ?? '<|endoftext|>';
  const padId = tokenizer.token_to_id(padToken) ?? tokenizer.token_to_id(tokenContent(config.eos_token) ?? '<|endoftext|>');
  if (padId === undefined) throw badInput(`${folder}/tokenizer_config.json`, `pad token "${padToken}" is not in the vocabulary`);

  const pad = padId;
  // The last few prompts' encodings: a prompt is usually generated more than once (seeds, negatives).
  const recent = new Map<string, PromptEncoding>();
  return {
    maxLength,
    padId,
    encode(text: string): PromptEncoding {
      const encoding = recent.get(text) ?? encodeText(text);
      recent.delete(text);
      recent.set(text, encoding);
      if (recent.size > RECENT_PROMPTS) recent.delete(recent.keys().next().value!);
      return { ...encoding, ids: encoding.ids.slice() };
    },
  };

  function encodeText(text: string): PromptEncoding {
    const full = tokenizer.encode(text, { add_special_tokens: true }).ids;
    const bare = tokenizer.encode(text, { add_special_tokens: false }).ids;
    // The post-processor's template around the text (CLIP: BOS … EOS), found by where the bare ids sit.
    const at = bare.length ? indexOfRun(full, bare) : -1;
    const prefix = at >= 0 ? full.slice(0, at) : full;
    const suffix = at >= 0 ? full.slice(at + bare.length) : [];
    const room = maxLength - prefix.length - suffix.length;
    if (room < 0) throw badInput('maxLength', `${maxLength} is shorter than the tokenizer's special tokens`);
    const body = at >= 0 ? bare.slice(0, room) : [];
    const kept = [...prefix, ...body, ...suffix];
    const ids = new Int32Array(maxLength).fill(pad);
    ids.set(kept);
    return { ids, length: kept.length, truncated: at >= 0 && bare.length > room };
  }
}

const RECENT_PROMPTS = 16;

/**
 * The tokenizer.json of a CLIP BPE (transformers' CLIPConverter): NFC, collapse whitespace,
 * lowercase; split on CLIP's pattern, byte-level; BPE with `</w>` word ends; BOS … EOS.
 */
export function clipTokenizerJson(vocab: unknown, merges: string, config: Record<string, unknown> = {}, folder = 'tokenizer'): object {
  if (vocab === null || typeof vocab !== 'object' || Array.isArray(vocab)) throw badInput(`${folder}/vocab.json`, 'must be a JSON object of token → id');
  const ids = vocab as Record<string, unknown>;
  for (const [token, id] of Object.entries(ids)) {
    if (!Number.isInteger(id) || (id as number) < 0) throw badInput(`${folder}/vocab.json`, `token "${token.slice(0, 20)}" has id ${String(id)}, not an integer ≥ 0`);
  }
  if (typeof merges !== 'string') throw badInput(`${folder}/merges.txt`, 'must be text');
  let lines = merges.replace(/\r\n/g, '\n').trim().split('\n');
  if (lines[0]?.startsWith('#')) lines = lines.slice(1); // "#version: 0.2"
  lines = lines.slice(0, CLIP_MAX_MERGES).filter((l) => l.length > 0);
  for (const [n, line] of lines.entries()) {
    if (line.split(' ').length !== 2) throw badInput(`${folder}/merges.txt`, `line ${n + 2} is not two tokens separated by one space`);
  }
  const bos = tokenContent(config.bos_token) ?? '<|startoftext|>';
  const eos = tokenContent(config.eos_token) ?? '<|endoftext|>';
  const unk = tokenContent(config.unk_token) ?? '<|endoftext|>';
  const pad = tokenContent(config.pad_token);
  for (const [what, token] of [['bos_token', bos], ['eos_token', eos]] as const) {
    if (!(token in ids)) throw badInput(`${folder}/vocab.json`, `has no ${what} "${token}"`);
  }
  const specials = [...new Set([bos, eos, unk, ...(pad ? [pad] : [])])].filter((t) => t in ids);
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content) => ({
      id: ids[content],
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: true,
      special: true,
    })),
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: { type: 'RobertaProcessing', sep: [eos, ids[eos]], cls: [bos, ids[bos]], trim_offsets: false, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab: ids,
      merges: lines,
    },
  };
}

/**
 * Reads a pipeline's tokenizer assets by their diffusers paths through `read` (the loader's
 * blob path: verified, cached), preferring tokenizer.json. `folder`: `tokenizer` or `tokenizer_2`.
 */
export async function readTokenizerAssets(
  read: (path: string) => Promise<Uint8Array | string | null>,
  folder = 'tokenizer',
): Promise<TokenizerAssets> {
  const text = async (name: string): Promise<string | undefined> => {
    const got = await read(`${folder}/${name}`);
    return got === null ? undefined : typeof got === 'string' ? got : new TextDecoder().decode(got);
  };
  const parse = (name: string, body: string | undefined): unknown => {
    if (body === undefined) return undefined;
    try {
      return JSON.parse(body);
    } catch {
      throw badInput(`${folder}/${name}`, 'is not valid JSON');
    }
  };
  const tokenizerConfig = parse('tokenizer_config.json', await text('tokenizer_config.json'));
  const tokenizerJson = parse('tokenizer.json', await text('tokenizer.json'));
  if (tokenizerJson !== undefined) return { tokenizerJson, tokenizerConfig };
  return { tokenizerConfig, vocab: parse('vocab.json', await text('vocab.json')), merges: await text('merges.txt') };
}

function configMaxLength(config: Record<string, unknown>): number {
  const n = config.model_max_length;
  return typeof n === 'number' && Number.isInteger(n) && n >= 2 && n <= 4096 ? n : CLIP_MAX_LENGTH;
}

/** A special token as tokenizer_config.json writes it: a string or an AddedToken object. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

function objectOrEmpty(v: unknown, what: string): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw badInput(what, 'must be a JSON object');
  return v as Record<string, unknown>;
}

function indexOfRun(haystack: number[], needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
