"""Two runs never share a run directory: a live holder of run_dir/.lock refuses the second one with one line
naming the directory and the holder; a lock left by a dead process is taken over."""
import os
import socket
import subprocess
import sys

import pytest

from fastbert.errors import RunDirError
from fastbert.train import lock, run_stage

HOLD = """import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("held", flush=True)
time.sleep(120)
"""


def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(tiny):
    run_dir = tiny["run_dir"]
    os.makedirs(run_dir)
    (open(os.path.join(run_dir, "config.yaml"), "w")).write("the first run's settings\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, os.path.join(run_dir, ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirError, match=rf"{run_dir} is in use by another run \(pid {holder.pid} on "
                                              rf"{socket.gethostname()}; lock {run_dir}/\.lock\)"):
            run_stage("single", **tiny, task="sts", max_steps=2)
        assert open(os.path.join(run_dir, "config.yaml")).read() == "the first run's settings\n"  # untouched
    finally:
        holder.kill()
        holder.wait()
    assert open(os.path.join(run_dir, ".lock")).read().startswith(f"{holder.pid} ")  # stale: its holder is dead
    result = run_stage("single", **tiny, task="sts", max_steps=2)
    assert result["step"] == 2 and open(os.path.join(run_dir, ".lock")).read() == ""  # released


def test_the_lock_names_its_holder_and_excludes_others_in_one_process(tmp_path):
    first = lock.RunLock(str(tmp_path)).acquire()
    assert open(tmp_path / ".lock").read() == f"{os.getpid()} {socket.gethostname()}\n"
    with pytest.raises(RunDirError, match=f"pid {os.getpid()} on"):
        lock.RunLock(str(tmp_path)).acquire()
    first.release()
    with lock.held(str(tmp_path)):
        pass


def test_a_command_that_fails_early_leaves_no_run_directory(tiny):
    from fastbert.train import config
    with pytest.raises(config.ConfigError, match="beyond the encoder's 512 positions"):
        run_stage("single", **{**tiny, "max_length": 1000}, task="sts")
    assert not os.path.exists(tiny["run_dir"])  # (--resume would pick an empty newest run directory)
