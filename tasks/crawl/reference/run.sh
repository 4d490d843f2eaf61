#!/bin/sh
# Runs the reference crawler from the workspace: writes data/corpus.jsonl. The arguments are the
# seed URLs (the instruction's list); they are kept in seeds.txt beside this script, so the
# selfhost rebuild, which runs this script without arguments, crawls from the same seeds.
# GPTX_TIME_LIMIT (seconds), set by the reference agent from the step's limit, bounds the crawl.
set -eu
mkdir -p data
here="$(dirname "$0")"
if [ "$#" -gt 0 ]; then printf '%s\n' "$@" > "$here/seeds.txt"; fi
set --
if [ -f "$here/seeds.txt" ]; then
    while IFS= read -r url; do
        if [ -n "$url" ]; then set -- "$@" --seed "$url"; fi
    done < "$here/seeds.txt"
fi
python3 "$here/crawl.py" --max-seconds "${GPTX_TIME_LIMIT:-900}" "$@"
if [ -f data/corpus.jsonl ]; then wc -l data/corpus.jsonl; fi
