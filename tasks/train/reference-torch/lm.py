#!/usr/bin/env python3
"""Neural reference language model of the train stage: a small byte-pair transformer with a neural
cache (bin/lm).

Tokens: byte-level BPE learnt by train.py on the training documents (the 256 single bytes plus the
merges in bpe.json). A document is cut into chunks (a word with its leading space, a run of digits,
a run of punctuation, a run of spaces), and each chunk is encoded by applying the merges in the
order they were learnt, so the tokens of a document concatenate to its exact bytes.

Model: a GPT-style decoder (pre-LayerNorm, learned positions, tied input/output embeddings), see
`GPT`. A document is the sequence x = [BOS] + tokens; row i of the output predicts token i. The
rows are computed in blocks of BLOCK rows: block k covers rows [k·BLOCK, (k+1)·BLOCK) and is run
on the window x[max(0, k·BLOCK − MEMORY) : (k+1)·BLOCK], so row i sees between MEMORY and
MEMORY + BLOCK − 1 earlier tokens (all of them near the start). Row i depends on x[0..i] only, so
`next` on a prefix computes the very same numbers as `score` on the whole document.

In-document adaptation (causal, neural), two kinds, both fitted by train.py on held-out documents:

- dynamic evaluation: once block k is computed, the network takes one SGD step (rate dyn_lr) on the
  block's cross-entropy, so block k + 1 is predicted by weights adapted to the document so far;
- Grave et al.'s continuous cache: the final hidden states h_j of the rows already scored (j < i,
  whose tokens are known) are the keys and their tokens the values,

      p_cache(w) = Σ_{j<i, tok_j = w} softmax_j(θ · h_i·h_j)

  and the prediction is p = (1 − λ_i) softmax(logits_i) + λ_i p_cache, with the gate
  λ_i = sigmoid(g0 + g1·max_j h_i·h_j/d + g2·max p_net + g3·max p_cache), and λ_0 = 0.

Everything after the network runs in float64, then a 1e-7 share of the uniform distribution is mixed
in so no token is impossible. Every document starts from the trained weights and an empty cache:
nothing carries over between documents.

Scoring uses one thread (torch.set_num_threads(1), OPENBLAS/OMP threads 1) and deterministic
algorithms, so scoring the same documents twice gives the same numbers.

Verbs (JSON lines on stdin, one JSON line out per line in):
    lm.py score    {"id", "text_b64"}               -> {"id", "tokens_b64", "logprobs"}
    lm.py next     {"id", "context_b64"}            -> {"id", "dist": [[token_b64, logprob], ...]}
    lm.py sample   {"id", "prompt_b64", "max_bytes", "seed"} -> {"id", "text_b64"} (the continuation)
`next` reads all its lines first: contexts that are prefixes of one another (the same document)
are computed in one pass over the longest. The model directory is the one holding this file
(or --model DIR).
"""

import base64
import json
import math
import os
import re
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MAX_SAMPLE_BYTES = 1 << 16
FLOOR = 1e-7  # share of the uniform distribution mixed into every prediction
CHUNK_RE = re.compile(rb" ?[A-Za-z_]+| ?[0-9]+| ?[^\sA-Za-z0-9_]+|\s+(?!\S)|\s+")
MAX_CHUNK = 64  # longer chunks are cut (bounds the cost of encoding)


# ---------------------------------------------------------------------------------------------------
# Byte-pair tokens


def chunks(data):
    """The chunks of a byte string (their concatenation is the string)."""
    out = []
    pos = 0
    for m in CHUNK_RE.finditer(data):
        if m.start() != pos:  # cannot happen with this pattern; keep the bytes anyway
            out.append(data[pos:m.start()])
        c = m.group()
        for k in range(0, len(c), MAX_CHUNK):
            out.append(c[k:k + MAX_CHUNK])
        pos = m.end()
    if pos != len(data):
        out.append(data[pos:])
    return out


