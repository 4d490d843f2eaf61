"""The benches' shared parts: JSON lines in and out, and the reference trainer and scorer
(tasks/train/reference) run as the train stage runs them, bits per byte as the stage counts them
(sum(-logprobs) / ln 2 / bytes). Imported by memory_attack.py and eval_holdout.py, which their .sh
wrappers mount beside it."""

import base64
import json
import math
import os
import subprocess
import sys
import time


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def train(reference, corpus, out, seconds):
    """Trains the reference on the JSON lines `corpus` into `out`, within `seconds`; the time taken."""
    t0 = time.time()
    subprocess.run([sys.executable, os.path.join(reference, "train.py"), "--corpus", corpus,
                    "--out", out, "--max-seconds", str(seconds)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.time() - t0


def score(reference, model, docs):
    """Bits per byte of `model` on the documents `docs` ({"text"}), with its own `score` verb."""
    req = "".join(json.dumps({"id": str(i), "text_b64": base64.b64encode(
        d["text"].encode("utf-8")).decode()}) + "\n" for i, d in enumerate(docs))
    p = subprocess.run([sys.executable, os.path.join(reference, "lm.py"), "--model", model,
                        "score"], input=req.encode(), capture_output=True, check=True)
    nats = 0.0
    for line in p.stdout.decode().splitlines():
        nats -= sum(json.loads(line)["logprobs"])
    total = sum(len(d["text"].encode("utf-8")) for d in docs)
    return nats / math.log(2) / total
