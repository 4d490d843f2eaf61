# Shared by setup.sh and run.sh (sourced, as root): the test user and the environment its commands
# run in. Override the user with GPTX_ROOTLESS_USER.
ROOTLESS_USER=${GPTX_ROOTLESS_USER:-gptxuser}

# The environment of a command run as the user, one NAME=value a line: a clean login-like one, with
# the user's runtime directory and its rootless Podman service as the Docker engine.
rootless_env() {
  local uid home
  uid=$(id -u "$ROOTLESS_USER")
  home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
  printf '%s\n' \
    "HOME=$home" \
    "USER=$ROOTLESS_USER" \
    "LOGNAME=$ROOTLESS_USER" \
    "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    "XDG_RUNTIME_DIR=/run/user/$uid" \
    "DOCKER_HOST=unix:///run/user/$uid/podman.sock"
}

# The rootless Podman service's socket.
rootless_socket() {
  echo "/run/user/$(id -u "$ROOTLESS_USER")/podman.sock"
}

# Runs a command as the user with only that environment (plus any NAME=value given before the
# command: `as_user FOO=1 cmd args`).
as_user() {
  local -a env
  mapfile -t env < <(rootless_env)
  runuser -u "$ROOTLESS_USER" -- env -i "${env[@]}" "$@"
}

# Whether the user's Podman service answers.
podman_answers() {
  [ "$(curl -s --max-time 5 --unix-socket "$(rootless_socket)" http://d/_ping 2>/dev/null)" = OK ]
}
