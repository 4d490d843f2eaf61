#!/bin/sh
# Runs the confinement tests of exec agents (src/agent/confine.rs) as an ordinary user. Run as
# root (as CI runs the tests) they return early: root's agents run as `nobody` instead.
#
# Usage, as root from anywhere in the checkout: tests/rootless/confine-check.sh [user]
# The user (default gptxuser) needs unprivileged user namespaces, and the test binary under
# target/debug/deps must be readable and executable to it.
set -eu
user=${1:-gptxuser}
cd "$(dirname "$0")/../.."
bin=$(cargo test --lib --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "confine-check: no test binary from cargo test --lib --no-run" >&2; exit 1; }
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
runtime=/run/user/$uid
[ -d "$runtime" ] || runtime=
status=0
for name in \
    agent::confine::tests::a_confined_agent_sees_nothing_hidden_and_cannot_write_or_unmount \
    agent::confine::tests::killing_the_agents_group_or_its_parent_ends_every_process_it_started
do
    out=$(cd "$home" && runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin ${runtime:+XDG_RUNTIME_DIR=$runtime} \
        "$bin" "$name" --exact --nocapture --test-threads=1 2>&1) || status=1
    printf '%s\n' "$out"
    # A renamed test would pass by running nothing; one run as root would pass by returning early.
    case $out in
        *"test result: ok. 1 passed"*) ;;
        *) echo "confine-check: $name did not pass as $user" >&2; status=1 ;;
    esac
    case $out in
        *"root: exec agents run as nobody"*) echo "confine-check: $name ran as root" >&2; status=1 ;;
    esac
done
exit $status
