#!/usr/bin/env python3
"""Reference evaluator of the eval stage: measures bin/lm on the held-out documents and reports it.

Runs `bin/lm score` on every document of the validation file (JSON lines {"url", "text"}), checks
that the tokens spell each document, sums the negative log-probabilities and writes
eval/report.json with the bits per byte, exactly as the harness will measure them.

Usage: evaluate.py [--val data/val.jsonl] [--lm bin/lm] [--out eval/report.json]
"""

import argparse
import base64
import json
import math
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", default="data/val.jsonl")
    ap.add_argument("--lm", default="bin/lm")
    ap.add_argument("--out", default="eval/report.json")
    args = ap.parse_args()
    docs = []
    with open(args.val, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = json.loads(line)["text"].encode("utf-8")
                if text:
                    docs.append(text)
    if not docs:
        sys.exit(f"evaluate: {args.val} holds no documents")
    request = "".join(
        json.dumps({"id": f"v{i}", "text_b64": base64.b64encode(d).decode()}) + "\n"
        for i, d in enumerate(docs)
    )
    run = subprocess.run(["./" + args.lm if not args.lm.startswith("/") else args.lm, "score"],
                         input=request.encode(), capture_output=True, check=True)
    answers = {}
    for line in run.stdout.decode().splitlines():
        obj = json.loads(line)
        answers[obj["id"]] = obj
    nats = 0.0
    total = 0
    for i, d in enumerate(docs):
        a = answers[f"v{i}"]
        spelled = b"".join(base64.b64decode(t) for t in a["tokens_b64"])
        if spelled != d:
            sys.exit(f"evaluate: the tokens of document v{i} do not spell it")
        nats -= sum(a["logprobs"])
        total += len(d)
    bpb = nats / math.log(2) / total
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    report = {
        "val_path": args.val,
        "val_bpb": round(bpb, 6),
        "notes": (f"bin/lm score on {len(docs)} held-out documents ({total} bytes) that the trainer "
                  "never counted: they were split off data/corpus.jsonl by URL hash before training"),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"evaluate: {bpb:.4f} bits per byte on {len(docs)} documents, {total} bytes -> {args.out}")


if __name__ == "__main__":
    main()
