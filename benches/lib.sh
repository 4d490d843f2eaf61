# Sourced by the benches' docker wrappers (memory_attack.sh, eval_holdout.sh).

# bench_out NAME [DIR]: DIR, or a new folder /tmp/gptx-NAME.XXXXXX, made and writable by the
# sandbox's user; prints its absolute path.
bench_out() {
  local out
  out=$(readlink -f "${2:-$(mktemp -d "/tmp/gptx-$1.XXXXXX")}")
  mkdir -p "$out"
  chmod 777 "$out"
  echo "$out"
}

# bench_image: the gptx/base image's name:tag; exits 2 saying how to build it when there is none.
bench_image() {
  local image
  image=$(docker images --format '{{.Repository}}:{{.Tag}}' gptx/base | head -1)
  [ -n "$image" ] || { echo "no gptx/base image: run gptx images build base" >&2; exit 2; }
  echo "$image"
}
