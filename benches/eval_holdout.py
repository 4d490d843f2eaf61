#!/usr/bin/env python3
"""Does a validation set predict the score on T? A page-level holdout against a holdout of whole
families, each with two models, validation bits per byte against bits per byte on the world's T.

The corpus is a perfect crawl of the world: the gold text of every served page (gold.jsonl) and the
text of the target site's /archive/ near-duplicates (not gold, but served: read from their HTML
under web/sites/). SQLite's pages are the pages of sqlite.gptx.test; the archive copies are never
validation documents. Holdouts:

- pages: every 10th SQLite page (sorted by URL) is validation, the rest trains (an agent's choice);
- families (one row per seed): the SQLite pages fall into families, computed from the rule of the
  instructions alone: pages that share a line of 40 bytes or more, or 3% of the smaller page's
  12-word sequences, are one family (text shared by more than 50 pages joins none). Families come
  in the order of their first page in a seeded shuffle of the pages (the world's draw of T), a
  family larger than the budget is skipped, until 400,000 bytes of validation documents (pages of
  2,000..40,000 bytes) are drawn; every page of a drawn family leaves the training corpus.

Models, each trained on the corpus minus the held-out pages and scored on validation and on T:

- reference: tasks/train/reference/train.py within --max-seconds, scored with its lm.py `score`;
- ngram: a memorising byte n-gram like the agent's, contexts of up to 32 bytes, no pruning, no time
  limit, with in-document adaptation (see NGram).

The gate of the eval stage asks |val - T| / T <= 10%. Runs inside the sandbox image (numpy):

    benches/eval_holdout.sh WORLD_DIR [OUT]

Prints a table and writes results.json to the output folder.
"""

import argparse
import glob
import html
import json
import os
import random
import re
import subprocess
import time

from reference_lm import read_jsonl, score, train, write_jsonl

HOST = "sqlite.gptx.test"
GATE = 0.10
BUDGET = 400_000
DOC_BYTES = (2_000, 40_000)


def nbytes(text):
    return len(text.encode("utf-8"))


BLOCK = re.compile(r"<(h1|h2|h3|p|li|pre)\b[^>]*>(.*?)</\1>", re.S)


def page_text(page):
    """The main text of a site page: its content blocks, tags dropped, joined by blank lines."""
    m = re.search(r'<div class="content">\n(.*?)</div>\n</div>\n<div class="footer">', page, re.S)
    body = m.group(1) if m else page
    return "\n\n".join(html.unescape(re.sub(r"<[^>]+>", "", b)) for _k, b in BLOCK.findall(body))


