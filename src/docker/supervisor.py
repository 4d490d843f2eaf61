# gptx sandbox supervisor: runs the agent's commands inside the sandbox, one at a time.
#
# The harness starts this once per sandbox (one long-lived `docker exec` with stdin attached) and
# talks JSON lines with it, which keeps the per-step cost far below a fresh `docker exec` per command.
#
# harness -> supervisor (stdin):
#   {"op": "exec", "id": N, "cmd": "...", "timeout_ms": N, "cwd": "/workspace", "env": {...},
#    "stdin_b64": "..."}   (optional: the command's standard input; without it stdin is /dev/null)
#   {"op": "ping", "id": N}
# supervisor -> harness (stdout):
#   {"id": N, "ev": "out", "s": "o"|"e", "d": "<base64>"}      (streamed, at most CHUNK bytes each)
#   {"id": N, "ev": "exit", "code": int|null, "signal": int|null, "timed_out": bool, "oom": bool,
#    "cpu_s": float, "max_rss_kb": int, "cg_cpu_s": float|null, "cg_peak_bytes": int|null,
#    "duration_ms": float, "error": str|null}
#   {"id": N, "ev": "pong", "pid": int, "undumpable": bool}
# N is a random number the harness draws per request. The supervisor makes itself non-dumpable at
# start (prctl), so no command can open its /proc/<pid>/fd/* and forge these lines.
# Only the standard library is used, so any image with python3 can host it.
import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time

CHUNK = 32 * 1024
DRAIN_AFTER_EXIT_S = 0.2
DRAIN_AFTER_KILL_S = 2.0


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def read_first(paths, parse):
    for p in paths:
        try:
            with open(p) as f:
                return parse(f.read())
        except (OSError, ValueError):
            continue
    return None


def keyed(name):
    def parse(text):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return int(parts[1])
        raise ValueError(name)

    return parse


def cgroup_cpu_s():
    v1 = read_first(
        ["/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"],
        lambda t: int(t.strip()) / 1e9,
    )
    if v1 is not None:
        return v1
    usec = read_first(["/sys/fs/cgroup/cpu.stat"], keyed("usage_usec"))
    return None if usec is None else usec / 1e6


def cgroup_oom_kills():
    return read_first(
        ["/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"], keyed("oom_kill")
    )


def cgroup_peak_bytes():
    return read_first(
        ["/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "/sys/fs/cgroup/memory.peak"],
        lambda t: int(t.strip()),
    )


def proc_table():
    """pid -> (ppid, sid) for every visible process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(name)] = (int(fields[1]), int(fields[3]))
    return table


def kill_tree(root):
    """SIGKILL the command's process group, its session and every descendant still attached."""
    me = os.getpid()
    table = proc_table()
    doomed = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid) in table.items():
            if pid not in doomed and pid != me and (ppid in doomed or sid == root):
                doomed.add(pid)
                changed = True
    try:
        os.killpg(root, signal.SIGKILL)
    except OSError:
        pass
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def raise_oom_score():
    # Make the command, not the supervisor, the first choice of the OOM killer.
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def feed(key, data, sel):
    """Writes what the child's stdin pipe takes now; closes it when all is written or the child is gone."""
    try:
        n = os.write(key.fileobj.fileno(), data[:CHUNK * 2])
    except BlockingIOError:
        return data
    except OSError:  # EPIPE: the command stopped reading
        n = len(data)
    data = data[n:]
    if not len(data):
        sel.unregister(key.fileobj)
        try:
            key.fileobj.close()
        except OSError:
            pass
    return data


