#!/bin/sh
# Runs the reference trainer from the workspace: data/corpus.jsonl → model/, and bin/lm to serve it.
# GPTX_TIME_LIMIT (seconds), set by the reference agent from the step's limit, bounds the training.
set -eu
here=$(dirname "$0")
rm -rf model.tmp
python3 "$here/train.py" --corpus data/corpus.jsonl --out model.tmp --max-seconds "${GPTX_TIME_LIMIT:-600}" "$@"
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
