#!/usr/bin/env bash
# The real engine tests again, as an ordinary user against its rootless Podman (run as root from
# the repo root, after `cargo test` built everything): sets the user up (setup.sh), runs a chosen
# list of integration tests as that user, prints a table, and fails if a test failed or a gptx
# container, network or volume is left in the user's Podman.
# Usage: tests/rootless/run.sh [BINARY[:FILTER,FILTER...]]...   (default: the list below)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/rootless/common.sh
repo=$(pwd)
GPTX=${GPTX:-$repo/target/debug/gptx}

# Binary, then test-name filters (none: all of its tests).
SELECTION=(
  # The mini reference reaches L6; plans run by hand (the Slurm half of the binary is not run).
  "ladder_e2e:reference_closes_the_loop,plan::"
  "integrity_docker"
  # Resume after a kill, after a lost engine, in a batch, for an external agent; refusals.
  "faults_docker:resume,a_batch_run_again_keeps_done_pairs_and_runs_the_rest,a_lost_engine_stops_the_run_within_seconds_as_interrupted"
  "sandbox_docker"
)
[ $# -gt 0 ] && SELECTION=("$@")

tests/rootless/setup.sh "$GPTX"

logs=$(mktemp -d /tmp/gptx-rootless-logs.XXXXXX)
echo "== finding the test binaries (cargo test --no-run)"
if ! cargo test --no-run --message-format=json >"$logs/build.json" 2>"$logs/build.err"; then
  tail -30 "$logs/build.err" >&2
  echo "error: cargo test --no-run failed (whole output in $logs/build.err)" >&2
  exit 1
fi
declare -A exe
while read -r name path; do
  exe[$name]=$path
done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' "$logs/build.json")

# The tests run from a directory of the user's (the binaries find the checkout by the path built in).
home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
work="$home/rootless-tests"
as_user mkdir -p "$work"

rows=()
failed=0
for sel in "${SELECTION[@]}"; do
  bin=${sel%%:*}
  filters=()
  [ "$sel" != "$bin" ] && IFS=, read -r -a filters <<<"${sel#*:}"
  path=${exe[$bin]:-}
  if [ -z "$path" ]; then
    echo "error: no test binary named $bin" >&2
    rows+=("$bin|-|-|-|-|-|no binary")
    failed=1
    continue
  fi
  echo "== $bin ${filters[*]} (as $ROOTLESS_USER)"
  start=$(date +%s)
  set +e
  (cd "$work" && as_user RUST_BACKTRACE=1 "$path" --test-threads=1 --show-output "${filters[@]}") 2>&1 | tee "$logs/$bin.log"
  code=${PIPESTATUS[0]}
  set -e
  secs=$(($(date +%s) - start))
  res=$(grep -E '^test result:' "$logs/$bin.log" | tail -1)
  num() { sed -nE "s/.* ([0-9]+) $1.*/\1/p" <<<"$res"; }
  p=$(num passed) f=$(num failed) i=$(num ignored)
  # Tests that pass without running what they check, rootless, say so on a line of their own.
  k=$(grep -c '^skipped: ' "$logs/$bin.log" || true)
  # The names libtest lists under its last "failures:" heading.
  bad=$(awk '/^failures:$/ { f = 1; n = 0; list = "" } /^successes:$/ { f = 0 }
    f && /^    [^ ]/ { list = list (n++ ? " " : "") $1 } END { print list }' "$logs/$bin.log")
  [ "$code" -ne 0 ] && failed=1
  rows+=("$bin|${p:-?}|${f:-?}|${i:-?}|$k|$secs|${bad:-$([ "$code" -eq 0 ] && echo ok || echo "exit $code")}")
done

echo "== no gptx containers, networks or volumes left in $ROOTLESS_USER's Podman"
left=$( (as_user podman ps -aq --filter label=gptx.run
         as_user podman network ls -q --filter label=gptx.run
         as_user podman volume ls -q --filter label=gptx.run) | wc -l)
if [ "$left" -ne 0 ]; then
  echo "error: $left gptx resource(s) left behind:"
  as_user podman ps -a --filter label=gptx.run --format '{{.ID}} {{.Names}} {{.Status}} {{.Labels}}'
  as_user podman network ls --filter label=gptx.run
  as_user podman volume ls --filter label=gptx.run
  failed=1
else
  echo "clean"
fi

echo "== rootless Podman summary (logs in $logs)"
printf '%-18s %6s %6s %7s %7s %6s  %s\n' binary passed failed ignored skipped secs result
for r in "${rows[@]}"; do
  IFS='|' read -r b p f i k s note <<<"$r"
  printf '%-18s %6s %6s %7s %7s %6s  %s\n' "$b" "$p" "$f" "$i" "$k" "$s" "$note"
done
echo "(skipped: passed without checking what needs root; failed: the tests listed)"
exit "$failed"