class BPE:
    """Merges (a, b) -> 256 + rank; token ids 0..255 are the bytes."""

    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        self.rank = {m: i for i, m in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.cache = {}

    def encode_chunk(self, c):
        ids = self.cache.get(c)
        if ids is not None:
            return ids
        ids = list(c)
        rank = self.rank
        while len(ids) > 1:
            best, at = None, -1
            for k in range(len(ids) - 1):
                r = rank.get((ids[k], ids[k + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, k
            if best is None:
                break
            new = 256 + best
            a, b = self.merges[best]
            out = []
            k = 0
            while k < len(ids):
                if k < len(ids) - 1 and ids[k] == a and ids[k + 1] == b:
                    out.append(new)
                    k += 2
                else:
                    out.append(ids[k])
                    k += 1
            ids = out
        if len(self.cache) < 200_000:
            self.cache[c] = ids
        return ids

    def encode(self, data):
        out = []
        for c in chunks(data):
            out.extend(self.encode_chunk(c))
        return out


# ---------------------------------------------------------------------------------------------------
# The network


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q = q.view(b, t, h, d // h).transpose(1, 2)
        k = k.view(b, t, h, d // h).transpose(1, 2)
        v = v.view(b, t, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        att = att.masked_fill(mask[:t, :t], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return x


class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, ctx):
        super().__init__()
        self.vocab, self.ctx = vocab, ctx
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1), persistent=False)
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)
        for blk in self.blocks:
            for lin in (blk.qkv, blk.fc):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * layers))
                nn.init.zeros_(lin.bias)

    def hidden(self, x):
        """x: (b, t) token ids, t <= ctx -> final hidden states (b, t, d)."""
        t = x.shape[1]
        h = self.emb(x) + self.pos[:t]
        for blk in self.blocks:
            h = blk(h, self.mask)
        return self.ln(h)

    def logits(self, h):
        """Logits of the real tokens (the last id, BOS, is input only)."""
        return h @ self.emb.weight[:self.vocab - 1].t()


# ---------------------------------------------------------------------------------------------------
# The model: network + tokens + cache


class Model:
    def __init__(self, net, bpe, cfg):
        self.net, self.bpe, self.cfg = net, bpe, cfg
        self.bos = cfg["bos"]
        self.vocab = cfg["vocab"]
        self.block = cfg["block"]
        self.memory = cfg["memory"]
        self.theta = float(cfg.get("theta", 0.0))
        self.g = [float(v) for v in cfg.get("gate", [-30.0, 0.0, 0.0, 0.0])]
        self.use_cache = bool(cfg.get("cache", False))
        self.b64 = [base64.b64encode(t).decode("ascii") for t in bpe.vocab]
        self.set_dyn_lr(float(cfg.get("dyn_lr", 0.0)))

    def set_dyn_lr(self, lr):
        if not hasattr(self, "init"):  # the trained weights
            self.init = [p.detach().clone() for p in self.net.parameters()]
        self.dyn_lr = 1.0
        self.reset()
        self.dyn_lr = lr
        for p in self.net.parameters():
            p.requires_grad_(lr > 0)

    @classmethod
    def load(cls, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(model_dir, "bpe.json")) as f:
            bpe = BPE(json.load(f)["merges"])
        net = GPT(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["ctx"])
        state = torch.load(os.path.join(model_dir, "weights.pt"), map_location="cpu")
        net.load_state_dict({k: v.float() for k, v in state.items()})
        net.eval()
        return cls(net, bpe, cfg)

    # -- the network's rows -----------------------------------------------------------------------

    def rows(self, x):
        """x: list of ids ([BOS] + tokens). -> (logits (n, V) float32, hidden (n, d) float32) of every
        row, computed block by block on block-aligned windows.

        Dynamic evaluation: after block k is computed, and when a later block follows (so all the
        tokens it predicts are in x), the network takes one SGD step of rate `dyn_lr` on the
        block's mean cross-entropy. Row i thus depends on x[0..i] alone. The weights are reset
        at the start of every call: nothing carries over between documents."""
        n = len(x)
        xt = torch.tensor(x, dtype=torch.long)
        logits, hidden = [], []
        self.reset()
        params = list(self.net.parameters())
        for s in range(0, n, self.block):
            e = min(s + self.block, n)
            w0 = max(0, s - self.memory)
            adapt = self.dyn_lr > 0 and e < n
            with torch.set_grad_enabled(adapt):
                h = self.net.hidden(xt[w0:e].unsqueeze(0))[0, s - w0:]
                lg = self.net.logits(h)
            hidden.append(h.detach())
            logits.append(lg.detach())
            if adapt:
                loss = F.cross_entropy(lg, xt[s + 1:e + 1])
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(g, alpha=self.dyn_lr)
        return torch.cat(logits), torch.cat(hidden)

    def reset(self):
        """Back to the trained weights."""
        if self.dyn_lr > 0:
            with torch.no_grad():
                for p, p0 in zip(self.net.parameters(), self.init):
                    p.copy_(p0)

    # -- the mixture --------------------------------------------------------------------------------

    def cache_terms(self, hidden, rows):
        """For the given rows (a 1-D tensor of row numbers): the float64 attention weights
        (len(rows), max(rows)) over the earlier rows, or None when max(rows) is 0, and the float64
        similarity max_{j<i} h_i·h_j / d of each row (0 for row 0)."""
        m = int(rows.max())
        if m == 0:
            return None, torch.zeros(len(rows), dtype=torch.float64)
        dots = (hidden[rows] @ hidden[:m].t()).double()
        r = rows.view(-1, 1)
        j = torch.arange(m).view(1, -1)
        dots = dots.masked_fill(j >= r, float("-inf"))
        dots = torch.where(r == 0, torch.zeros_like(dots), dots)  # row 0: harmless, its λ is 0
        sim = dots.max(dim=1).values / hidden.shape[1]
        return torch.softmax(dots * self.theta, dim=1), sim

    def gate(self, rows, sim, pmax, cmax):
        """λ_i = sigmoid(g0 + g1·sim_i + g2·pmax_i + g3·cmax_i) (pmax, cmax: the largest probability of
        the network, of the cache), 0 at row 0."""
        g0, g1, g2, g3 = self.g
        lam = torch.sigmoid(g0 + g1 * sim + g2 * pmax + g3 * cmax)
        return torch.where(rows > 0, lam, torch.zeros_like(lam))

    def cache_dist(self, a, tok_t):
        """The cache's distributions over the vocabulary: a (rows, m) weights of the tokens tok_t[:m]."""
        m = a.shape[1]
        pc = torch.zeros(a.shape[0], self.vocab_out(), dtype=torch.float64)
        pc.scatter_add_(1, tok_t[:m].view(1, -1).expand(a.shape[0], -1), a)
        return pc

    def logprobs_of(self, x, tok):
        """Log-probability of tok[i] at row i, for every row of x (len(tok) == len(x))."""
        logits, hidden = self.rows(x)
        n = len(x)
        out = torch.empty(n, dtype=torch.float64)
        tok_t = torch.tensor(tok, dtype=torch.long)
        V = self.vocab_out()
        with torch.no_grad():
            for s in range(0, n, 256):
                rows = torch.arange(s, min(s + 256, n))
                lp = torch.log_softmax(logits[rows].double(), dim=1)
                pm = lp.gather(1, tok_t[rows].view(-1, 1)).view(-1).exp()
                a, sim = self.cache_terms(hidden, rows)
                if a is not None and self.use_cache:
                    cmax = self.cache_dist(a, tok_t).max(dim=1).values
                    lam = self.gate(rows, sim, lp.max(dim=1).values.exp(), cmax)
                    same = tok_t[rows].view(-1, 1) == tok_t[:a.shape[1]].view(1, -1)
                    p = (1 - lam) * pm + lam * (a * same).sum(1)
                else:
                    p = pm
                p = (1 - FLOOR) * p + FLOOR / V
                out[rows] = torch.log(p)
        return out

    def dists_from(self, x, logits, hidden, want):
        """Full float64 distributions (over the output vocabulary) of the rows `want` of x."""
        rows = torch.tensor(sorted(set(want)), dtype=torch.long)
        V = self.vocab_out()
        res = {}
        with torch.no_grad():
            p = torch.softmax(logits[rows].double(), dim=1)
            a, sim = self.cache_terms(hidden, rows)
            if a is not None and self.use_cache:
                pc = self.cache_dist(a, torch.tensor(x[1:1 + a.shape[1]], dtype=torch.long))
                lam = self.gate(rows, sim, p.max(dim=1).values, pc.max(dim=1).values).view(-1, 1)
                p = (1 - lam) * p + lam * pc
            p = (1 - FLOOR) * p + FLOOR / V
            for k, r in enumerate(rows.tolist()):
                res[r] = p[k]
        return res

    def dists_at(self, x, want):
        logits, hidden = self.rows(x)
        return self.dists_from(x, logits, hidden, want)

    def vocab_out(self):
        return self.bos  # ids 0..bos-1 are real tokens; BOS is input only (its logit is not used)

    # -- verbs -----------------------------------------------------------------------------------------

    def score(self, data):
        tok = self.bpe.encode(data)
        if not tok:
            return [], []
        x = [self.bos] + tok[:-1]
        return tok, self.logprobs_of(x, tok).tolist()

    def next_many(self, contexts):
        """contexts: list of token-id lists. -> list of float64 distributions (tensors)."""
        order = sorted(range(len(contexts)), key=lambda i: (contexts[i], i))
        out = [None] * len(contexts)
        # group a context with the next longer one when it is a prefix of it
        groups = []
        for i in order:
            groups.append([i])
        merged = []
        for g in reversed(groups):  # from the largest in sort order: a prefix sorts before its extensions
            i = g[0]
            if merged and _is_prefix(contexts[i], contexts[merged[-1][0]]):
                merged[-1].append(i)
            else:
                merged.append([i])
        for g in merged:
            longest = contexts[g[0]]
            x = [self.bos] + list(longest)
            res = self.dists_at(x, [len(contexts[i]) for i in g])
            for i in g:
                out[i] = res[len(contexts[i])]
        return out

    def sample(self, prompt, max_bytes, seed):
        gen = torch.Generator().manual_seed(_seed_int(seed))
        x = [self.bos] + self.bpe.encode(prompt)
        logits, hidden = self.rows(x)
        out = bytearray()
        while len(out) < max_bytes:
            i = len(x) - 1
            p = self.dists_from(x, logits, hidden, [i])[i]
            t = int(torch.multinomial(p.float(), 1, generator=gen))
            out += self.bpe.vocab[t]
            x.append(t)
            # the new row, from its own block-aligned window as in rows()
            r = len(x) - 1
            w0 = max(0, (r // self.block) * self.block - self.memory)
            with torch.no_grad():
                h = self.net.hidden(torch.tensor(x[w0:r + 1]).unsqueeze(0))[0, -1:]
                logits = torch.cat([logits, self.net.logits(h)])
                hidden = torch.cat([hidden, h])
        return bytes(out[:max_bytes])


def _is_prefix(a, b):
    return len(a) <= len(b) and b[:len(a)] == a


def _seed_int(seed):
    if isinstance(seed, int):
        return seed & ((1 << 63) - 1)
    return int.from_bytes(str(seed).encode("utf-8")[:8].ljust(8, b"\0"), "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------------
# The JSON-lines verbs


def _b64(obj, field):
    v = obj.get(field)
    if not isinstance(v, str):
        raise ValueError(f"missing or non-string field {field!r}")
    return base64.b64decode(v, validate=True)


def do_score(model, obj):
    data = _b64(obj, "text_b64")
    tok, lp = model.score(data)
    return {"id": obj.get("id"), "tokens_b64": [model.b64[t] for t in tok], "logprobs": [float(v) for v in lp]}


def context_ids(model, obj):
    toks = obj.get("context_b64")
    if not isinstance(toks, list):
        raise ValueError("missing or non-list field 'context_b64'")
    raw = []
    for t in toks:
        if not isinstance(t, str):
            raise ValueError("context tokens must be base64 strings")
        raw.append(base64.b64decode(t, validate=True))
    ids = [model.bpe.index.get(t) for t in raw]
    if any(i is None for i in ids):  # not our tokens: our own tokens of the same bytes
        ids = model.bpe.encode(b"".join(raw))
    return ids


def do_sample(model, obj):
    prompt = _b64(obj, "prompt_b64")
    max_bytes = obj.get("max_bytes")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        raise ValueError("max_bytes must be a non-negative integer")
    seed = obj.get("seed", 0)
    if not isinstance(seed, (int, str)) or isinstance(seed, bool):
        raise ValueError("seed must be an integer or a string")
    out = model.sample(prompt, min(max_bytes, MAX_SAMPLE_BYTES), seed)
    return {"id": obj.get("id"), "text_b64": base64.b64encode(out).decode("ascii")}


def run_next(model, lines, out):
    """All the `next` lines at once, so that prefixes of one document share one pass."""
    parsed = []
    for line in lines:
        rid = None
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("a request must be a JSON object")
            rid = obj.get("id")
            parsed.append((rid, context_ids(model, obj), None))
        except Exception as e:
            parsed.append((rid, None, f"{type(e).__name__}: {e}"))
    good = [k for k, p in enumerate(parsed) if p[1] is not None]
    dists = {}
    try:
        res = model.next_many([parsed[k][1] for k in good])
        for k, d in zip(good, res):
            dists[k] = d
    except Exception as e:  # fall back to one at a time
        for k in good:
            try:
                dists[k] = model.next_many([parsed[k][1]])[0]
            except Exception as e2:
                parsed[k] = (parsed[k][0], None, f"{type(e2).__name__}: {e2}")
    V = model.vocab_out()
    for k, (rid, ids, err) in enumerate(parsed):
        if err is not None or k not in dists:
            resp = {"id": rid, "error": err or "failed"}
        else:
            lp = torch.log(dists[k]).tolist()
            resp = {"id": rid, "dist": [[model.b64[t], float(lp[t])] for t in range(V)]}
        out.write(json.dumps(resp) + "\n")
    out.flush()


VERBS = {"score": do_score, "next": None, "sample": do_sample}


def main(argv):
    model_dir = os.path.dirname(os.path.realpath(__file__))
    args = list(argv)
    if len(args) >= 2 and args[0] == "--model":
        model_dir = args[1]
        args = args[2:]
    if len(args) != 1 or args[0] not in VERBS:
        print("usage: lm [--model DIR] score|next|sample < requests.jsonl", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = Model.load(model_dir)
    out = sys.stdout
    if args[0] == "next":
        run_next(model, list(sys.stdin.buffer), out)
        return 0
    verb = VERBS[args[0]]
    for line in sys.stdin.buffer:
        rid = None
        try:
            obj = json.loads(line)  # bytes: UTF-8 expected, a bad line is an error like any other
            if not isinstance(obj, dict):
                raise ValueError("a request must be a JSON object")
            rid = obj.get("id")
            resp = verb(model, obj)
        except Exception as e:  # one bad line must not stop the others
            resp = {"id": rid, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(resp) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
