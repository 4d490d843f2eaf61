#!/bin/sh
# Runs the reference trainer from the workspace: data/corpus.jsonl → model/, and bin/lm to serve it.
# About 10% of the documents (chosen by URL) are held out in data/val.jsonl and never trained on: the
# eval stage measures the model on them. GPTX_TIME_LIMIT (seconds), set by the reference agent from
# the step's limit, bounds the training.
set -eu
here=$(dirname "$0")
rm -rf model.tmp
python3 "$here/split.py" --corpus data/corpus.jsonl --train data/train.jsonl --val data/val.jsonl
python3 "$here/train.py" --corpus data/train.jsonl --out model.tmp --max-seconds "${GPTX_TIME_LIMIT:-600}" "$@"
cp "$here/lm.py" model.tmp/lm.py
rm -rf model
mv model.tmp model
mkdir -p bin
cat > bin/lm <<'LM'
#!/bin/sh
# The model's three verbs (score, next, sample): JSON lines in, JSON lines out. See model/lm.py.
exec python3 "$(dirname "$0")/../model/lm.py" "$@"
LM
chmod +x bin/lm
