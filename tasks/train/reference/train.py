#!/usr/bin/env python3
"""Reference trainer of the train stage: counts the corpus into the tables of lm.py's model.

For each context order the trainer hashes every (context, next byte) pair of the corpus, counts
them (np.unique) and keeps sorted tables:

- pairs: key, count (the raw count at the highest order; below it the Kneser-Ney continuation
  count, the number of distinct contexts of the next order that end in this one);
- contexts: key, total count, number of distinct next bytes, how many of them have count 1 and 2.

When the tables would outgrow SIZE_BUDGET (a large corpus), the higher orders leave out the
contexts seen only once.

The discounts are defaults measured on Python-documentation text. The mixing weights of the
model are fitted on the corpus itself: about a tenth of it (mid-sized documents) is held out, the
rest counted, and the weights are fitted by gradient ascent on the held-out log-likelihood
(vectorised over positions, back-propagated through the chain of orders) for as long as time
allows; then the whole corpus is counted for the final tables.

Usage: train.py [--corpus data/corpus.jsonl] [--out model] [--max-seconds S] [--no-fit]
"""

import argparse
import json
import math
import os
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import lm  # noqa: E402  (the model: hashing and formulas are shared with scoring)

ORDERS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24]


def order_defaults(k):
    """Discounts (static counts 1, 2, 3+; document counts), escape pseudo-count and weight of the
    document counts of order k, measured on Python-documentation text."""
    low, mid = k <= 2, 3 <= k <= 8
    return {"d1": 0.69 if low else 0.86,
            "d2": 1.5 if mid else 1.2,
            "d3": 1.8 if k <= 8 else 1.44,
            "ddyn": 0.75 if mid else 0.6,
            "b": 1.2,
            "a": 2.4 if k <= 5 else 0.9 if k <= 8 else 1.2}


COUNT_SECONDS_PER_BYTE = 8e-6  # one count of the corpus on one CPU, about (a prudent guess)
SIZE_BUDGET = 160_000_000  # bytes of tables; beyond, the higher orders forget contexts seen once
PAIR_BYTES = 16  # table bytes per distinct (context, byte) pair, about

# Fitting the mixing weights on held-out documents.
HOLDOUT_SHARE = 0.1  # of the corpus bytes
HOLDOUT_MAX_BYTES = 150_000
HOLDOUT_DOC_BYTES = (1_000, 40_000)  # documents of about the size of test documents
NEAR_DUPLICATE = 0.5  # share of a held-out document's top-order contexts found in the rest
FIT_ITERATIONS = 400
FIT_WINDOW = 20  # iterations; the fit stops when they gain less than
FIT_TOLERANCE = 2e-4  # nats per byte
FIT_RATE = 0.02
FIT_L2 = 1e-4  # pull towards the initial weights, per position


def initial_theta():
    """Mixing weights that reproduce plain interpolation: component weights proportional to the
    static mass KS, the document mass a * KD and the escape mass ES + ED + b."""
    th = np.zeros((len(ORDERS), 3, lm.NF))
    for i in range(len(ORDERS)):
        th[i, 0, 1] = 1.0
        th[i, 1, 2] = 1.0
        th[i, 1, 0] = math.log(order_defaults(ORDERS[i])["a"])
        th[i, 2, 3] = 1.0
    return th


def make_params(theta):
    table = {f: [order_defaults(k)[f] for k in ORDERS] for f in lm.Params.FIELDS}
    return lm.Params(ORDERS, {**table, "theta": theta})


def log(msg):
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def read_corpus(path):
    """The documents of a JSON-lines corpus, as UTF-8 byte strings (bad lines are skipped)."""
    docs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            text = obj.get("text") if isinstance(obj, dict) else None
            if isinstance(text, str) and text:
                docs.append(text.encode("utf-8", errors="replace"))
    return docs


