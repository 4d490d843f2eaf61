#!/usr/bin/env python3
"""Reference language model of the train stage: an adaptive byte-level n-gram mixture (bin/lm).

Tokens are single bytes. The next byte x is predicted from its contexts of orders k = 0..8, 10, 12,
16, 24 (the last k bytes; a document starts with 24 "start" symbols, so its first bytes have
contexts of their own) by a chain from the lowest order up, p_-1(x) = 1/256 and

    p_k(x) = wS_k qS_k(x) + wD_k qD_k(x) + wL_k p_k-1(x)

with two estimates per order:

- qS, from the training corpus: counts S(s, x) with modified Kneser-Ney discounts (d1, d2, d3+
  by count), raw counts at the highest order and continuation counts (the number of distinct
  longer contexts of the next order) below it: qS(x) = max(S(x) - d(S(x)), 0) / (N - E);
- qD, from the document read so far (in-document adaptation, causal): its counts D(s, x) with an
  absolute discount. Every document starts from nothing; nothing carries over between documents.

The weights (wS, wD, wL) are a softmax of a linear function of 13 features of the context (its
static and document totals, numbers of distinct next bytes, discounted masses, the position in the
document, the counts of the next higher order...), one weight vector per order and component,
fitted by the trainer on held-out documents; a component without counts gets no weight. At the
start the weights reproduce plain interpolation, whose escape mass is E + b.

Contexts are hashed into 64-bit keys (XOR tabulation over (distance, symbol)); the training
tables are sorted arrays of 32-bit context keys and (context index, byte) pair keys, looked up with
numpy.searchsorted. Scoring a document is vectorised over all its positions, document counts
included (a stable sort and the rank within a group count earlier positions only). `next` and
`sample` evaluate the very same formulas for all 256 bytes, so they agree with `score`.

Verbs (JSON lines on stdin, one JSON line out per line in):
    lm.py score    {"id", "text_b64"}               -> {"id", "tokens_b64", "logprobs"}
    lm.py next     {"id", "context_b64"}            -> {"id", "dist": [[token_b64, logprob], ...]}
    lm.py sample   {"id", "prompt_b64", "max_bytes", "seed"} -> {"id", "text_b64"} (the continuation)
The model directory is the one holding this file (or --model DIR).
"""

import base64
import json
import math
import os
import random
import sys

import numpy as np

MASK64 = (1 << 64) - 1
START = 0  # the start-of-document symbol; byte b is symbol b + 1
MAX_SAMPLE_BYTES = 1 << 16
FLOOR = 1e-9  # share of a uniform distribution mixed into every prediction: no byte is impossible
TABLE_NAMES = ("pk", "pc", "ck", "cn", "cu", "c1", "c2")
B64 = [base64.b64encode(bytes([i])).decode("ascii") for i in range(256)]


# ---------------------------------------------------------------------------------------------------
# Hashing


def _splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def hash_tables(max_order, seed=0x6A7E1D):
    """Random tables: T[j][v] for the symbol v at distance j (1..max_order), X[b] for the next byte."""
    state = seed
    vals = []
    for _ in range((max_order + 1) * 257 + 256):
        state, z = _splitmix64(state)
        vals.append(z)
    arr = np.array(vals, dtype=np.uint64)
    return arr[: (max_order + 1) * 257].reshape(max_order + 1, 257), arr[(max_order + 1) * 257:]


def context_hashes(sym, pos, orders, T):
    """Yields (k, h) for each order k: h[i] = hash of the k symbols before sym[pos[i]].

    `sym` holds symbols (start = 0, byte b = b + 1) and has at least max(orders) start symbols
    before the first position of each document.
    """
    h = np.zeros(len(pos), dtype=np.uint64)
    done = 0
    for k in orders:
        for j in range(done + 1, k + 1):
            h ^= T[j][sym[pos - j]]
        done = k
        yield k, h.copy()


# ---------------------------------------------------------------------------------------------------
# The model


