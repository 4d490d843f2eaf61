#!/usr/bin/env python3
"""Byte-level BPE trainer of the tokenize stage: corpus.jsonl -> merges.txt and meta.json.

The corpus is split into pieces by the encoder's own pre-tokenizer (bpe_tokenizer.PIECE_RE, on
bytes), the distinct pieces are counted, and merges are learned greedily: at each step the most
frequent adjacent pair of tokens (ties broken by the smaller pair) becomes a new token. Pair counts
are kept up to date incrementally: a merge only revisits the distinct pieces that contain the
merged pair (an index from pair to pieces), and a lazy max-heap finds the next best pair. The base
vocabulary is the 256 bytes, so the tokenizer can encode anything.

Training stops at the requested vocabulary size, when no pair occurs twice, or when the time budget
is spent; meta.json records the vocabulary size actually reached.

Usage: train_bpe.py [--corpus data/corpus.jsonl] [--out tokenizer] [--vocab-size 8192]
                    [--max-seconds S] [--max-bytes B]
"""

import argparse
import collections
import heapq
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import bpe_tokenizer  # noqa: E402  (the pre-tokenizer must be the encoder's)


def count_pieces(path, max_bytes):
    """Counter of pre-tokenized pieces over the corpus texts (at most max_bytes of text)."""
    counts = collections.Counter()
    total = docs = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                continue
            if not isinstance(text, str) or not text:
                continue
            data = text.encode("utf-8", "surrogatepass")
            if max_bytes and total + len(data) > max_bytes:
                data = data[: max(0, max_bytes - total)]
            counts.update(bpe_tokenizer.pieces(data))
            total += len(data)
            docs += 1
            if max_bytes and total >= max_bytes:
                break
    return counts, total, docs


def learn_merges(counts, n_merges, deadline=None, log=None):
    """The merges (pairs of ids, in rank order) learned from a Counter of byte pieces."""
    words = [list(w) for w in counts]
    freqs = list(counts.values())
    pair_counts = collections.defaultdict(int)
    where = collections.defaultdict(set)  # pair -> indices of words that may contain it
    for wi, w in enumerate(words):
        f = freqs[wi]
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    # Max-heap of (-count, left, right). An entry may be stale (the pair's count has dropped
    # since); it is then pushed back with its current count when it reaches the top.
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        if deadline is not None and len(merges) % 64 == 0 and time.monotonic() > deadline:
            if log:
                log("time budget spent after %d merges" % len(merges))
            break
        neg, a, b = heapq.heappop(heap)
        cur = pair_counts.get((a, b), 0)
        if cur != -neg:
            if cur > 0:
                heapq.heappush(heap, (-cur, a, b))
            continue
        if cur < 2:
            break
        new = 256 + len(merges)
        merges.append((a, b))
        touched = set()
        for wi in where.pop((a, b)):
            w = words[wi]
            n = len(w)
            out = []
            i = 0
            while i < n:
                if i + 1 < n and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) == n:
                continue  # the pair left this word in an earlier merge
            f = freqs[wi]
            for pair in zip(w, w[1:]):
                pair_counts[pair] -= f
            for pair in zip(out, out[1:]):
                pair_counts[pair] += f
                if new in pair:
                    where[pair].add(wi)
                    touched.add(pair)
            words[wi] = out
        del pair_counts[(a, b)]
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
    return merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--out", default="tokenizer")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--max-seconds", type=float, default=None, help="time budget of the merges")
    ap.add_argument("--max-bytes", type=int, default=0, help="train on at most this much text")
    args = ap.parse_args()
    t0 = time.monotonic()

    def log(msg):
        sys.stderr.write("[train_bpe %.1fs] %s\n" % (time.monotonic() - t0, msg))

    if args.vocab_size < 256:
        ap.error("--vocab-size must be at least 256")
    counts, total, docs = count_pieces(args.corpus, args.max_bytes)
    log("%d docs, %d bytes, %d distinct pieces" % (docs, total, len(counts)))
    deadline = t0 + args.max_seconds if args.max_seconds else None
    merges = learn_merges(counts, args.vocab_size - 256, deadline, log)
    vocab_size = 256 + len(merges)

    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, "merges.txt.tmp")
    with open(tmp, "w") as f:
        f.writelines("%d %d\n" % m for m in merges)
    os.replace(tmp, os.path.join(args.out, "merges.txt"))
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump({"vocab_size": vocab_size}, f)
        f.write("\n")
    log("%d merges, vocab_size %d written to %s" % (len(merges), vocab_size, args.out))


if __name__ == "__main__":
    main()