def crawl(world):
    """Every served page's text as {"url", "text", "sqlite", "archive"}: gold, then archive copies."""
    docs = [{"url": d["url"], "text": d["text"]} for d in read_jsonl(os.path.join(world, "gold.jsonl"))]
    root = os.path.join(world, "web", "sites", HOST)
    for path in sorted(glob.glob(os.path.join(root, "archive", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = page_text(f.read())
            if text:
                docs.append({"url": f"http://{HOST}/" + os.path.relpath(path, root), "text": text})
    for d in docs:
        d["sqlite"] = d["url"].startswith(f"http://{HOST}/")
        d["archive"] = d["url"].startswith(f"http://{HOST}/archive/")
    return docs


# ---------------------------------------------------------------------------------------------------
# Families, from the text of the instructions


def families(texts, line_bytes=40, words=12, share=0.03, common=50):
    """The family of every page (an index of one of its members): union-find over shared text."""
    keys = []
    for t in texts:
        lines = {("L", l) for l in t.split("\n") if len(l.rstrip("\r").encode()) >= line_bytes}
        w = re.findall(r"[^ \t\n\f\r]+", t)  # ASCII whitespace, as split_ascii_whitespace
        seqs = {hash(" ".join(w[i:i + words])) for i in range(len(w) - words + 1)}
        keys.append(({hash(k) for k in lines}, seqs))
    parent = list(range(len(texts)))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a, b):
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    for part in (0, 1):
        owners = {}
        for i, k in enumerate(keys):
            for h in k[part]:
                owners.setdefault(h, []).append(i)
        shared = {}
        for o in owners.values():
            if 2 <= len(o) <= common:
                if part == 0:
                    for j in o[1:]:
                        join(o[0], j)
                else:
                    for x in range(len(o)):
                        for y in o[x + 1:]:
                            shared[(o[x], y)] = shared.get((o[x], y), 0) + 1
        for (a, b), n in shared.items():
            if n >= share * min(len(keys[a][1]), len(keys[b][1])):
                join(a, b)
    return [root(i) for i in range(len(texts))]


def draw_families(pages, fam, seed):
    """(validation pages, every page of the drawn families), indices into `pages`."""
    members = {}
    for i, f in enumerate(fam):
        members.setdefault(f, []).append(i)
    order = list(range(len(pages)))
    random.Random(seed).shuffle(order)
    seen, val, removed, total = set(), [], set(), 0
    for i in order:
        if total >= BUDGET:
            break
        if fam[i] in seen:
            continue
        seen.add(fam[i])
        ms = members[fam[i]]
        docs = [p for p in ms if not pages[p]["archive"]
                and DOC_BYTES[0] <= nbytes(pages[p]["text"]) <= DOC_BYTES[1]]
        if not docs or sum(nbytes(pages[p]["text"]) for p in ms) > BUDGET:
            continue
        total += sum(nbytes(pages[p]["text"]) for p in docs)
        val += docs
        removed.update(ms)
    return val, removed


# ---------------------------------------------------------------------------------------------------
# Models


def reference_bpb(reference, train_docs, evals, work, seconds):
    """Trains the reference on `train_docs`; bits per byte on each document list of `evals`."""
    corpus, model = os.path.join(work, "corpus.jsonl"), os.path.join(work, "model")
    write_jsonl(corpus, [{"url": d["url"], "text": d["text"]} for d in train_docs])
    t0 = time.time()
    train(reference, corpus, model, seconds)
    out = [score(reference, model, docs) for docs in evals]
    subprocess.run(["rm", "-rf", corpus, model], check=True)
    return out, time.time() - t0


class NGram:
    """A memorising byte n-gram with in-document adaptation: interpolated Kneser-Ney over contexts of
    the ORDERS last bytes, from p_-1 = 1/256 up:

        p_k(x) = (max(S(x) - d(S(x)), 0) + A max(Dc(x) - DD, 0) + (E_S + A DD U + B) p_k-1(x))
                 / (sum S + A sum Dc + B)

    S: training counts of (context, x), raw at the top order and Kneser-Ney continuation counts
    below it (the number of distinct contexts of the next order ending in this one), discounted by
    d1, d2, d3+ by count, E_S the discounted mass; Dc: counts in the document read so far (causal),
    U the number of distinct bytes after the context there. Normalised over the 256 bytes because
    every discount is at most its count. Contexts are hashed (64 bits); only the contexts of the
    scored documents are kept, so nothing is pruned, however long the context: memory of the
    training text is perfect.
    """

    ORDERS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32]
    DD, A, B = 0.7, 8.0, 0.3  # document discount, weight of document counts, escape

    def __init__(self):
        import numpy as np
        self.np = np
        g = np.random.default_rng(0x5EED)
        self.R = g.integers(0, 2**63, size=257, dtype=np.uint64) | np.uint64(1)
        self.X = g.integers(0, 2**63, size=256, dtype=np.uint64) << np.uint64(1)
        self.M = np.uint64(0x9E3779B97F4A7C15)

    @staticmethod
    def discounts(k):
        return 0.69 if k <= 2 else 0.86, 1.5 if 3 <= k <= 8 else 1.2, 1.8 if k <= 8 else 1.44

    def _keys(self, texts):
        """Per order: (context hash, pair hash) of every byte of `texts` (contexts stop at the start
        of a document: symbol 0 before it)."""
        np, kmax = self.np, max(self.ORDERS)
        lens = [len(t) for t in texts]
        sym = np.zeros(sum(lens) + kmax * len(texts), dtype=np.int64)
        pos = np.empty(sum(lens), dtype=np.int64)
        at = p = 0
        for t in texts:
            at += kmax
            sym[at:at + len(t)] = np.frombuffer(t, dtype=np.uint8).astype(np.int64) + 1
            pos[p:p + len(t)] = np.arange(at, at + len(t))
            at, p = at + len(t), p + len(t)
        xk = self.X[sym[pos] - 1]
        h, k = np.full(len(pos), 0x1234567, dtype=np.uint64), 0
        for order in self.ORDERS:
            while k < order:
                k += 1
                h = (h + self.R[sym[pos - k]]) * self.M
            yield h, h ^ xk

    def bpb(self, train, evals, groups):
        """Trained on the byte strings `train`, bits per byte on each group (lists of indices) of the
        byte strings `evals`."""
        np = self.np
        edoc = np.repeat(np.arange(len(evals)), [len(t) for t in evals])
        ex = np.concatenate([np.frombuffer(t, dtype=np.uint8) for t in evals]).astype(np.int64)
        n = len(edoc)
        p = np.full(n, 1 / 256)
        tk, ek = self._keys(train), self._keys(evals)
        cur = next(tk)
        for k in self.ORDERS:
            (h, pk), nxt, (eh, ep) = cur, next(tk, None), next(ek)
            # training pairs whose context occurs in the evaluated text
            qck = np.unique(eh)
            idx = np.minimum(np.searchsorted(qck, h), len(qck) - 1)
            hit = qck[idx] == h
            upk, inv, cnt = np.unique(pk[hit], return_inverse=True, return_counts=True)
            pctx = np.zeros(len(upk), dtype=np.int64)
            pctx[inv] = idx[hit]
            if nxt is not None:  # continuation counts: distinct next-order pairs ending in this one
                cnt = np.bincount(inv[np.unique(nxt[1][hit], return_index=True)[1]],
                                  minlength=len(upk))
            del h, pk, idx, hit, inv
            ci = np.searchsorted(qck, eh)
            pi = np.minimum(np.searchsorted(upk, ep), len(upk) - 1)
            S = np.where(upk[pi] == ep, cnt[pi], 0)
            d1, d2, d3 = self.discounts(k)
            tot = lambda w: np.bincount(pctx, weights=w, minlength=len(qck))[ci]
            C = tot(cnt)
            ES = tot(np.where(cnt >= 3, d3, np.where(cnt == 2, d2, d1)))
            # document counts: earlier positions of the same document with this context (pair)
            g = edoc * len(qck) + ci
            dC, o, start = _earlier(np, g)
            dc = _earlier(np, g * 256 + ex)[0]
            f = (dc == 0)[o].astype(np.int64)
            cs = np.cumsum(f) - f
            U = np.empty(n, dtype=np.int64)
            U[o] = cs - cs[start]
            num = (np.maximum(S - np.where(S >= 3, d3, np.where(S == 2, d2, d1)), 0)
                   + self.A * np.maximum(dc - self.DD, 0) + (ES + self.A * self.DD * U + self.B) * p)
            den = C + self.A * dC + self.B
            p = np.where(C + dC > 0, num / den, p)
            cur = nxt
        bits = -np.log2(p)
        return [float(bits[np.isin(edoc, gi)].sum() / max(1, np.isin(edoc, gi).sum()))
                for gi in groups]


def _earlier(np, g):
    """For each position, how many earlier positions share its key g; the stable sort of g; and
    for each sorted position, the sorted index its group starts at."""
    o = np.argsort(g, kind="stable")
    gs = g[o]
    idx = np.arange(len(g))
    start = np.maximum.accumulate(np.where(np.r_[True, gs[1:] != gs[:-1]], idx, 0))
    out = np.empty(len(g), dtype=np.int64)
    out[o] = idx - start
    return out, o, start


# ---------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="the built world's directory")
    ap.add_argument("--reference", required=True, help="tasks/train/reference")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=int, default=240)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default="ngram,reference")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    test = read_jsonl(os.path.join(a.world, "hidden", "test.jsonl"))
    docs = crawl(a.world)
    sq = [i for i, d in enumerate(docs) if d["sqlite"]]
    fam = families([docs[i]["text"] for i in sq])
    fam = [sq[f] for f in fam]
    sizes = {}
    for f in fam:
        sizes[f] = sizes.get(f, 0) + 1
    print(f"crawl: {len(docs)} pages, {sum(nbytes(d['text']) for d in docs)} bytes; SQLite "
          f"{len(sq)} pages ({sum(docs[i]['archive'] for i in sq)} archive copies) in {len(sizes)} "
          f"families, {sum(1 for v in sizes.values() if v > 1)} of 2+ pages, largest "
          f"{max(sizes.values())}; families in {time.time() - t_start:.0f} s", flush=True)
    own = sorted((i for i in sq if not docs[i]["archive"]), key=lambda i: docs[i]["url"])
    holdouts = [("pages", None, own[::10], set(own[::10]))]
    for seed in range(a.seeds):
        val, removed = draw_families([docs[i] for i in sq], fam, seed)
        holdouts.append(("families", seed, [sq[v] for v in val], {sq[r] for r in removed}))
    # Training order: SQLite's pages first (a trainer short of time keeps the first documents).
    train_order = sq + [i for i in range(len(docs)) if not docs[i]["sqlite"]]
    rows = []
    if "ngram" in a.models:
        model, tb = NGram(), [d["text"].encode() for d in test]
        for name, seed, val, removed in holdouts:
            t1 = time.time()
            vt = [docs[i]["text"].encode() for i in val]
            vb, tbpb = model.bpb([docs[i]["text"].encode() for i in train_order if i not in removed],
                                 vt + tb, [list(range(len(vt))), list(range(len(vt), len(vt) + len(tb)))])
            rows.append(row("ngram", name, seed, val, docs, vb, tbpb, time.time() - t1))
    if "reference" in a.models:
        for name, seed, val, removed in holdouts:
            train = [docs[i] for i in train_order if i not in removed]
            (vb, tb), secs = reference_bpb(a.reference, train, [[docs[i] for i in val], test],
                                           a.out, a.max_seconds)
            rows.append(row("reference", name, seed, val, docs, vb, tb, secs))
    print(f"\n{'model':>9} {'holdout':>8} {'seed':>4} {'val docs':>8} {'val bytes':>9} "
          f"{'val bpb':>7} {'T bpb':>6} {'gap':>6} gate")
    for r in rows:
        print(f"{r['model']:>9} {r['holdout']:>8} {'-' if r['seed'] is None else r['seed']:>4} "
              f"{r['val_docs']:>8} {r['val_bytes']:>9} {r['val_bpb']:7.4f} {r['t_bpb']:6.4f} "
              f"{100 * r['gap']:5.1f}% {'yes' if r['within_gate'] else 'no'}")
    result = {"world": os.path.basename(os.path.normpath(a.world)), "t_documents": len(test),
              "t_bytes": sum(nbytes(d["text"]) for d in test), "crawl_pages": len(docs),
              "sqlite_pages": len(sq), "sqlite_families": len(sizes),
              "max_seconds": a.max_seconds, "seconds": round(time.time() - t_start), "rows": rows}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{time.time() - t_start:.0f} s in all; {os.path.join(a.out, 'results.json')}")


def row(model, name, seed, val, docs, vb, tb, secs):
    gap = abs(vb - tb) / tb
    r = {"model": model, "holdout": name, "seed": seed, "val_docs": len(val),
         "val_bytes": sum(nbytes(docs[i]["text"]) for i in val), "val_bpb": round(vb, 4),
         "t_bpb": round(tb, 4), "gap": round(gap, 4), "within_gate": gap <= GATE,
         "seconds": round(secs)}
    print(json.dumps(r), flush=True)
    return r


if __name__ == "__main__":
    main()