class Params:
    """Per-order discounts (d1, d2, d3+ for static counts, ddyn for document counts), escape
    pseudo-counts b, and the mixing weights theta[order][component][feature]."""

    FIELDS = ("d1", "d2", "d3", "ddyn", "b")

    def __init__(self, orders, table):
        self.orders = list(orders)
        for f in self.FIELDS:
            setattr(self, f, [float(table[f][i]) for i in range(len(self.orders))])
        self.theta = np.array(table["theta"], dtype=np.float64).reshape(len(self.orders), 3, NF)

    def to_json(self):
        return {"orders": self.orders, **{f: getattr(self, f) for f in self.FIELDS},
                "theta": [[[float(v) for v in c] for c in o] for o in self.theta]}

    @classmethod
    def from_json(cls, obj):
        return cls(obj["orders"], obj)

    def check(self):
        for i in range(len(self.orders)):
            d = (self.d1[i], self.d2[i], self.d3[i], self.ddyn[i])
            if not (0 <= min(d) and max(self.d1[i], self.ddyn[i]) <= 1 and self.d2[i] <= 2
                    and self.d3[i] <= 3 and self.b[i] > 0):
                raise ValueError(f"bad parameters at order {self.orders[i]}")
        if not np.all(np.isfinite(self.theta)):
            raise ValueError("non-finite mixing weights")


NF = 13  # features of a context, see features()


def features(st, nxt, pos, b):
    """The features (NF x n) of the contexts of one order: `st` its statistics, `nxt` those of the
    next higher order (or None), `pos` the positions in the document, `b` the escape pseudo-count."""
    n = len(st["N"])
    zero = np.zeros(n)
    return np.stack([
        np.ones(n),
        np.log(np.maximum(st["KS"], 1e-3)),
        np.log(np.maximum(st["KD"], 1e-3)),
        np.log(st["ES"] + st["ED"] + b),
        np.log1p(st["N"]),
        np.log1p(st["Dtot"]),
        np.log1p(st["U"]),
        np.log1p(st["Udoc"]),
        (st["U"] == 1) * 1.0,
        (st["Udoc"] == 1) * 1.0,
        np.log1p(pos) / 10.0,
        np.log1p(nxt["N"]) if nxt is not None else zero,
        np.log1p(nxt["Dtot"]) if nxt is not None else zero,
    ])


def mix_weights(theta, F, st):
    """Softmax weights (3 x n) of the static, document and lower-order components."""
    z = theta @ F
    z[0] = np.where(st["KS"] > 0, z[0], -1e30)
    z[1] = np.where(st["KD"] > 0, z[1], -1e30)
    z -= np.maximum(np.maximum(z[0], z[1]), z[2])
    w = np.exp(z)
    w /= w[0] + w[1] + w[2]
    return w


