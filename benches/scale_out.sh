#!/usr/bin/env bash
# The same 6-item plan run three ways, side by side: here with `--parallel 2`, on a 1-node Slurm
# cluster, and on a 2-node one (both started on this machine by tests/slurm/cluster.sh). Prints
# each way's wall time and per-item overhead (`gptx bench plan`: scheduler dispatch plus gptx's
# start, up to the item's first tool call). Needs root, Docker, the base image and Debian's
# slurmctld, slurmd, slurm-client and munge.
#
#   benches/scale_out.sh [GPTX]      GPTX: the gptx binary (default: target/release/gptx)
#
# The plan: null, reference:crawl and reference, seeds 1-2, on mini's crawl, tokenize, train and
# eval stages. Each way runs two items at once, as the machine has two cores: the local run with
# --parallel 2, the 1-node cluster's node declares 4 CPUs (each item asks 2), and each node of the
# 2-node cluster declares 2. So the three ways differ only in who places the items.
set -euo pipefail
cd "$(dirname "$0")/.."
gptx=$(readlink -f "${1:-target/release/gptx}")
work=$(mktemp -d /tmp/gptx-scale-out.XXXXXX)
# munged wants every folder above its socket searchable by all.
chmod 755 "$work"
cluster="$work/cluster"
mkdir -p "$cluster"
stop() { tests/slurm/cluster.sh stop "$cluster" >/dev/null 2>&1 || true; }
trap stop EXIT

plan() {
  "$gptx" plan --suite mini --seeds 1-2 --stages crawl,tokenize,train,eval \
    --agent null --agent reference:crawl --agent reference --out "$1/plan.json" >/dev/null
}

results=()
mkdir -p "$work/local"
plan "$work/local"
results+=("$("$gptx" bench plan --via local --parallel 2 --plan "$work/local/plan.json" 2>"$work/local.log")")

for nodes in 1 2; do
  mkdir -p "$work/slurm$nodes"
  plan "$work/slurm$nodes"
  stop
  # Each node holds 2 / nodes items: CPUs and memory for that many.
  eval "$(GPTX_SLURM_CPUS_PER_NODE=$((4 / nodes)) GPTX_SLURM_MEM_PER_NODE=$((12000 / nodes)) \
    tests/slurm/cluster.sh start "$cluster" "$nodes")"
  export SLURM_CONF
  results+=("$("$gptx" bench plan --via slurm --slots 2 \
    --label "slurm, $nodes node(s)" --plan "$work/slurm$nodes/plan.json")")
done

printf '%s\n\n' "${results[@]}"
echo "runs and plans kept in $work"