def symbols(docs, kmax):
    """All documents in one symbol array, each after kmax start symbols; and the byte positions."""
    total = sum(len(d) + kmax for d in docs)
    sym = np.zeros(total, dtype=np.int64)
    pos = np.empty(total - kmax * len(docs), dtype=np.int64)
    at = p = 0
    for d in docs:
        at += kmax
        sym[at: at + len(d)] = np.frombuffer(d, dtype=np.uint8).astype(np.int64) + 1
        pos[p: p + len(d)] = np.arange(at, at + len(d))
        at += len(d)
        p += len(d)
    return sym, pos


def build_tables(docs, orders, budget=None, prune=None):
    """The per-order count tables (see the module docstring) of `docs`, and which orders were pruned.

    A pruned order leaves out the contexts seen only once in the corpus. `prune` says which orders
    to prune; without it, an order is pruned when the tables would otherwise outgrow `budget` bytes
    (as if each order left were as big as this one).
    """
    kmax = max(orders)
    T, X = lm.hash_tables(kmax)
    sym, pos = symbols(docs, kmax)
    x = sym[pos] - 1
    xkey = X[x]
    hashes = lm.context_hashes(sym, pos, orders, T)
    tables, pruned, used = [], [], 0
    cur = None  # (h, inverse, unique pair keys, first index, counts) of the order being finished
    for i in range(len(orders) + 1):
        nxt = None
        if i < len(orders):
            _k, h = next(hashes)
            pk, first, inv, cnt = np.unique(h ^ xkey, return_index=True, return_inverse=True,
                                            return_counts=True)
            nxt = (h, inv, pk, first, cnt)
        if cur is not None:
            h0, inv0, pk0, first0, cnt0 = cur
            if nxt is not None:  # continuation counts: distinct next-order pairs ending in this one
                cont = np.bincount(inv0[nxt[3]], minlength=len(pk0))
            else:
                cont = cnt0
            ctx = h0[first0]
            j = len(tables)
            if prune is not None:
                cut = prune[j]
            else:
                cut = budget is not None and used + PAIR_BYTES * len(pk0) * (len(orders) - j) > budget
            if cut:  # keep the pairs of contexts seen at least twice
                _u, cinv = np.unique(ctx, return_inverse=True)
                keep = np.bincount(cinv, weights=cnt0)[cinv] >= 2
                ctx, first0, cont = ctx[keep], first0[keep], cont[keep]
            tables.append(context_table(ctx, x[first0], cont))
            pruned.append(bool(cut))
            used += sum(a.nbytes for a in tables[-1].values())
        cur = nxt
    return tables, pruned


def _small(a):
    """`a` (non-negative integers) in the smallest unsigned type that holds it."""
    top = int(a.max()) if len(a) else 0
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if top <= np.iinfo(dt).max:
            return a.astype(dt)


def context_table(pair_ctx, pair_x, pc):
    """The tables of one order from its (context hash, next byte, count) triples.

    Contexts are keyed by the top 32 bits of their hash, pairs by context index * 256 + byte (the
    rare contexts that share a key are merged).
    """
    ck, inv = np.unique((pair_ctx >> np.uint64(32)).astype(np.uint32), return_inverse=True)
    pk, pinv = np.unique(inv.astype(np.int64) * 256 + pair_x, return_inverse=True)
    pc = np.bincount(pinv, weights=pc, minlength=len(pk))
    pctx = pk >> 8
    m = len(ck)
    return {
        "pk": pk.astype(np.uint32 if m * 256 <= np.iinfo(np.uint32).max else np.uint64),
        "pc": _small(pc.astype(np.int64)),
        "ck": ck,
        "cn": _small(np.bincount(pctx, weights=pc, minlength=m).astype(np.int64)),
        "cu": _small(np.bincount(pctx, minlength=m)),
        "c1": _small(np.bincount(pctx, weights=(pc == 1), minlength=m).astype(np.int64)),
        "c2": _small(np.bincount(pctx, weights=(pc == 2), minlength=m).astype(np.int64)),
    }


def bits_per_byte(model, docs):
    nll = sum(-float(model.score(d).sum()) for d in docs)
    return nll / math.log(2) / max(1, sum(len(d) for d in docs))


# ---------------------------------------------------------------------------------------------------
# Mixing weights


