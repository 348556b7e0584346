/**
 * The prompt tokenizer: a CLIP-style tokenizer.json built here (a handful of words and merges),
 * and the same tokenizer from the slow tokenizer's vocab.json + merges.txt.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { clipTokenizerJson, createPromptTokenizer, readTokenizerAssets } from '../../common/generate/tokenizer.ts';

const WORDS = ['a', 'red', 'cat', 'on', 'the', 'mat'];

/** A CLIP BPE over WORDS: every character (alone and word-final), and merges that build each word. */
function tinyClip(): { vocab: Record<string, number>; merges: string[] } {
  const vocab: Record<string, number> = {};
  const add = (t: string) => (vocab[t] ??= Object.keys(vocab).length);
  for (const c of [...new Set(WORDS.join(''))].sort()) {
    add(c);
    add(`${c}</w>`);
  }
  const merges: string[] = [];
  for (const w of WORDS) {
    let parts = [...w.slice(0, -1), `${w.at(-1)}</w>`];
    while (parts.length > 1) {
      const merge = `${parts[0]} ${parts[1]}`;
      if (!merges.includes(merge)) merges.push(merge);
      add(parts[0] + parts[1]);
      parts = [parts[0] + parts[1], ...parts.slice(2)];
    }
  }
  add('<|startoftext|>');
  add('<|endoftext|>');
  return { vocab, merges };
}

const { vocab, merges } = tinyClip();
const BOS = vocab['<|startoftext|>'];
const EOS = vocab['<|endoftext|>'];
const id = (w: string) => vocab[`${w}</w>`];
const config = { model_max_length: 77, pad_token: '<|endoftext|>', bos_token: '<|startoftext|>', eos_token: '<|endoftext|>' };
const tokenizerJson = clipTokenizerJson(vocab, `#version: 0.2\n${merges.join('\n')}\n`, config);

describe('CLIP prompt tokenizer', () => {
  const tok = createPromptTokenizer({ tokenizerJson, tokenizerConfig: config });

  it('gives BOS, one id per word, EOS, then pads to 77 with the pad token', () => {
    const e = tok.encode('a red cat on the mat');
    expect(e.ids).toBeInstanceOf(Int32Array);
    expect(e.ids.length).toBe(77);
    expect(Array.from(e.ids.subarray(0, 8))).toEqual([BOS, id('a'), id('red'), id('cat'), id('on'), id('the'), id('mat'), EOS]);
    expect(Array.from(e.ids.subarray(8))).toEqual(new Array(69).fill(EOS));
    expect(e.length).toBe(8);
    expect(e.truncated).toBe(false);
  });

  it('lowercases and collapses whitespace like CLIP', () => {
    expect(tok.encode('  A   Red\tCAT ').ids).toEqual(tok.encode('a red cat').ids);
  });

  it('an empty prompt is BOS, EOS and padding', () => {
    const e = tok.encode('');
    expect(Array.from(e.ids.subarray(0, 3))).toEqual([BOS, EOS, EOS]);
    expect(e.length).toBe(2);
  });

  it('truncates an over-long prompt and keeps EOS last (as diffusers does)', () => {
    const e = tok.encode(Array(100).fill('cat').join(' '));
    expect(e.truncated).toBe(true);
    expect(e.length).toBe(77);
    expect(e.ids[0]).toBe(BOS);
    expect(Array.from(e.ids.subarray(1, 76))).toEqual(new Array(75).fill(id('cat')));
    expect(e.ids[76]).toBe(EOS);
    const exact = tok.encode(Array(75).fill('cat').join(' '));
    expect(exact.truncated).toBe(false);
    expect(exact.ids[76]).toBe(EOS);
  });

  it('pads with the configured pad token (SD 2 / SDXL tokenizer_2 use "!")', () => {
    const bang = { ...vocab, '!': Object.keys(vocab).length };
    const json = clipTokenizerJson(bang, merges.join('\n'), { ...config, pad_token: '!' });
    const t = createPromptTokenizer({ tokenizerJson: json, tokenizerConfig: { ...config, pad_token: '!' } });
    expect(t.padId).toBe(bang['!']);
    expect(Array.from(t.encode('cat').ids.subarray(0, 4))).toEqual([BOS, id('cat'), EOS, bang['!']]);
  });

  it('takes AddedToken objects for special tokens and a shorter maxLength', () => {
    const t = createPromptTokenizer(
      { tokenizerJson, tokenizerConfig: { ...config, pad_token: { content: '<|endoftext|>', special: true } } },
      { maxLength: 5 },
    );
    expect(Array.from(t.encode('a red cat on').ids)).toEqual([BOS, id('a'), id('red'), id('cat'), EOS]);
  });

  it('defaults to 77 when model_max_length is transformers\' "unset" 1e30', () => {
    expect(createPromptTokenizer({ tokenizerJson, tokenizerConfig: { ...config, model_max_length: 1e30 } }).maxLength).toBe(77);
  });
});

describe('from vocab.json + merges.txt', () => {
  it('builds the same tokenizer as tokenizer.json', () => {
    const fromFiles = createPromptTokenizer({ vocab, merges: `#version: 0.2\n${merges.join('\n')}\n`, tokenizerConfig: config });
    const fromJson = createPromptTokenizer({ tokenizerJson, tokenizerConfig: config });
    for (const p of ['a red cat', 'the mat on the cat', 'mat!', '']) expect(fromFiles.encode(p).ids).toEqual(fromJson.encode(p).ids);
  });

  it('reads the assets a pipeline ships, by their diffusers paths', async () => {
    const dir = new URL('../fixtures/generate/tiny-sd/', import.meta.url);
    const assets = await readTokenizerAssets(async (path) => {
      try {
        return readFileSync(new URL(path, dir));
      } catch {
        return null;
      }
    });
    expect(assets.tokenizerJson).toBeUndefined();
    expect(assets.merges).toMatch(/^#version/);
    const t = createPromptTokenizer(assets);
    expect(t.maxLength).toBe(77);
    expect(t.encode('a photo of a red cat').length).toBe(8); // BOS, six words, EOS
  });

  it('names the file that is wrong', () => {
    expect(() => createPromptTokenizer({ vocab: { a: 0 }, merges: '' })).toThrow(/^tokenizer\/vocab\.json: has no bos_token "<\|startoftext\|>"$/);
    expect(() => createPromptTokenizer({ vocab, merges: 'a b c' })).toThrow(/^tokenizer\/merges\.txt: line 2 /);
    expect(() => createPromptTokenizer({})).toThrow(/^tokenizer: needs tokenizer\.json, or vocab\.json and merges\.txt$/);
  });
});
