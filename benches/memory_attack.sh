#!/usr/bin/env bash
# The acceptance experiment of a private target: the reference model trained on its own crawl, on
# the whole public corpus the target was made from (T's originals included: perfect memory), and on
# both, each scored on the world's T. Runs benches/memory_attack.py in the base image (numpy),
# with the world read-only and nothing but the output folder writable, and no network.
#
#   benches/memory_attack.sh WORLD_DIR CRAWL_CORPUS [PUBLIC_CORPUS] [OUT]
#
# WORLD_DIR: a built world (`gptx world show --suite frontier` names it); CRAWL_CORPUS: the
# reference crawl's data/corpus.jsonl on that world; PUBLIC_CORPUS: default the frontier target's,
# tasks/worlds/corpus/sqlite-3.40-docs.jsonl.xz. MAX_SECONDS (default 300) bounds each training;
# CONTROL (default PostgreSQL's corpus) is the related public text of the control row, ONLY a
# comma-separated subset of the models to train.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
world=$(readlink -f "$1")
crawl=$(readlink -f "$2")
public=$(readlink -f "${3:-tasks/worlds/corpus/sqlite-3.40-docs.jsonl.xz}")
out=$(bench_out memory-attack "${4:-}")
image=$(bench_image)
echo "image $image; world $world; output $out" >&2
docker run --rm --network none --cpus 2 --memory 8g \
  -v "$world:/world:ro" -v "$crawl:/crawl.jsonl:ro" -v "$public:/public.jsonl.xz:ro" \
  -v "$PWD/tasks/train/reference:/reference:ro" -v "$PWD/benches/reference_lm.py:/reference_lm.py:ro" \
  -v "$PWD/benches/memory_attack.py:/attack.py:ro" \
  -v "$(readlink -f "${CONTROL:-tasks/worlds/corpus/postgresql-15-docs.jsonl.xz}"):/control.jsonl.xz:ro" \
  -v "$out:/out" "$image" \
  python3 /attack.py --world /world --crawl /crawl.jsonl --public /public.jsonl.xz \
  --reference /reference --out /out --max-seconds "${MAX_SECONDS:-300}" --control /control.jsonl.xz \
  ${ONLY:+--only "$ONLY"}
