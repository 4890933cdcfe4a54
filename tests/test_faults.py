"""Kills, signals and a second writer, through the real CLI in subprocesses."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from transferkit.backbones.cifar_resnet import CifarResNet
from transferkit.rundir import is_complete


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    rng = np.random.default_rng(1)
    for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (data / c).mkdir(parents=True)
        for i in range(12):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(data / c / f"{i}.png")
    torch.manual_seed(0)
    save_file(CifarResNet(20).state_dict(), str(root / "r20.safetensors"))
    return root


def _cmd(tiny, out, *extra):
    return [
        sys.executable, "-m", "transferkit.cli", "fit", "--data", str(tiny / "data"), "--model", f"file:{tiny / 'r20.safetensors'}",
        "--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "4", "--epochs", "6", "--strategy", "full", "--out", str(out), "--quiet", *extra,
    ]


def _env(tmp_path):
    return {**os.environ, "TRANSFERKIT_CACHE_DIR": str(tmp_path / "cache"), "CI": "1"}


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _metrics(run):
    m = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in ("wall_s", "timing", "train_images_per_s", "train_texts_per_s", "feature_cache_hit", "resumed")}


def _wait_for(path, proc, timeout=60):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


def test_sigterm_checkpoints_and_exits_143_then_resume_matches(tiny, tmp_path):
    env = _env(tmp_path)
    subprocess.run(_cmd(tiny, tmp_path / "whole"), env=env, check=True)
    run = tmp_path / "cut"
    p = subprocess.Popen(_cmd(tiny, run), env=env, stderr=subprocess.PIPE, text=True)
    assert _wait_for(run / "checkpoints" / "checkpoints.json", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 143, err
    assert f"transferkit fit --resume {run}" in err
    assert not is_complete(run)
    subprocess.run([sys.executable, "-m", "transferkit.cli", "fit", "--resume", str(run), "--quiet"], env=env, check=True)
    w1, w2 = _weights(tmp_path / "whole"), _weights(run)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert _metrics(tmp_path / "whole") == _metrics(run)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tiny, tmp_path):
    env = _env(tmp_path)
    subprocess.run(_cmd(tiny, tmp_path / "whole"), env=env, check=True)
    run = tmp_path / "killed"
    rnd = random.Random(0)
    kills = 0
    p = subprocess.Popen(_cmd(tiny, run), env=env, stderr=subprocess.DEVNULL)
    while kills < 3:
        _wait_for(run / "checkpoints" / "checkpoints.json", p)
        time.sleep(rnd.uniform(0.0, 0.6))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        assert not is_complete(run)
        p = subprocess.Popen([sys.executable, "-m", "transferkit.cli", "fit", "--resume", str(run), "--quiet"], env=env, stderr=subprocess.DEVNULL)
    assert p.wait(timeout=300) == 0
    assert kills >= 1
    w1, w2 = _weights(tmp_path / "whole"), _weights(run)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert _metrics(tmp_path / "whole") == _metrics(run)


def test_second_writer_refused_and_stale_lock_taken_over(tiny, tmp_path):
    env = _env(tmp_path)
    run = tmp_path / "locked"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        r = subprocess.run([c for c in _cmd(tiny, run) if c != "--quiet"], env=env, capture_output=True, text=True)
        assert r.returncode == 2
        assert f"pid {holder.pid}" in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == "", r.stdout  # refused before the data is read and the plan printed, not after
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and is taken over
    r = subprocess.run(_cmd(tiny, run, "--epochs", "1"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert is_complete(run) and not (run / ".lock").exists()
