#!/usr/bin/env python3
"""Writes fuzz/corpus/tokenizer_json/qwen3_tiny_small: the qwen3-tiny fixture's tokenizer.json
(normalizer, pre-tokenizer, decoder, added tokens as they are) with its BPE vocabulary cut to
the 256 byte tokens plus the first merges whose parts and result stay in the vocabulary, so
that a fuzz input stays a few KB. Usage: python3 fuzz/make_tokenizer_seed.py"""
import json, os

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
t = json.load(open(os.path.join(root, "models/qwen3-tiny/tokenizer.json"), encoding="utf-8"))
vocab = t["model"]["vocab"]
keep = {k: v for k, v in vocab.items() if v < 256}
merges = []
for m in t["model"]["merges"]:
    a, b = m if isinstance(m, list) else m.split(" ", 1)
    if a in keep and b in keep and (a + b) in vocab and len(merges) < 120:
        keep[a + b] = vocab[a + b]
        merges.append([a, b])
ids = sorted(keep.values())
remap = {old: new for new, old in enumerate(ids)}
t["model"]["vocab"] = {k: remap[v] for k, v in sorted(keep.items(), key=lambda kv: kv[1])}
t["model"]["merges"] = merges
for i, a in enumerate(t["added_tokens"]):
    a["id"] = len(ids) + i
out = os.path.join(root, "fuzz/corpus/tokenizer_json")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "qwen3_tiny_small"), "w", encoding="utf-8") as f:
    json.dump(t, f, ensure_ascii=False, separators=(",", ":"))
