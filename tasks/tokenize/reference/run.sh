#!/bin/sh
# Runs the reference tokenizer training from the workspace: writes tokenizer/ and bin/tokenize.
# Trains a byte-level BPE (train_bpe.py) on data/corpus.jsonl, copies the encoder
# (bpe_tokenizer.py) next to its merges so that bin/tokenize needs nothing else, and checks a round
# trip. GPTX_TIME_LIMIT (seconds), set by the reference agent from the step's limit, bounds the
# training; arguments go to train_bpe.py (e.g. --vocab-size 8192).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
limit=${GPTX_TIME_LIMIT:-600}
limit=${limit%%.*}
export PYTHONDONTWRITEBYTECODE=1
mkdir -p tokenizer bin
start=$(date +%s)
# Merges get half the time limit; counting pieces is linear and fast. 16 MB of text is far more
# than a 16384-token vocabulary needs.
python3 "$here/train_bpe.py" --corpus data/corpus.jsonl --out tokenizer --vocab-size 16384 \
    --max-bytes 16000000 --max-seconds "$((limit / 2))" "$@"
cp "$here/bpe_tokenizer.py" tokenizer/bpe_tokenizer.py
cat > bin/tokenize <<'SH'
#!/bin/sh
# Byte-level BPE tokenizer: bin/tokenize encode|decode, JSON lines on stdin and stdout.
root=$(cd "$(dirname "$0")/.." && pwd)
exec python3 -B "$root/tokenizer/bpe_tokenizer.py" "$@"
SH
chmod +x bin/tokenize
# Round trip of awkward bytes through the installed program, as a smoke test.
b64=$(printf 'caf\303\251 \000\377\r\n\n  x = 1\t\360\237\230\200' | base64 | tr -d '\n')
back=$(printf '{"id": "t", "text_b64": "%s"}\n' "$b64" | ./bin/tokenize encode | ./bin/tokenize decode)
if [ "$back" != "{\"id\": \"t\", \"text_b64\": \"$b64\"}" ]; then
    echo "tokenize: round trip failed: $back" >&2
    exit 1
fi
echo "tokenize: $(tr -d '\n' < tokenizer/meta.json), $(wc -l < tokenizer/merges.txt) merges, trained in $(($(date +%s) - start)) s, round trip ok"
