#!/usr/bin/env python3
"""Splits the crawled corpus into training and validation documents for the reference trainer.

A document goes to validation when the first byte of the SHA-256 of its URL is below
256 × share, so the split depends on nothing but the URLs: rebuilding from the same crawl gives
the same split. The validation file is what the eval stage's report names as unseen text.

Usage: split.py [--corpus data/corpus.jsonl] [--train data/train.jsonl] [--val data/val.jsonl]
                [--share 0.10]
"""

import argparse
import hashlib
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--train", default="data/train.jsonl")
    ap.add_argument("--val", default="data/val.jsonl")
    ap.add_argument("--share", type=float, default=0.10)
    args = ap.parse_args()
    cut = int(256 * args.share)
    n_train = n_val = b_train = b_val = 0
    with open(args.corpus, encoding="utf-8", errors="replace") as src, \
            open(args.train, "w", encoding="utf-8") as tr, \
            open(args.val, "w", encoding="utf-8") as va:
        for line in src:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or not doc["text"]:
                continue
            url = str(doc.get("url", ""))
            size = len(doc["text"].encode("utf-8"))
            out = json.dumps({"url": url, "text": doc["text"]}, ensure_ascii=False) + "\n"
            if hashlib.sha256(url.encode("utf-8")).digest()[0] < cut:
                va.write(out)
                n_val += 1
                b_val += size
            else:
                tr.write(out)
                n_train += 1
                b_train += size
    print(f"split: {n_train} training documents ({b_train} B), {n_val} validation ({b_val} B)")


if __name__ == "__main__":
    main()
