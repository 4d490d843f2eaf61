#!/usr/bin/env python3
"""Trainer of the neural reference model (lm.py): byte-pair tokens, a small transformer, a cache.

1. Byte-pair merges are learnt on the chunks of the training documents (lm.chunks), most frequent
   pair first, ties broken by the pair itself, so the same corpus always gives the same tokens.
2. A few mid-sized documents (chosen by the hash of their URL) are held out; the others are joined
   into one stream, each document opened by BOS.
3. The transformer (lm.GPT) is trained with AdamW on random windows of the stream, every RNG
   seeded. The learning rate follows the share of the time budget used (warm-up, then cosine down
   to a tenth), so the run always ends annealed whatever the speed of the machine.
4. The cache's θ and λ (lm.py) are fitted on the held-out documents by a grid search.

Writes config.json, bpe.json, weights.pt into --out.

Usage: train.py [--corpus data/train.jsonl] [--out model] [--max-seconds S]
"""

import argparse
import collections
import hashlib
import json
import math
import os
import sys
import time

T0 = time.time()


def cpu_count():
    """CPUs this process may use: the cgroup's quota when there is one, else the affinity mask."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(n, 4))


# torch's own (OpenMP) threads stay at one: with two, a step was 4x slower on a loaded 2-CPU
# machine (spinning threads). The matrix products may use OpenBLAS's threads, one per CPU.
THREADS = cpu_count()
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import lm  # noqa: E402

MERGES = 767  # 256 bytes + 767 merges + BOS = 1024 ids
D, LAYERS, HEADS = 128, 4, 4
CTX = 256  # training windows; scoring uses BLOCK + MEMORY = CTX
BLOCK, MEMORY = 128, 128
BATCH = 16
PEAK_LR = 4e-3
WARMUP_STEPS = 30
STEPS = 780  # training steps, unless the time runs out first (about 290 s on 2 CPUs)
TRAIN_CAP = 330.0  # seconds of training at most
DYN_LRS = [0.0, 0.05, 0.1]  # dynamic evaluation rates tried on the held-out documents
HOLDOUT_MAX_BYTES = 60_000
HOLDOUT_DOC_BYTES = (2_000, 30_000)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def learn_bpe(texts, n_merges):
    words = collections.Counter()
    for t in texts:
        words.update(lm.chunks(t))
    syms = [list(w) for w in words]
    freq = [words[w] for w in words]
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, s in enumerate(syms):
        f = freq[i]
        for a, b in zip(s, s[1:]):
            pairs[(a, b)] += f
            where[(a, b)].add(i)
    merges = []
    for m in range(n_merges):
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], (-kv[0][0], -kv[0][1])))
        (a, b), c = best
        if c < 2:
            break
        new = 256 + m
        merges.append((a, b))
        for i in sorted(where.pop((a, b), ())):
            s = syms[i]
            f = freq[i]
            for p in zip(s, s[1:]):
                pairs[p] -= f
                if pairs[p] <= 0:
                    del pairs[p]
            out = []
            k = 0
            while k < len(s):
                if k < len(s) - 1 and s[k] == a and s[k + 1] == b:
                    out.append(new)
                    k += 2
                else:
                    out.append(s[k])
                    k += 1
            syms[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                where[p].add(i)
        pairs.pop((a, b), None)
    return merges


def read_docs(path):
    docs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and isinstance(d.get("text"), str) and d["text"]:
                docs.append((str(d.get("url", "")), d["text"].encode("utf-8")))
    return docs


def pick_holdout(docs):
    lo, hi = HOLDOUT_DOC_BYTES
    cand = sorted((hashlib.sha256(u.encode("utf-8")).hexdigest(), k) for k, (u, t) in enumerate(docs)
                  if lo <= len(t) <= hi)
    total = sum(len(t) for _, t in docs)
    held, size = set(), 0
    for _, k in cand:
        if size + len(docs[k][1]) > min(HOLDOUT_MAX_BYTES, total * 0.08):
            continue
        held.add(k)
        size += len(docs[k][1])
    return held


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/train.jsonl")
    ap.add_argument("--out", default="model")
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--train-seconds", type=float, default=None, help="override the training time")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # the whole train.py ends by `deadline`, leaving the rest of the step's limit to run.sh
    deadline = min(args.max_seconds * 0.85, args.max_seconds - 35)

    docs = read_docs(args.corpus)
    if not docs:
        raise SystemExit("no training documents")
    held = pick_holdout(docs) if len(docs) >= 10 else set()
    log(f"{len(docs)} documents ({sum(len(t) for _, t in docs)} B), {len(held)} held out "
        f"({sum(len(docs[k][1]) for k in held)} B)")

    merges = learn_bpe([t for k, (_, t) in enumerate(docs) if k not in held], MERGES)
    bpe = lm.BPE(merges)
    vocab = 257 + len(merges)
    bos = vocab - 1
    log(f"bpe: {len(merges)} merges")
    stream, hold = [], []
    nbytes = 0
    for k, (_, t) in enumerate(docs):
        ids = bpe.encode(t)
        if k in held:
            hold.append((t, ids))
        else:
            stream.append(bos)
            stream.extend(ids)
            nbytes += len(t)
    stream = torch.tensor(stream, dtype=torch.long)
    log(f"stream: {len(stream)} tokens, {nbytes / len(stream):.2f} B/token")

    net = lm.GPT(vocab, D, LAYERS, HEADS, CTX)
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and n != "pos"]
    other = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.98), eps=1e-8)
    nparams = sum(p.numel() for p in net.parameters())
    train_s = min(TRAIN_CAP, deadline - (time.time() - T0) - 45)
    if args.train_seconds is not None:
        train_s = args.train_seconds
    log(f"network: {nparams} parameters; training for {train_s:.0f} s")
    t_start = time.time()
    step = 0
    n = len(stream) - CTX - 1
    ema = None
    net.train()
    while True:
        frac = max(step / STEPS, (time.time() - t_start) / max(train_s, 1e-9))
        if frac >= 1.0:
            break
        lr = PEAK_LR * min(1.0, (step + 1) / WARMUP_STEPS) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.from_numpy(rng.integers(0, n, size=BATCH))
        idx = starts.view(-1, 1) + torch.arange(CTX + 1).view(1, -1)
        w = stream[idx]
        x, y = w[:, :-1], w[:, 1:]
        h = net.hidden(x)
        logits = net.logits(h)
        loss = F.cross_entropy(logits.reshape(-1, vocab - 1), y.reshape(-1), ignore_index=bos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"step {step} lr {lr:.2e} loss {ema:.3f} ({ema / math.log(2) * len(stream) / nbytes:.3f} bpb)")
    log(f"trained {step} steps, {step * BATCH * CTX} tokens ({step * BATCH * CTX / len(stream):.2f} epochs)")
    net.eval()

    cfg = {"vocab": vocab, "bos": bos, "d": D, "layers": LAYERS, "heads": HEADS, "ctx": CTX,
           "block": BLOCK, "memory": MEMORY, "cache": False, "theta": 0.0, "gate": [-30.0, 0.0, 0.0, 0.0],
           "steps": step}
    model = lm.Model(net, bpe, cfg)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bpe.json"), "w") as f:
        json.dump({"merges": [list(m) for m in merges]}, f)
    torch.save(net.state_dict(), os.path.join(args.out, "weights.pt"))
    if hold:
        fit_cache(model, hold)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(model.cfg, f, indent=1)
    log("written")


def fit_cache(model, hold):
    """Fits on the held-out documents the dynamic evaluation rate (a grid), then the cache: θ by a grid,
    the gate (g0..g3) by L-BFGS."""
    V = model.vocab_out()
    nbytes = sum(len(t) for t, _ in hold)
    best_lr = (None, 0.0)
    for lr in DYN_LRS:
        model.set_dyn_lr(lr)
        tot = 0.0
        for t, ids in hold:
            logits, _ = model.rows([model.bos] + ids[:-1])
            with torch.no_grad():
                tot -= torch.log_softmax(logits.double(), 1).gather(1, torch.tensor(ids).view(-1, 1)).sum().item()
        bpb = tot / math.log(2) / nbytes
        log(f"held-out bpb, dynamic evaluation rate {lr}: {bpb:.4f}")
        if best_lr[0] is None or bpb < best_lr[0]:
            best_lr = (bpb, lr)
    model.set_dyn_lr(best_lr[1])
    model.cfg["dyn_lr"] = best_lr[1]
    model.reset()
    docs = []
    for t, ids in hold:
        x = [model.bos] + ids[:-1]
        logits, hidden = model.rows(x)
        with torch.no_grad():
            lp = torch.log_softmax(logits.double(), 1)
            pm = lp.gather(1, torch.tensor(ids).view(-1, 1)).view(-1).exp()
            pmax = lp.max(1).values.exp()
        docs.append((ids, pm, pmax, hidden))
    pm_all = torch.cat([d[1] for d in docs])
    pmax_all = torch.cat([d[2] for d in docs])
    first = torch.cat([torch.arange(len(d[0])) == 0 for d in docs])
    base = -torch.log((1 - lm.FLOOR) * pm_all + lm.FLOOR / V).sum().item() / math.log(2) / nbytes
    log(f"held-out bpb without cache {base:.4f}")
    best = (base, None)
    for theta in [0.03, 0.06, 0.1, 0.15, 0.22]:
        model.theta = theta
        pcs, sims, cmaxs = [], [], []
        for ids, _, _, hidden in docs:
            n = len(ids)
            tok = torch.tensor(ids)
            pc = torch.zeros(n, dtype=torch.float64)
            sim = torch.zeros(n, dtype=torch.float64)
            cmax = torch.zeros(n, dtype=torch.float64)
            for s in range(0, n, 256):
                rows = torch.arange(s, min(s + 256, n))
                a, sm = model.cache_terms(hidden, rows)
                sim[rows] = sm
                if a is not None:
                    same = tok[rows].view(-1, 1) == tok[:a.shape[1]].view(1, -1)
                    pc[rows] = (a * same).sum(1)
                    cmax[rows] = model.cache_dist(a, tok).max(dim=1).values
            pcs.append(pc)
            sims.append(sim)
            cmaxs.append(cmax)
        pc_all, sim_all, cmax_all = torch.cat(pcs), torch.cat(sims), torch.cat(cmaxs)
        g = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([g], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def loss_fn():
            opt.zero_grad()
            lam = torch.sigmoid(g[0] + g[1] * sim_all + g[2] * pmax_all + g[3] * cmax_all).masked_fill(first, 0.0)
            p = (1 - lm.FLOOR) * ((1 - lam) * pm_all + lam * pc_all) + lm.FLOOR / V
            loss = -torch.log(p).sum() / nbytes
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(loss_fn)
        bpb = loss_fn().item() / math.log(2)
        log(f"  theta {theta}: {bpb:.4f} gate {[round(v, 3) for v in g.tolist()]}")
        if bpb < best[0] and all(math.isfinite(v) for v in g.tolist()):
            best = (bpb, theta, [float(v) for v in g.detach().tolist()])
    if best[1] is not None:
        log(f"held-out bpb with cache {best[0]:.4f}")
        model.theta, model.g, model.use_cache = best[1], best[2], True
        model.cfg.update({"cache": True, "theta": best[1], "gate": best[2]})
    model.cfg["holdout_bpb"] = round(best[0], 4)
    model.reset()


if __name__ == "__main__":
    main()