def holdout_split(docs):
    """Indices of the held-out documents (mid-sized ones, in a fixed pseudo-random order until the
    budget is reached) and of the rest."""
    budget = min(HOLDOUT_MAX_BYTES, HOLDOUT_SHARE * sum(len(d) for d in docs))
    cands = [i for i, d in enumerate(docs) if HOLDOUT_DOC_BYTES[0] <= len(d) <= HOLDOUT_DOC_BYTES[1]]
    cands.sort(key=lambda i: (zlib.crc32(docs[i]), i))
    held, used = [], 0
    for i in cands:
        if used >= budget:
            break
        held.append(i)
        used += len(docs[i])
    hs = set(held)
    return sorted(held), [i for i in range(len(docs)) if i not in hs]


def fit_data(model, docs):
    """Per order, the features, estimates (qS, qD) and component masks at the held-out positions
    where that order has something to say (elsewhere it passes the lower order on unchanged), with
    those positions' indices. Documents nearly copied in the model's corpus are left out."""
    parts = [[] for _ in ORDERS]
    kept = 0
    for d in docs:
        rows = model.order_stats(d)
        if np.mean(rows[-1]["N"] > 0) > NEAR_DUPLICATE:
            continue
        pos = np.arange(len(d), dtype=np.float64)
        for i, st in enumerate(rows):
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            act = np.nonzero((st["KS"] > 0) | (st["KD"] > 0))[0]
            F = lm.features(st, nxt, pos, model.params.b[i])[:, act]
            mask = np.stack([np.where(st["KS"][act] > 0, 0.0, -1e30), np.where(st["KD"][act] > 0, 0.0, -1e30),
                             np.zeros(len(act))])
            parts[i].append((act + kept, F, st["qS"][act], st["qD"][act], mask))
        kept += len(d)
    if not kept:
        return None, 0
    data = []
    for i in range(len(ORDERS)):
        act, F, qS, qD, mask = zip(*parts[i])
        data.append((np.concatenate(act), np.concatenate(F, axis=1), np.concatenate(qS),
                     np.concatenate(qD), np.concatenate(mask, axis=1)))
    return (kept, data), kept


def log_likelihood(theta, fd, grad=False):
    """Total log-likelihood of the fit data under `theta` (as lm.Model._chain), and its gradient."""
    n, data = fd
    p = np.full(n, 1.0 / 256.0)
    saved = []
    for i, (act, F, qS, qD, mask) in enumerate(data):
        z = theta[i] @ F + mask
        z -= np.maximum(np.maximum(z[0], z[1]), z[2])
        w = np.exp(z)
        w /= w[0] + w[1] + w[2]
        plow = p[act]
        pn = w[0] * qS + w[1] * qD + w[2] * plow
        saved.append((w, plow, pn))
        p[act] = pn
    pf = (1.0 - lm.FLOOR) * p + lm.FLOOR / 256.0
    ll = float(np.log(pf).sum())
    if not grad:
        return ll, None
    g = (1.0 - lm.FLOOR) / pf
    G = np.zeros_like(theta)
    for i in reversed(range(len(data))):
        act, F, qS, qD, mask = data[i]
        w, plow, pn = saved[i]
        ga = g[act]
        w *= ga
        w[0] *= qS - pn
        w[1] *= qD - pn
        gl = w[2].copy()
        w[2] *= plow - pn
        G[i] = w @ F.T
        g[act] = gl
    return ll, G


def fit_theta(theta0, data, deadline):
    """Gradient ascent (Adam) on the log-likelihood, with a little L2 towards theta0; stops when
    converged or at the deadline."""
    n = data[0]
    th = theta0.copy()
    m = np.zeros_like(th)
    v = np.zeros_like(th)
    ll0 = log_likelihood(th, data)[0]
    history = []
    it = 0
    for it in range(1, FIT_ITERATIONS + 1):
        if time.time() > deadline:
            break
        ll, G = log_likelihood(th, data, grad=True)
        history.append(ll)
        if len(history) > FIT_WINDOW and history[-1] - history[-1 - FIT_WINDOW] < FIT_TOLERANCE * n:
            break
        G = G / n - FIT_L2 * (th - theta0)
        m = 0.9 * m + 0.1 * G
        v = 0.999 * v + 0.001 * G * G
        th += FIT_RATE * (m / (1 - 0.9 ** it)) / (np.sqrt(v / (1 - 0.999 ** it)) + 1e-8)
    ll = log_likelihood(th, data)[0]
    if not (ll > ll0 and np.all(np.isfinite(th))):
        return theta0, ll0 / n, ll0 / n, it
    return th, ll0 / n, ll / n, it


