#!/bin/sh
# Writes the reference recipe, bootstrap.sh: every earlier stage's reference solution, run again in
# order from an empty workspace (the solutions are in <stage>/reference/, which the harness copies
# with the recipe; data/, model/ and tokenizer/ are not copied and are rebuilt).
set -eu
cat > bootstrap.sh <<'SH'
#!/bin/sh
# Rebuilds everything from nothing: crawl → data/corpus.jsonl, tokenizer → tokenizer/ + bin/tokenize,
# model → model/ + bin/lm (trained without data/val.jsonl), eval → eval/report.json.
set -eu
cd "$(dirname "$0")"
export PYTHONDONTWRITEBYTECODE=1
GPTX_TIME_LIMIT=${GPTX_CRAWL_SECONDS:-600} sh crawl/reference/run.sh
GPTX_TIME_LIMIT=${GPTX_TOKENIZE_SECONDS:-300} sh tokenize/reference/run.sh
GPTX_TIME_LIMIT=${GPTX_TRAIN_SECONDS:-900} sh train/reference/run.sh
sh eval/reference/run.sh
echo "bootstrap: rebuilt $(ls model | wc -l) model files; $(cat eval/report.json | tr -d '\n')"
SH
chmod +x bootstrap.sh
for d in crawl tokenize train eval; do
    [ -f "$d/reference/run.sh" ] || { echo "selfhost: $d/reference/run.sh is missing" >&2; exit 1; }
done
echo "selfhost: wrote bootstrap.sh ($(wc -c < bootstrap.sh) bytes)"
