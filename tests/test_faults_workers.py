"""Fault injection, worker processes: a conversion killed with SIGKILL leaves none of its worker processes running
(data_pipelines/reaper.py), on a plain process tree and on Apache Beam's DirectRunner."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import train_helpers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watcher reads /proc")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie has ended
    except OSError:
        return False


def _wait_gone(pids, timeout=15.0):
    deadline = time.time() + timeout
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from data_pipelines import reaper
    with reaper.descendants_end_with_this_process(poll_s=0.1, grace_s=1.0):
        shell = subprocess.Popen(["sh", "-c", "sleep 120 & sleep 120 & wait"])  # a child with children
        kids = []
        while len(kids) < 2:
            time.sleep(0.05)
            kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
                    and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(shell.pid)]
        time.sleep(0.5)  # the watcher has seen them
        print(shell.pid, *kids, flush=True)
        sys.stdin.readline()
        if sys.argv[1] == "leave":
            sys.exit(0)  # leaves the block with its workers still running
        time.sleep(120)
""")


def _descendants(pid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children = {}
    for line in out:
        if line.strip():
            p, pp = map(int, line.split())
            children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.parametrize("how", ["kill", "leave"])
def test_the_workers_of_a_killed_or_finished_process_end(how):
    env = dict(os.environ, PYTHONPATH=train_helpers.REPO)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 3 and all(_alive(p) for p in workers)
    if how == "kill":
        parent.send_signal(signal.SIGKILL)
    else:
        parent.stdin.write("go\n")
        parent.stdin.flush()
    parent.wait(timeout=30)
    assert _wait_gone(workers) == []


def test_a_killed_beam_conversion_leaves_no_workers(tmp_path):
    """SIGKILL of `convert --num_workers=2` while its Beam workers run: the workers end too."""
    pytest.importorskip("apache_beam")
    from oat_jax.benchmarks.data_phase import write_image_source

    source = write_image_source(str(tmp_path / "src"), episodes=48, files=4, steps=40, size=64)
    env = train_helpers.subprocess_env(num_devices=1)
    main = subprocess.Popen([sys.executable, "-m", "data_pipelines.convert", "--format=hdf5", f"--input={source}",
                             f"--output={tmp_path / 'out'}", "--num_workers=2"], cwd=train_helpers.REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and main.poll() is None:
        workers = [p for p in _descendants(main.pid) if "sdk_worker" in _cmdline(p)]
        if len(workers) >= 2:
            break
        time.sleep(0.2)
    assert main.poll() is None and len(workers) >= 2, "the conversion ended before its workers were seen"
    everything = _descendants(main.pid)
    main.send_signal(signal.SIGKILL)
    main.wait(timeout=30)
    assert _wait_gone(everything, timeout=30) == []
    assert not os.path.exists(tmp_path / "out")  # and nothing half-written at the output


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
