"""Worker processes that end with the conversion that started them.

Apache Beam's DirectRunner (`--num_workers`) starts its SDK workers as child processes and stops them when the
pipeline ends; if the conversion itself is killed (SIGKILL, the out-of-memory killer), the workers would be left
running. `descendants_end_with_this_process()` starts a small watcher process that keeps a list of this process's
descendants (read from /proc every `poll_s` seconds) and, as soon as this process is gone or leaves the block,
ends those still running (SIGTERM, then SIGKILL after `grace_s`), together with every process that inherited the
block's environment token (`TOKEN_VARIABLE`: workers started between two polls). Linux only; elsewhere the block
runs unwatched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from typing import Iterator

TOKEN_VARIABLE = "OAT_REAPER_TOKEN"  # set in the environment the block's processes inherit

_WATCHER = r"""
import os, select, signal, sys, time
parent, poll_s, grace_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
token = ("%s=%s" % (sys.argv[4], sys.argv[5])).encode()
me = os.getpid()

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), fields[19]  # parent pid, start time (tells a reused pid apart)
    except (OSError, IndexError, ValueError):
        return None

def descendants():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(int(name))
            if s is not None:
                children.setdefault(s[0], []).append((int(name), s[1]))
    out, todo = {}, [parent]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid != me and pid not in out:
                out[pid] = start
                todo.append(pid)
    return out

def alive():
    return [pid for pid, start in seen.items() if (stat(pid) or (0, None))[1] == start]

seen = {}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], poll_s)
    if ready and not sys.stdin.buffer.read1(64):
        break  # the parent closed the pipe: it left the block, or it died
    seen.update(descendants())
    seen = {pid: seen[pid] for pid in alive()}  # forget the ended ones (one /proc read each)

def inherited():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (me, parent):
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if token in f.read().split(b"\0"):
                        s = stat(int(name))
                        if s is not None:
                            out[int(name)] = s[1]
            except OSError:
                pass
    return out

seen.update(inherited())

for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
    for pid in alive():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.time() + wait
    while alive() and time.time() < deadline:
        time.sleep(0.05)
"""


@contextlib.contextmanager
def descendants_end_with_this_process(poll_s: float = 0.5, grace_s: float = 3.0) -> Iterator[None]:
    """Inside the block, the processes this one starts (and theirs) are ended when it dies or leaves the block
    (see the module docstring)."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        yield
        return
    token, previous = uuid.uuid4().hex, os.environ.get(TOKEN_VARIABLE)
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(os.getpid()), str(poll_s), str(grace_s),
                                TOKEN_VARIABLE, token], stdin=subprocess.PIPE, start_new_session=True)
    os.environ[TOKEN_VARIABLE] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TOKEN_VARIABLE, None)
        else:
            os.environ[TOKEN_VARIABLE] = previous
        watcher.stdin.close()  # the watcher ends whatever of the block's processes still runs, then exits
        try:
            watcher.wait(timeout=grace_s + 10.0)
        except subprocess.TimeoutExpired:
            watcher.kill()
