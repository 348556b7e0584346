"""A tiny CLIP-style BPE tokenizer (HuggingFace tokenizers format) and a Python encoder that matches it."""
import json
import os
import re
import unicodedata

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LEN = 16
CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def _word_symbols(w):
    return list(w[:-1]) + [w[-1] + "</w>"]


def train_bpe(words):
    """Greedy BPE over the word list (each word once) until every word is one token.

    Applying the merges in rank order reproduces the training segmentation, so every word
    encodes to exactly one token."""
    seqs = {w: _word_symbols(w) for w in words}
    merges = []
    while True:
        counts = {}
        for s in seqs.values():
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


class Tokenizer:
    def __init__(self, words):
        self.merges = train_bpe(words)
        vocab = list(CHARS) + [c + "</w>" for c in CHARS]
        for a, b in self.merges:
            t = a + b
            if t not in vocab:
                vocab.append(t)
        vocab += [BOS, EOS]  # EOS is the highest id, as in CLIP (pooler = argmax)
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]
        self.pad_id = self.eos_id

    def bpe(self, word):
        s = _word_symbols(word)
        while len(s) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(s, s[1:]))]
            r, i = min(pairs)
            if r == 1 << 30:
                break
            s = s[:i] + [s[i] + s[i + 1]] + s[i + 2:]
        return s

    def tokens(self, text):
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
        out = []
        for piece in re.split(r"[^a-z0-9\s]+", text):
            for w in piece.split():
                out += self.bpe(w)
        return out

    def encode(self, text, pad=True):
        ids = [self.bos_id] + [self.vocab.get(t, self.eos_id) for t in self.tokens(text)][: MAX_LEN - 2] + [self.eos_id]
        if pad:
            ids += [self.pad_id] * (MAX_LEN - len(ids))
        return ids

    def save(self, d):
        os.makedirs(d, exist_ok=True)
        added = [
            {"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": t == BOS and False, "special": True}
            for t in (BOS, EOS)
        ]
        tj = {
            "version": "1.0",
            "truncation": {"direction": "Right", "max_length": MAX_LEN, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": MAX_LEN}, "direction": "Right", "pad_to_multiple_of": None,
                        "pad_id": self.pad_id, "pad_type_id": 0, "pad_token": EOS},
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"},
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "[^a-z0-9\\s]+"}, "behavior": "Removed", "invert": False},
                {"type": "WhitespaceSplit"},
            ]},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": EOS, "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": self.vocab, "merges": [f"{a} {b}" for a, b in self.merges],
            },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": EOS, "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": EOS, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": EOS, "type_id": 1}}],
                "special_tokens": {
                    BOS: {"id": BOS, "ids": [self.bos_id], "tokens": [BOS]},
                    EOS: {"id": EOS, "ids": [self.eos_id], "tokens": [EOS]},
                },
            },
            "decoder": {"type": "BPEDecoder", "suffix": "</w>"},
        }
        cfg = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": MAX_LEN,
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": EOS,
            "unk_token": EOS,
            "do_lower_case": True,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": True,
            "errors": "replace",
        }
        dump = lambda name, obj: open(os.path.join(d, name), "w").write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        dump("tokenizer.json", tj)
        dump("tokenizer_config.json", cfg)
        dump("special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
        dump("vocab.json", self.vocab)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
