#!/bin/sh
# Runs the reference evaluator from the workspace: bin/lm on data/val.jsonl → eval/report.json.
set -eu
python3 "$(dirname "$0")/evaluate.py" --val data/val.jsonl --lm bin/lm --out eval/report.json
