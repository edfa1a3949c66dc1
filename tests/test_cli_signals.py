"""A signal to a CLI command outside the extraction loop: one stderr line, the conventional exit code."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._heads_helpers import tiny_cache


def _torch_loaded(pid: int) -> bool:
    """The command body has started: torch is imported only inside commands, after the CLI set its handlers."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc to see the command start")
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signalled_training_command_stops_in_one_line(tmp_path, sig, code) -> None:
    cache = tiny_cache(tmp_path / "c.h5", n=400)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vea_bench_cli.main", "train", "distill", "--cache", str(cache),
                             "--epochs", "1000000", "--min-steps", "0", "--patience", "0", "--device", "cpu",
                             "--results", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not _torch_loaded(proc.pid):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)   # into the training loop
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code, err
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0], err
    assert "rerun the same command" in lines[0]
    assert not any((tmp_path / "r").rglob("*.json"))     # no record of a run that did not finish