class Model:
    """The tables of one trained model, with the scoring formulas."""

    def __init__(self, params, tables):
        params.check()
        self.params = params
        self.orders = params.orders
        self.kmax = max(self.orders)
        self.T, self.X = hash_tables(self.kmax)
        self.tables = tables  # per order: {"pk", "pc", "ck", "cn", "cu", "c1", "c2"}

    @classmethod
    def load(cls, model_dir, mmap=True):
        with open(os.path.join(model_dir, "params.json")) as f:
            params = Params.from_json(json.load(f)["params"])
        tables = []
        for k in params.orders:
            tables.append({name: np.load(os.path.join(model_dir, f"o{k}_{name}.npy"),
                                         mmap_mode="r" if mmap else None) for name in TABLE_NAMES})
        return cls(params, tables)

    # Static lookups -------------------------------------------------------------------------------

    @staticmethod
    def _lookup(keys, table_keys):
        """(found mask, index) of `keys` in the sorted array `table_keys`."""
        keys = keys.astype(table_keys.dtype, copy=False)
        if len(table_keys) == 0:
            return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
        idx = np.searchsorted(table_keys, keys)
        idx[idx == len(table_keys)] = 0
        return table_keys[idx] == keys, idx

    def _static_context(self, t, h):
        """Static context statistics (N, U, N1, N2) for context hashes h (zeros where unseen), and
        where found, the contexts' indices."""
        found, idx = self._lookup(h >> np.uint64(32), t["ck"])
        out = []
        for name in ("cn", "cu", "c1", "c2"):
            v = np.zeros(len(h), dtype=np.float64)
            v[found] = t[name][idx[found]]
            out.append(v)
        return found, idx, out

    def _static_pair(self, t, cidx, x, where):
        """Static counts S of the bytes x after the contexts of indices cidx (only where `where`)."""
        s = np.zeros(len(x), dtype=np.float64)
        sel = np.nonzero(where)[0]
        if len(sel):
            found, idx = self._lookup(cidx[sel] * 256 + x[sel], t["pk"])
            s[sel[found]] = t["pc"][idx[found]]
        return s

    # The formulas ---------------------------------------------------------------------------------

    def _stats(self, i, N, U, C1, C2, S, Dtot, D, Udoc):
        """Statistics of order i: the static and document estimates qS, qD of the next byte(s) and
        the quantities the mixing weights depend on. Elementwise, the same code for score/next."""
        P = self.params
        d1, d2, d3, dd = P.d1[i], P.d2[i], P.d3[i], P.ddyn[i]
        ES = d1 * C1 + d2 * C2 + d3 * (U - C1 - C2)
        KS = N - ES
        disc = np.where(S >= 3.0, d3, np.where(S >= 2.0, d2, d1))
        qS = np.maximum(S - disc, 0.0) / np.where(KS > 0, KS, 1.0)
        ED = dd * Udoc
        KD = Dtot - ED
        qD = np.maximum(D - dd, 0.0) / np.where(KD > 0, KD, 1.0)
        return {"N": N, "U": U, "Dtot": Dtot, "Udoc": Udoc, "ES": ES, "KS": KS, "ED": ED, "KD": KD,
                "qS": qS, "qD": qD}

    def order_stats(self, data):
        """Per order, the statistics (see _stats) at every position of `data`, each from the bytes
        before it: static counts from the tables, document counts from the earlier positions."""
        n = len(data)
        x = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        sym = self._symbols(data)
        pos = np.arange(self.kmax, self.kmax + n)
        xkey = self.X[x]
        ar = np.arange(n)
        seen = np.ones(n, dtype=bool)  # the static context of the previous order was seen
        rows = []
        for i, (k, h) in enumerate(context_hashes(sym, pos, self.orders, self.T)):
            t = self.tables[i]
            # Static counts; a context unseen at one order is not looked up at the next.
            sel = np.nonzero(seen)[0]
            N = np.zeros(n); U = np.zeros(n); C1 = np.zeros(n); C2 = np.zeros(n)
            found = np.zeros(n, dtype=bool)
            cidx = np.zeros(n, dtype=np.int64)
            if len(sel):
                f, ci, (cn, cu, c1, c2) = self._static_context(t, h[sel])
                found[sel] = f
                cidx[sel] = ci
                N[sel] = cn; U[sel] = cu; C1[sel] = c1; C2[sel] = c2
            S = self._static_pair(t, cidx, x, found)
            seen = found
            # Document counts: earlier positions with the same context / pair (stable sorts).
            g = h ^ xkey
            Dtot = _rank_in_group(h, ar)
            D = _rank_in_group(g, ar)
            Udoc = _exclusive_group_sum(h, (D == 0).astype(np.int64), ar)
            rows.append(self._stats(i, N, U, C1, C2, S, Dtot.astype(np.float64), D.astype(np.float64),
                                    Udoc.astype(np.float64)))
        return rows

    def _chain(self, rows, pos, size):
        """p over the orders: p_k = wS qS + wD qD + wL p_k-1, from p_-1 = 1/256 (with a floor)."""
        p = np.full(size, 1.0 / 256.0)
        for i, st in enumerate(rows):
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            w = mix_weights(self.params.theta[i], features(st, nxt, pos, self.params.b[i]), st)
            p = w[0] * st["qS"] + w[1] * st["qD"] + w[2] * p
        return (1.0 - FLOOR) * p + FLOOR / 256.0

    # Scoring --------------------------------------------------------------------------------------

    def _symbols(self, data):
        """The symbol array of a byte string: kmax start symbols, then byte + 1."""
        sym = np.zeros(self.kmax + len(data) + 1, dtype=np.int64)
        sym[self.kmax: self.kmax + len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + 1
        return sym

    def score(self, data):
        """Natural-log probabilities of every byte of `data`, each given the bytes before it."""
        n = len(data)
        if n == 0:
            return np.zeros(0)
        return np.log(self._chain(self.order_stats(data), np.arange(n, dtype=np.float64), n))

    def next_dist(self, context):
        """Probabilities of all 256 next bytes after the byte string `context`."""
        n = len(context)
        sym = self._symbols(context)
        pos = np.arange(self.kmax, self.kmax + n + 1)  # every position, the last one being predicted
        prev = sym[self.kmax: self.kmax + n] - 1
        last, counts = [], []
        for _k, h in context_hashes(sym, pos, self.orders, self.T):
            last.append(h[-1])
            counts.append(np.bincount(prev[h[:-1] == h[-1]], minlength=256).astype(np.float64))
        return self._dist(last, counts, n)

    def _dist(self, last, counts, n):
        """The next-byte distribution at position n of a document, given per order the hash of the
        context there and the counts of the bytes that followed it earlier in the document."""
        allx = np.arange(256)
        one = lambda v: np.full(1, float(v))
        seen = True
        rows = []
        for i, t in enumerate(self.tables):
            if seen:
                f, ci, (cn, cu, c1, c2) = self._static_context(t, np.full(1, last[i], dtype=np.uint64))
                seen = bool(f[0])
            else:
                ci, (cn, cu, c1, c2) = np.zeros(1, np.int64), (one(0),) * 4
            S = self._static_pair(t, np.full(256, ci[0], dtype=np.int64), allx, np.full(256, seen))
            D = counts[i]
            rows.append(self._stats(i, cn, cu, c1, c2, S, one(D.sum()), D, one((D > 0).sum())))
        return self._chain(rows, np.full(1, float(n)), 256)

    def sample(self, prompt, max_bytes, seed):
        """A continuation of `prompt` drawn from the model (deterministic given the seed); the document
        counts are kept up to date as bytes are drawn rather than recounted."""
        rng = random.Random(seed)
        sym = [START] * self.kmax + [b + 1 for b in prompt]
        tables = [[int(v) for v in row] for row in self.T]
        counts = [dict() for _ in self.orders]

        def hashes(at):  # per order, the hash of the context before sym[at]
            out, h, done = [], 0, 0
            for k in self.orders:
                for j in range(done + 1, k + 1):
                    h ^= tables[j][sym[at - j]]
                done = k
                out.append(h)
            return out

        def add(at):
            for i, h in enumerate(hashes(at)):
                c = counts[i].get(h)
                if c is None:
                    c = counts[i][h] = np.zeros(256)
                c[sym[at] - 1] += 1.0

        for at in range(self.kmax, len(sym)):
            add(at)
        out = bytearray()
        zero = np.zeros(256)
        for _ in range(max_bytes):
            last = hashes(len(sym))
            p = self._dist(last, [counts[i].get(h, zero) for i, h in enumerate(last)], len(sym) - self.kmax)
            c = np.cumsum(p)
            b = int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), 255))
            out.append(b)
            sym.append(b + 1)
            add(len(sym) - 1)
        return bytes(out)


