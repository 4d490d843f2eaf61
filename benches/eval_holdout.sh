#!/usr/bin/env bash
# Does a validation set predict the score on T? Every 10th SQLite page against whole families of
# SQLite's pages held out (3 seeds), each with the reference model and a memorising byte n-gram,
# trained on a perfect crawl of the world (its gold text and the target's /archive/ copies) and
# scored on validation and on T. Runs benches/eval_holdout.py in the base image (numpy), with the
# world read-only and nothing but the output folder writable, and no network.
#
#   benches/eval_holdout.sh WORLD_DIR [OUT]
#
# WORLD_DIR: a built world (`gptx world show --suite frontier` names it). MAX_SECONDS (default 240)
# bounds each training of the reference; SEEDS (default 3) family draws; MODELS (default
# ngram,reference) the models to run.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
world=$(readlink -f "$1")
out=$(bench_out eval-holdout "${2:-}")
image=$(bench_image)
echo "image $image; world $world; output $out" >&2
docker run --rm --network none --cpus "${CPUS:-1.5}" --memory 8g \
  -v "$world:/world:ro" -v "$PWD/tasks/train/reference:/reference:ro" \
  -v "$PWD/benches/reference_lm.py:/reference_lm.py:ro" \
  -v "$PWD/benches/eval_holdout.py:/eval_holdout.py:ro" -v "$out:/out" "$image" \
  python3 /eval_holdout.py --world /world --reference /reference --out /out \
  --max-seconds "${MAX_SECONDS:-240}" --seeds "${SEEDS:-3}" --models "${MODELS:-ngram,reference}"