def save(model_dir, params, tables, info):
    os.makedirs(model_dir, exist_ok=True)
    for f in os.listdir(model_dir):
        if f.endswith(".npy"):
            os.remove(os.path.join(model_dir, f))
    for k, t in zip(params.orders, tables):
        for name in lm.TABLE_NAMES:
            np.save(os.path.join(model_dir, f"o{k}_{name}.npy"), t[name])
    with open(os.path.join(model_dir, "params.json"), "w") as f:
        json.dump({"params": params.to_json(), "info": info}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/corpus.jsonl")
    ap.add_argument("--out", default="model")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--no-fit", action="store_true", help="keep the initial mixing weights")
    args = ap.parse_args()
    t0 = time.time()
    budget = 0.85 * args.max_seconds  # the rest is margin: saving, a slower machine
    docs = read_corpus(args.corpus)
    if not docs:
        sys.exit(f"no documents in {args.corpus}")
    nbytes = sum(len(d) for d in docs)
    log(f"{len(docs)} documents, {nbytes} bytes")
    # With too little time for even one count, train on the first documents only.
    max_bytes = budget / (1.5 * COUNT_SECONDS_PER_BYTE)
    if nbytes > max_bytes:
        keep, total = [], 0
        for d in docs:
            if total + len(d) > max_bytes:
                break
            keep.append(d)
            total += len(d)
        docs, nbytes = keep or docs[:1], max(total, len(docs[0]))
        log(f"time for {len(docs)} documents only ({nbytes} bytes)")
    info = {"documents": len(docs), "bytes": nbytes, "orders": ORDERS}
    theta = initial_theta()
    prune = None
    held, rest = holdout_split(docs)
    rest_bytes = nbytes - sum(len(docs[i]) for i in held)
    # The fit needs a count without the held-out documents, then the final count.
    fit = (not args.no_fit and held and rest
           and budget > 3 * COUNT_SECONDS_PER_BYTE * nbytes + 10)
    if fit:
        tables, prune = build_tables([docs[i] for i in rest], ORDERS, budget=SIZE_BUDGET * rest_bytes / nbytes)
        count_seconds = time.time() - t0
        log(f"held-out tables built, {count_seconds:.1f}s")
        model = lm.Model(make_params(theta), tables)
        data, kept = fit_data(model, [docs[i] for i in held])
        del tables, model
        log(f"held-out statistics ready, {time.time() - t0:.1f}s")
        deadline = t0 + budget - 1.3 * count_seconds * nbytes / max(1, rest_bytes)
        if data is not None:
            theta, before, after, iters = fit_theta(theta, data, deadline)
            log(f"mixing weights fitted on {kept} held-out bytes in {iters} iterations: "
                f"{-before / math.log(2):.4f} -> {-after / math.log(2):.4f} bits per byte")
            info.update(holdout_bytes=kept, holdout_bpb_initial=-before / math.log(2),
                        holdout_bpb=-after / math.log(2), fit_iterations=iters)
        del data
    params = make_params(theta)
    tables, prune = build_tables(docs, ORDERS, budget=SIZE_BUDGET, prune=prune)
    info["pruned_orders"] = [k for k, p in zip(ORDERS, prune) if p]
    log(f"tables built, {time.time() - t0:.1f}s in all")
    save(args.out, params, tables, info)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    fitted = f"held-out {info['holdout_bpb']:.3f} bpb" if "holdout_bpb" in info else "mixing weights not fitted"
    print(f"trained on {len(docs)} documents ({nbytes} bytes): orders up to {ORDERS[-1]}, {fitted}, "
          f"model {size / 1e6:.1f} MB, {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