def run(req):
    rid = req.get("id")
    timeout_s = max(0.001, float(req.get("timeout_ms", 60000)) / 1000.0)
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    stdin_data = None
    try:
        if req.get("stdin_b64") is not None:
            stdin_data = memoryview(base64.b64decode(req["stdin_b64"]))
    except (ValueError, TypeError) as e:
        emit({"id": rid, "ev": "exit", "code": None, "signal": None, "timed_out": False, "oom": False,
              "cpu_s": 0.0, "max_rss_kb": 0, "cg_cpu_s": None, "cg_peak_bytes": None,
              "duration_ms": 0.0, "error": "bad stdin_b64: %s" % e})
        return
    cpu0, oom0 = cgroup_cpu_s(), cgroup_oom_kills()
    start = time.monotonic()
    try:
        child = subprocess.Popen(
            ["/bin/bash", "-c", req["cmd"]],
            stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=req.get("cwd") or "/workspace",
            env=env,
            start_new_session=True,
            preexec_fn=raise_oom_score,
        )
    except (OSError, KeyError, TypeError) as e:
        emit({"id": rid, "ev": "exit", "code": None, "signal": None, "timed_out": False, "oom": False,
              "cpu_s": 0.0, "max_rss_kb": 0, "cg_cpu_s": None, "cg_peak_bytes": None,
              "duration_ms": 0.0, "error": "could not start the command: %s" % e})
        return
    sel = selectors.DefaultSelector()
    for stream, tag in ((child.stdout, "o"), (child.stderr, "e")):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ, tag)
    if stdin_data is not None:
        os.set_blocking(child.stdin.fileno(), False)
        if len(stdin_data):
            sel.register(child.stdin, selectors.EVENT_WRITE, "i")
        else:
            child.stdin.close()
    deadline = start + timeout_s
    drain_until = None
    timed_out = False
    status = rusage = None
    while True:
        now = time.monotonic()
        if status is None:
            pid, st, ru = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                status, rusage = st, ru
                drain_until = now + (DRAIN_AFTER_KILL_S if timed_out else DRAIN_AFTER_EXIT_S)
            elif now >= deadline and not timed_out:
                timed_out = True
                kill_tree(child.pid)
        if not sel.get_map() or (drain_until is not None and now >= drain_until):
            if status is not None:
                break
        if sel.get_map():
            wait = 0.05 if status is None else max(0.0, min(0.05, drain_until - now))
            for key, _ in sel.select(wait):
                if key.data == "i":
                    stdin_data = feed(key, stdin_data, sel)
                    continue
                try:
                    data = os.read(key.fileobj.fileno(), CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    emit({"id": rid, "ev": "out", "s": key.data, "d": base64.b64encode(data).decode()})
                else:
                    sel.unregister(key.fileobj)
        else:
            time.sleep(0.002 if time.monotonic() - start < 0.1 else 0.02)
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
    if child.stdin is not None and not child.stdin.closed:
        try:
            child.stdin.close()
        except OSError:
            pass
    child.stdout.close()
    child.stderr.close()
    duration_ms = (time.monotonic() - start) * 1000.0
    cpu1, oom1 = cgroup_cpu_s(), cgroup_oom_kills()
    code = os.waitstatus_to_exitcode(status)
    emit({
        "id": rid,
        "ev": "exit",
        "code": code if code >= 0 else None,
        "signal": -code if code < 0 else None,
        "timed_out": timed_out,
        "oom": oom0 is not None and oom1 is not None and oom1 > oom0,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "max_rss_kb": rusage.ru_maxrss,
        "cg_cpu_s": None if cpu0 is None or cpu1 is None else max(0.0, cpu1 - cpu0),
        "cg_peak_bytes": cgroup_peak_bytes(),
        "duration_ms": duration_ms,
        "error": None,
    })


def make_undumpable():
    """Closes this process's /proc entries (fd/, mem, environ) and ptrace to the sandbox user, so a
    command of the same uid cannot write forged lines into our stdout through /proc/<pid>/fd/1. The
    commands are exec'd binaries, which the kernel makes dumpable again: only the supervisor is closed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_DUMPABLE = 4
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
        return True
    except Exception as e:  # the harness sees dumpable=false in the pong and refuses to go on
        sys.stderr.write("supervisor: could not make itself undumpable: %s\n" % e)
        sys.stderr.flush()
        return False


def main():
    # Writing to a command that stopped reading its stdin must be an error, not a fatal signal; commands
    # themselves get the default SIGPIPE back (Popen's restore_signals).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    closed = make_undumpable()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            sys.stderr.write("supervisor: bad request line: %r\n" % line[:200])
            sys.stderr.flush()
            continue
        op = req.get("op")
        if op == "ping":
            emit({"id": req.get("id"), "ev": "pong", "pid": os.getpid(), "undumpable": closed})
        elif op == "exec":
            run(req)
        else:
            sys.stderr.write("supervisor: unknown op %r\n" % op)
            sys.stderr.flush()


if __name__ == "__main__":
    main()
