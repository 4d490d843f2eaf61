#!/usr/bin/env python3
"""Byte-level BPE encoder/decoder of the tokenize stage: the program behind bin/tokenize.

Text is split into pieces by a regular expression on bytes (words with their leading space,
numbers, punctuation runs, line breaks, whitespace; every piece at most MAX_PIECE bytes). A piece
that is itself a token is that token; any other is encoded by applying the learned merges in rank
order, starting from its bytes. Ids 0..255 are the bytes themselves, so any byte string encodes,
and decoding is concatenation of the tokens' bytes: the round trip is exact. Encoded pieces are
cached, and long runs of one byte become many identical bounded pieces, so encoding stays linear.

The merges are read from merges.txt next to this file (one "left right" pair of ids per line, the
merge of rank r making id 256 + r), as written by train_bpe.py.

Usage:
    bpe_tokenizer.py encode   stdin {"id", "text_b64"} lines -> stdout {"id", "ids"} lines
    bpe_tokenizer.py decode   stdin {"id", "ids"} lines      -> stdout {"id", "text_b64"} lines

One output line per input line, in order; a line that cannot be handled gives
{"id": ..., "error": "..."} and the next line is processed as usual.
"""

import base64
import json
import os
import re
import sys

# Longest piece the pre-tokenizer produces. Longer runs are cut into pieces of this size, which
# bounds the per-piece merge work and lets the cache absorb runs such as 100000 x "a".
MAX_PIECE = 32

# Bytes >= 0x80 count as letters so that UTF-8 encoded words (accents, CJK, emoji) stay together.
_LETTER = rb"A-Za-z\x80-\xff"
_SPACE = rb" \t\n\r\f\v"
_N = str(MAX_PIECE).encode()
PIECE_RE = re.compile(b"|".join([
    rb"'(?:s|t|d|m|ll|ve|re)(?![" + _LETTER + rb"])",  # English contractions
    rb" ?[" + _LETTER + rb"]{1," + _N + rb"}",  # a word, with its leading space
    rb" ?[0-9]{1,3}",  # numbers, by groups of up to three digits
    rb" ?[^" + _SPACE + _LETTER + rb"0-9]{1," + _N + rb"}",  # a run of other bytes
    rb"[\r\n]{1," + _N + rb"}",  # line breaks (blank lines are one piece)
    rb"[" + _SPACE + rb"]{1," + _N + rb"}(?![^" + _SPACE + rb"])",  # other whitespace, leaving
    rb"[" + _SPACE + rb"]{1," + _N + rb"}",  # its last space to the next word
]))


def pieces(data):
    """The pre-tokenizer: the pieces of `data` (bytes), which concatenate back to `data`."""
    return PIECE_RE.findall(data)


def load_merges(path):
    """The merges of merges.txt as a list of (left, right) id pairs, in rank order."""
    with open(path, "rb") as f:
        ids = list(map(int, f.read().split()))
    if len(ids) % 2:
        raise ValueError("%s: odd number of ids" % path)
    return list(zip(ids[0::2], ids[1::2]))


class Tokenizer:
    def __init__(self, merges):
        self.merges = list(merges)
        self.vocab_size = 256 + len(self.merges)
        # (left, right) -> rank; the merged token's id is 256 + rank.
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        tokens = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            tokens.append(tokens[a] + tokens[b])
        self.tokens = tokens
        self.token_id = {t: i for i, t in reversed(list(enumerate(tokens)))}
        self.cache = {}

    @classmethod
    def from_dir(cls, directory):
        return cls(load_merges(os.path.join(directory, "merges.txt")))

    def encode_piece(self, piece):
        """Ids of one piece: a piece that is a token is that token; otherwise, starting from its
        bytes, the adjacent pair of lowest rank is merged (leftmost first) until none is left."""
        whole = self.token_id.get(piece)
        if whole is not None:
            return [whole]
        ids = list(piece)
        get = self.ranks.get
        while len(ids) > 1:
            ranks = list(map(get, zip(ids, ids[1:])))
            best = min([r for r in ranks if r is not None], default=None)
            if best is None:
                break
            i = ranks.index(best)
            ids[i:i + 2] = (256 + best,)
        return ids

    def encode(self, data):
        cache = self.cache
        if len(cache) > 500_000:
            cache.clear()
        out = []
        extend = out.extend
        for p in PIECE_RE.findall(data):
            ids = cache.get(p)
            if ids is None:
                ids = cache[p] = self.encode_piece(p)
            extend(ids)
        return out

    def decode(self, ids):
        tokens = self.tokens
        return b"".join([tokens[i] for i in ids])


def _id_json(obj):
    ident = obj.get("id") if isinstance(obj, dict) else None
    try:
        return json.dumps(ident)
    except (TypeError, ValueError):
        return "null"


def _handle_encode(tok, obj):
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    text = obj.get("text_b64")
    if not isinstance(text, str):
        raise ValueError("missing string field text_b64")
    data = base64.b64decode(text)
    ids = tok.encode(data)
    return '{"id": %s, "ids": [%s]}' % (_id_json(obj), ",".join(map(str, ids)))


def _handle_decode(tok, obj):
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    ids = obj.get("ids")
    if not isinstance(ids, list):
        raise ValueError("missing list field ids")
    n = tok.vocab_size
    for i in ids:
        if type(i) is not int or not 0 <= i < n:
            raise ValueError("invalid token id %r (vocab_size %d)" % (i, n))
    text = base64.b64encode(tok.decode(ids)).decode("ascii")
    return '{"id": %s, "text_b64": "%s"}' % (_id_json(obj), text)


def main(argv):
    if len(argv) != 2 or argv[1] not in ("encode", "decode"):
        sys.stderr.write("usage: %s encode|decode < in.jsonl > out.jsonl\n" % argv[0])
        return 2
    handle = _handle_encode if argv[1] == "encode" else _handle_decode
    tok = Tokenizer.from_dir(os.path.dirname(os.path.realpath(__file__)))
    out = sys.stdout
    for line in sys.stdin.buffer:
        obj = None
        try:
            obj = json.loads(line)
            result = handle(tok, obj)
        except Exception as e:  # one bad line must not stop the others
            msg = "%s: %s" % (type(e).__name__, e)
            result = '{"id": %s, "error": %s}' % (_id_json(obj), json.dumps(msg[:500]))
        out.write(result)
        out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
