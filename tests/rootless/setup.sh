#!/usr/bin/env bash
# Prepares an ordinary user to run gptx against rootless Podman (run as root; idempotent):
#   - the user (gptxuser, uid 2000 when free) with subordinate uid/gid ranges,
#   - its runtime directory /run/user/<uid> (there is no systemd to make it),
#   - Podman storage on native overlay (without it rootless Podman falls back to the slow vfs),
#   - the user's Podman service on /run/user/<uid>/podman.sock (its Docker-compatible API),
#   - the base and minimal images, built with the root engine and loaded into the user's Podman.
# Usage: tests/rootless/setup.sh [GPTX]   (the gptx binary; else $GPTX, else target/debug/gptx)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/rootless/common.sh

GPTX=${1:-${GPTX:-target/debug/gptx}}
GPTX=$(realpath "$GPTX")
[ "$(id -u)" -eq 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }
[ -x "$GPTX" ] || { echo "setup.sh: no gptx binary at $GPTX" >&2; exit 1; }

# The user, with a home; uid 2000 when it is free.
if ! id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
  uid_flag=()
  getent passwd 2000 >/dev/null || uid_flag=(-u 2000)
  useradd -m -d "/home/$ROOTLESS_USER" -s /bin/bash "${uid_flag[@]}" "$ROOTLESS_USER"
  echo "created user $ROOTLESS_USER (uid $(id -u "$ROOTLESS_USER"))"
fi
uid=$(id -u "$ROOTLESS_USER")
gid=$(id -g "$ROOTLESS_USER")
home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)

# Subordinate ids (useradd adds them when login.defs says so; else 65536 after the last range).
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^$ROOTLESS_USER:" "$f"; then
    start=$(awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f")
    echo "$ROOTLESS_USER:$start:65536" >>"$f"
    echo "added $ROOTLESS_USER:$start:65536 to $f"
  fi
done

# The runtime directory (root makes it: no systemd-logind here).
install -d -m 0700 -o "$uid" -g "$gid" "/run/user/$uid"

# Rootless storage on native overlay.
conf="$home/.config/containers/storage.conf"
if [ ! -f "$conf" ] || ! grep -q '^driver *= *"overlay"' "$conf"; then
  install -d -m 0700 -o "$uid" -g "$gid" "$home/.config"
  install -d -m 0755 -o "$uid" -g "$gid" "$home/.config/containers"
  printf '[storage]\ndriver = "overlay"\n' >"$conf"
  chown "$uid:$gid" "$conf"
  echo "wrote $conf"
fi

# The user's Podman service, started in a session of its own so it outlives this script.
sock=$(rootless_socket)
if ! podman_answers; then
  rm -f "$sock"
  log="/run/user/$uid/podman-service.log"
  mapfile -t env < <(rootless_env)
  setsid runuser -u "$ROOTLESS_USER" -- env -i "${env[@]}" \
    podman system service --time=0 "unix://$sock" </dev/null >"$log" 2>&1 &
  for _ in $(seq 60); do
    podman_answers && break
    sleep 0.5
  done
  if ! podman_answers; then
    echo "setup.sh: the rootless Podman service of $ROOTLESS_USER did not answer on $sock within 30 s; its log ($log):" >&2
    tail -20 "$log" >&2 || true
    exit 1
  fi
  echo "started the rootless Podman service of $ROOTLESS_USER on $sock"
fi

# The user must reach the binary (and the checkout it was built from).
as_user test -x "$GPTX" || {
  echo "setup.sh: $ROOTLESS_USER cannot run $GPTX (a parent directory closed to others?)" >&2
  exit 1
}

# The images: built by the root engine (skipped when present), saved, loaded into the user's
# Podman; skipped when the user's Podman already has this checkout's tags.
built_for_user() {
  as_user "$GPTX" images list | awk '($1 == "base" || $1 == "minimal") && $3 == "built"' | wc -l
}
if [ "$(built_for_user)" -ne 2 ]; then
  tar=$(mktemp /tmp/gptx-rootless-images.XXXXXX)
  trap 'rm -f "$tar"' EXIT
  env -u DOCKER_HOST "$GPTX" images build base minimal
  env -u DOCKER_HOST "$GPTX" images save base minimal -o "$tar"
  chmod 0644 "$tar"
  as_user "$GPTX" images load "$tar"
  [ "$(built_for_user)" -eq 2 ] || {
    echo "setup.sh: the user's Podman still lacks base or minimal after the load:" >&2
    as_user "$GPTX" images list >&2
    exit 1
  }
fi
echo "rootless Podman ready for $ROOTLESS_USER (uid $uid): $(as_user podman version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), DOCKER_HOST=unix://$sock"