def _rank_in_group(keys, ar):
    """For each position, how many earlier positions have the same key (causal)."""
    o = np.argsort(keys, kind="stable")
    ks = keys[o]
    start = np.ones(len(ks), dtype=bool)
    start[1:] = ks[1:] != ks[:-1]
    first = np.maximum.accumulate(np.where(start, ar, 0))
    r = np.empty(len(ks), dtype=np.int64)
    r[o] = ar - first
    return r


def _exclusive_group_sum(keys, vals, ar):
    """For each position, the sum of `vals` over earlier positions with the same key (causal)."""
    o = np.argsort(keys, kind="stable")
    ks = keys[o]
    start = np.ones(len(ks), dtype=bool)
    start[1:] = ks[1:] != ks[:-1]
    first = np.maximum.accumulate(np.where(start, ar, 0))
    v = vals[o]
    cs = np.cumsum(v) - v
    r = np.empty(len(ks), dtype=np.int64)
    r[o] = cs - cs[first]
    return r


# ---------------------------------------------------------------------------------------------------
# The JSON-lines verbs


def _b64(obj, field):
    v = obj.get(field)
    if not isinstance(v, str):
        raise ValueError(f"missing or non-string field {field!r}")
    return base64.b64decode(v, validate=True)


def do_score(model, obj):
    data = _b64(obj, "text_b64")
    lp = model.score(data)
    return {"id": obj.get("id"), "tokens_b64": [B64[b] for b in data], "logprobs": [float(v) for v in lp]}


def do_next(model, obj):
    toks = obj.get("context_b64")
    if not isinstance(toks, list):
        raise ValueError("missing or non-list field 'context_b64'")
    ctx = b"".join(base64.b64decode(t, validate=True) if isinstance(t, str) else _bad_token() for t in toks)
    p = model.next_dist(ctx)
    return {"id": obj.get("id"), "dist": [[B64[b], float(math.log(p[b]))] for b in range(256)]}


def _bad_token():
    raise ValueError("context tokens must be base64 strings")


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


VERBS = {"score": do_score, "next": do_next, "sample": do_sample}


def main(argv):
    model_dir = os.path.dirname(os.path.realpath(__file__))
    args = list(argv)
    if len(args) >= 2 and args[0] == "--model":
        model_dir = args[1]
        args = args[2:]
    if len(args) != 1 or args[0] not in VERBS:
        print("usage: lm [--model DIR] score|next|sample < requests.jsonl", file=sys.stderr)
        return 2
    verb = VERBS[args[0]]
    model = Model.load(model_dir)
    out = sys.stdout
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
