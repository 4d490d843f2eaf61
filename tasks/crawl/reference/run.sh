#!/bin/sh
# Runs the reference crawler from the workspace: writes data/corpus.jsonl (arguments go to crawl.py).
# GPTX_TIME_LIMIT (seconds), set by the reference agent from the step's limit, bounds the crawl.
set -eu
mkdir -p data
python3 "$(dirname "$0")/crawl.py" --max-seconds "${GPTX_TIME_LIMIT:-900}" "$@"
if [ -f data/corpus.jsonl ]; then wc -l data/corpus.jsonl; fi
