#!/usr/bin/env python3
"""What perfect memory of public text buys on a world's T: the reference model trained three ways,
each scored on the world's hidden test documents T.

- crawl: the reference agent's own crawl corpus (what an honest agent trains on);
- memory: the whole public corpus the target site was made from, T's original pages included
  (what an agent that remembers the public documentation perfectly could write out);
- crawl+memory: both;
- crawl+control (with --control): the crawl and as many bytes of another public corpus (text no
  one would call T's: PostgreSQL's documentation beside SQLite's), to tell what remembered T buys
  from what any related public text buys.

Each model is the reference trainer (tasks/train/reference/train.py) on that corpus, within the
same time limit, scored with its own `score` verb on every document of T: bits per byte =
sum(-logprobs) / ln 2 / bytes of T, the train stage's formula (the two-sandbox verification is left
out: the models are the reference's, which verifies). Runs inside the sandbox image (numpy):

    benches/memory_attack.sh WORLD_DIR CRAWL_CORPUS [PUBLIC_CORPUS]

Prints one line per model and writes results.json beside the models.
"""

import argparse
import json
import lzma
import os

from reference_lm import read_jsonl, score, train, write_jsonl


def docs_of_public(path):
    """The public corpus as crawl documents ({"url", "text"}), its pages' blocks joined as the
    world's gold text is."""
    out = []
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            text = "\n\n".join(b["t"] for b in d["blocks"])
            out.append({"url": "public:" + d["id"], "text": text})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="the built world's directory")
    ap.add_argument("--crawl", required=True, help="the reference crawl's data/corpus.jsonl")
    ap.add_argument("--public", required=True, help="the public corpus (.jsonl.xz)")
    ap.add_argument("--reference", required=True, help="tasks/train/reference")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=int, default=300)
    ap.add_argument("--control", help="another public corpus (.jsonl.xz) for the control row")
    ap.add_argument("--only", help="train only these models (comma-separated names)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    test = read_jsonl(os.path.join(a.world, "hidden", "test.jsonl"))
    public = docs_of_public(a.public)
    crawl = read_jsonl(a.crawl)
    t_texts = {d["text"] for d in test}
    corpora = {
        "crawl": crawl,
        "memory": public,
        # The crawl first: a trainer short of time keeps the first documents.
        "crawl+memory": crawl + public,
    }
    if a.control:
        size = sum(len(d["text"].encode()) for d in public)
        control, total = [], 0
        for d in docs_of_public(a.control):
            if total >= size:
                break
            control.append(d)
            total += len(d["text"].encode())
        corpora["crawl+control"] = crawl + control
    if a.only:
        corpora = {k: v for k, v in corpora.items() if k in a.only.split(",")}
    results = {"world": os.path.basename(os.path.normpath(a.world)),
               "t_documents": len(test),
               "t_bytes": sum(len(d["text"].encode()) for d in test),
               "t_pages_verbatim_in_public": sum(1 for d in public if d["text"] in t_texts),
               "models": {}}
    for name, docs in corpora.items():
        path = os.path.join(a.out, name.replace("+", "_") + ".jsonl")
        write_jsonl(path, docs)
        model = os.path.join(a.out, "model-" + name.replace("+", "_"))
        secs = train(a.reference, path, model, a.max_seconds)
        bpb = score(a.reference, model, test)
        size = sum(len(d["text"].encode()) for d in docs)
        results["models"][name] = {"documents": len(docs), "bytes": size,
                                   "train_seconds": round(secs, 1), "bpb_on_t": round(bpb, 4)}
        print(f"{name:>14}: {len(docs):5d} documents, {size / 1e6:6.2f} MB, trained in "
              f"{secs:5.0f} s, {bpb:.4f} bits per byte on T", flush=True)
    print(f"T: {results['t_documents']} documents, {results['t_bytes']} bytes; "
          f"{results['t_pages_verbatim_in_public']} of them verbatim in the public corpus")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
