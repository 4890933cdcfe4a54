"""Two processes (torchrun, gloo on the CPU) train to the same weights as one process with the same
global batch: each takes its share of every batch, augmented as one batch, and gradients are averaged."""

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import make_folder, tiny_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_and_two(tmp_path, args, extra_two=()):
    """The same fit with one process and with two (torchrun, also given `extra_two`); returns both run directories."""
    env_cmd = [sys.executable, "-m", "transferkit.cli"]
    one = subprocess.run(env_cmd + args + ["--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "transferkit.cli"] + args + list(extra_two) + ["--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp_path / "one", tmp_path / "two"


def _same_weights(one, two):
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    d = make_folder(tmp_path / "d", n=8, size=20)
    # without a GPU, no --cpu: the README's torchrun command as a user types it (each process took itself for the only one)
    args = ["fit", "--data", str(d), "--model", "small_convnet", "--strategy", "full", "--epochs", "2", "--batch-size", "8",
            *(["--cpu"] if torch.cuda.is_available() else []), "--quiet", "--checkpoint-minutes", "100", "--precision", "no"]  # fp32: bf16 rounding differs with how a batch is split
    # the two processes also forward their 4 examples a step in 2 micro-batches (gradients synchronised once a step)
    one, two = _one_and_two(tmp_path, args, extra_two=["--accumulate", "2"])
    _same_weights(one, two)
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert (m1["micro_batches"], m2["micro_batches"]) == (1, 2)
    # each process forwarded half of every global batch (sharded, not the whole batch twice)
    assert m1["timing"]["local_images"] == m1["timing"]["train_images"] == m2["timing"]["train_images"]
    assert m2["timing"]["local_images"] * 2 == m2["timing"]["train_images"]
    assert m1["optimizer_steps"] == m2["optimizer_steps"] and m1["accuracy"] == m2["accuracy"]
    h1 = (tmp_path / "one" / "history.csv").read_text().splitlines()
    h2 = (tmp_path / "two" / "history.csv").read_text().splitlines()
    assert len(h1) == len(h2) == 3
    assert m1["optimizer_steps"] == 4  # 13 training images, 2 batches of the global 8 per epoch, 2 epochs: both runs trained


def test_two_processes_match_one_for_a_batchnorm_model_with_frozen_statistics(tmp_path, tiny_ckpt):
    """BatchNorm layers whose statistics train normalise each process's share of the batch (no
    SyncBatchNorm on the CPU); with `--bn-stats frozen` they compute alike, and so do the weights."""
    d = make_folder(tmp_path / "d", n=8, size=20)
    args = ["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "full", "--bn-stats", "frozen", "--epochs", "2",
            "--batch-size", "8", "--cpu", "--quiet", "--checkpoint-minutes", "100", "--precision", "no"]
    one, two = _one_and_two(tmp_path, args)
    _same_weights(one, two)
    w = load_file(str(one / "model.safetensors"))
    assert any(k.endswith("running_mean") for k in w)  # a model with BatchNorm layers


def _rank_pid(out: str, rank: int) -> int | None:
    """The process of `rank` in the torchrun job writing `out` (read from /proc)."""
    from pathlib import Path

    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and out.encode() in cmd and b"transferkit.cli" in cmd:
            return int(p.name)
    return None


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    """A signal reaches torchrun's processes at different moments (here only the second gets one): they
    agree to stop at the same step, so the first writes its checkpoint and says so, instead of the
    others dying in gloo waiting for the one that left; the run then resumes to the end."""
    import signal
    import time
    from pathlib import Path

    d = make_folder(tmp_path / "d", n=8, size=20)
    out = str(tmp_path / "two")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                "-m", "transferkit.cli"]
    args = ["fit", "--data", str(d), "--model", "small_convnet", "--strategy", "full", "--epochs", "400", "--batch-size", "8", "--quiet",
            "--checkpoint-minutes", "100", "--precision", "no", "--calibrate", "none", "--baseline", "none"]
    job = subprocess.Popen(torchrun + args + ["--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(Path(out, "checkpoints").glob("*")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = _rank_pid(out, 1)
        assert pid is not None and job.poll() is None, "the run ended or never trained"
        os.kill(pid, signal.SIGTERM)
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert "stopped by a signal to another process; checkpoint written" in err, err[-3000:]
    assert f"Resume with:\n  torchrun --nproc_per_node 2 -m transferkit.cli fit --resume {out}" in err  # launched as it ran (QA AC)
    assert "Connection closed by peer" not in err and "[rank0]: Traceback" not in err, err[-3000:]
    done = len(Path(out, "history.csv").read_text().splitlines()) if Path(out, "history.csv").exists() else 0
    assert done == 0  # not finished
    r = subprocess.run(torchrun[:8] + [str(_free_port())] + torchrun[9:] + ["fit", "--resume", out], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(Path(out, "history.csv").read_text().splitlines()) == 401


def test_a_mistake_under_torchrun_is_said_once_without_a_traceback_from_us(tmp_path):
    """QA AC: --batch-size 1 with two processes was a RuntimeError traceback from every process (each
    process's share of a batch was 0 examples); a bad setting was printed once per process."""
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            "-m", "transferkit.cli", "fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "full", "--epochs", "1", "--quiet"]
    r = subprocess.run(base + ["--batch-size", "1", "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("transferkit: error:")]
    assert said == ["transferkit: error: --batch-size 1 is smaller than the 2 processes, which share each batch; give --batch-size 2 or more"], r.stderr[-3000:]
    assert "tensor_split" not in r.stderr and "number of sections" not in r.stderr


def test_a_last_batch_smaller_than_the_process_count_joins_the_one_before(tmp_path):
    """Review AF: with 3 processes a last batch of 2 examples left one process none (a tensor_split
    traceback from every process)."""
    from transferkit.data import load_image_data

    n = len(load_image_data("digits:3,8").train)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        "-m", "transferkit.cli", "fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "full", "--epochs", "1", "--quiet",
                        "--batch-size", str(n - 2), "--calibrate", "none", "--baseline", "none", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["optimizer_steps"] == 1  # the 2 left over joined the first batch
