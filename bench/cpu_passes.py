"""Images a forward pass on a CPU: EfficientNet-Lite0 at 224 px, channels_last, fp32.

    .venv/bin/python bench/cpu_passes.py

Inference: images/s at 64, 32, 16, 8 and 4 images a pass (the same 64 images). Training: one step of
32 images (BatchNorm statistics frozen, as lp_ft fine-tunes) in 1, 2, 4 and 8 passes whose gradients
add up (`--accumulate`). Each is timed after one warm-up, then again in the other order, as this
machine's timings drift. What `memory.CPU_IMAGES_A_PASS` rests on.

    .venv/bin/python bench/cpu_passes.py --fit [--rounds 2]

The whole default `fit` on hymenoptera (2 epochs of fine-tuning, seed 0, `--ft-patience 0`, CPU),
with whole batches (the limit lifted) and with images 8 a pass, alternating, as this machine's speed
drifts by a quarter over an hour: fine-tuning seconds and images/s from each run's metrics.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from transferkit.config import RunConfig, replace
from transferkit.model import create_model, model_groups, set_trainable


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    m = create_model(replace(RunConfig(), model="efficientnet_lite0").model, 2).to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    m.eval()
    with torch.no_grad():
        for bs in (64, 32, 16, 8, 4, 4, 8, 16, 32, 64):
            for c in x.split(bs):
                m(c)
            t = time.perf_counter()
            for c in x.split(bs):
                m(c)
            print(f"inference, {bs} images a pass: {64 / (time.perf_counter() - t):.1f} images/s", flush=True)
    g = model_groups(m)
    set_trainable(m, g, {x_.name for x_ in g}, bn_stats="frozen")
    xb, y = x[:32], torch.randint(0, 2, (32,))

    def step(parts: int) -> None:
        m.zero_grad()
        for xc, yc in zip(xb.tensor_split(parts), y.tensor_split(parts)):
            (F.cross_entropy(m(xc), yc) * len(yc) / 32).backward()

    for parts in (1, 2, 4, 8, 8, 4, 2, 1):
        step(parts)
        t = time.perf_counter()
        step(parts)
        dt = time.perf_counter() - t
        print(f"training step of 32 in {parts} pass(es) of {32 // parts}: {dt:.2f} s, {32 / dt:.1f} images/s", flush=True)


def fit_rounds(rounds: int) -> None:
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera"
    code = ("import sys; import transferkit.memory as m; m.CPU_IMAGES_A_PASS = int(sys.argv[1]); "
            "from transferkit.cli import main; sys.exit(main(sys.argv[2:]))")
    runs: dict[str, list[dict]] = {"whole batches of 32": [], "8 a pass": []}
    with tempfile.TemporaryDirectory(prefix="tk-passes-") as tmp:
        for r in range(rounds):
            for label, limit in (("whole batches of 32", 10**6), ("8 a pass", 8)):
                out = Path(tmp) / f"run{r}-{limit}"
                subprocess.run([sys.executable, "-c", code, str(limit), "fit", "--data", str(data), "--out", str(out), "--epochs", "2",
                                "--ft-patience", "0", "--seed", "0", "--cpu", "--quiet"], check=True)
                m = json.loads((out / "metrics.json").read_text())
                row = {"train_s": m["timing"]["train_seconds"], "images_per_s": m["train_images_per_s"], "accuracy": 100 * m["accuracy"]}
                runs[label].append(row)
                print(json.dumps({"round": r, "run": label, **{k: round(v, 2) for k, v in row.items()}}), flush=True)
    for label, rows in runs.items():
        secs = [x["train_s"] for x in rows]
        speed = sum(x["images_per_s"] for x in rows) / len(rows)
        acc = ", ".join(f"{x['accuracy']:.2f}" for x in rows)
        print(f"{label}: fine-tuning {sum(secs) / len(secs):.1f} s mean ({', '.join(f'{t:.1f}' for t in secs)}), {speed:.1f} images/s, accuracy {acc}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", action="store_true", help="time the whole default fit, whole batches against 8 a pass")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    fit_rounds(a.rounds) if a.fit else main()
