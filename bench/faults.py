"""Kill a fine-tuning run with SIGKILL at random moments, resume it each time, and check that the
result is bit-identical to the same run never interrupted.

    .venv/bin/python bench/faults.py                   # hymenoptera, full fine-tuning, 20 kills
    .venv/bin/python bench/faults.py --text            # minilm_l6, full fine-tuning on a 600-sentence slice of SST-2, 20 kills
    .venv/bin/python bench/faults.py --quick           # a tiny synthetic run, 5 kills (a minute or two)

A kill can land anywhere: during start-up, inside an epoch, in the middle of writing a checkpoint or
the final files. After each kill the run is continued with `fit --resume`, or started again when the
kill came before the run directory had its config. Prints kills survived / kills and whether the
final weights and metrics equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fit_cmd(args, out: Path) -> list[str]:
    return [sys.executable, "-m", "transferkit.cli", "fit", "--out", str(out), "--quiet", *args]


def _result(run: Path):
    from safetensors.torch import load_file

    m = json.loads((run / "metrics.json").read_text())
    volatile = ("wall_s", "timing", "train_images_per_s", "train_texts_per_s", "feature_cache_hit")
    return load_file(str(run / "model.safetensors")), {k: v for k, v in m.items() if k not in volatile}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--text", action="store_true", help="a text run (minilm_l6 on a slice of SST-2) instead of hymenoptera")
    ap.add_argument("--window", nargs=2, type=float, help="seconds between kills, drawn uniformly (default 5 30; text 4 20). On a busy "
                    "machine start-up takes longer: widen it so that kills land after the run directory exists")
    ap.add_argument("--text-size", type=int, default=600, help="--text: training sentences (and a third as many for validation)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-faults-"))
    env = {**os.environ, "TRANSFERKIT_CACHE_DIR": str(work / "cache"), "CI": "1"}
    if a.quick:
        import numpy as np
        import torch
        from PIL import Image
        from safetensors.torch import save_file

        from transferkit.backbones.cifar_resnet import CifarResNet

        rng = np.random.default_rng(0)
        for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
            (work / "data" / c).mkdir(parents=True)
            for i in range(12):
                arr = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(work / "data" / c / f"{i}.png")
        torch.manual_seed(0)
        save_file(CifarResNet(20).state_dict(), str(work / "r20.safetensors"))
        args = ["--data", str(work / "data"), "--model", f"file:{work / 'r20.safetensors'}", "--arch", "cifar_resnet20",
                "--input-size", "16", "--batch-size", "4", "--epochs", "6", "--strategy", "full"]
        kills, window = min(a.kills, 5), (0.5, 6.0)
    elif a.text:
        src = (ROOT.parent / "shared" / "data" / "text" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
        (work / "sst2").mkdir()
        n = a.text_size
        (work / "sst2" / "train.tsv").write_text("\n".join(src[: n + 1]) + "\n", encoding="utf-8")  # header + n
        (work / "sst2" / "val.tsv").write_text("\n".join(src[:1] + src[n + 1 : n + 1 + n // 3]) + "\n", encoding="utf-8")
        args = ["--data", str(work / "sst2"), "--model", "minilm_l6", "--strategy", "full", "--epochs", str(a.epochs), "--max-length", "64",
                "--checkpoint-minutes", "0.1"]
        kills, window = a.kills, (4.0, 20.0)
    else:
        args = ["--data", str(ROOT.parent / "shared" / "data" / "hymenoptera"), "--strategy", "full", "--epochs", str(a.epochs),
                "--checkpoint-minutes", "0.2"]
        kills, window = a.kills, (5.0, 30.0)

    if a.window:
        window = tuple(a.window)
    t0 = time.perf_counter()
    subprocess.run(_fit_cmd(args, work / "whole"), env=env, check=True)
    print(f"uninterrupted run: {time.perf_counter() - t0:.1f} s", flush=True)
    rnd = random.Random(a.seed)
    run = work / "killed"
    survived = 0
    proc = subprocess.Popen(_fit_cmd(args, run), env=env, stderr=subprocess.DEVNULL)
    for k in range(kills):
        time.sleep(rnd.uniform(*window))
        if proc.poll() is not None:
            print(f"kill {k + 1}: the run had already finished", flush=True)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survived += 1
        resumable = (run / "config.yaml").is_file()
        print(f"kill {k + 1}: SIGKILL; {'resuming' if resumable else 'before the run directory existed: starting again'}", flush=True)
        cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--resume", str(run), "--quiet"] if resumable else _fit_cmd(args, run)
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    rc = proc.wait()
    w1, m1 = _result(work / "whole")
    w2, m2 = _result(run)
    same = rc == 0 and w1.keys() == w2.keys() and all(bool((w1[k] == w2[k]).all()) for k in w1) and m1 == m2
    print(f"\nkills survived: {survived} / {survived}; final run exit code {rc}; bit-identical to the uninterrupted run: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
