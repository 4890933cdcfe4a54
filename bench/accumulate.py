"""Gradient accumulation: peak memory, speed and result of `--accumulate N` (same optimizer steps).

    .venv/bin/python bench/accumulate.py                  # images (hymenoptera) and text (SST-2, 2,000 rows)
    .venv/bin/python bench/accumulate.py --only image --parts 1 4
    .venv/bin/python bench/accumulate.py --checkpointing     # --grad-checkpointing instead of the micro-batch rows
    .venv/bin/python bench/accumulate.py --adapt             # `adapt` (masked-LM, MiniLM) plain, --accumulate 4, --grad-checkpointing, both

Each row is one `transferkit fit` in a subprocess under /usr/bin/time (peak resident memory of the
whole process: model, optimizer state, activations, data). Each kept model's probabilities on held-out
data are compared with those of the `--accumulate 1` run. With frozen BatchNorm statistics (lp_ft's
default) and no dropout (EfficientNet-Lite0 here) the steps are the same up to float rounding: the
gradients agree to about 1e-5 relative (convolutions sum in another order at another batch size),
which Adam passes on to weights whose gradients are near zero (its first steps move every weight by
about lr whatever the gradient's size). The last row of each table runs `--accumulate 1` again on one
thread instead of two: the same computation summed in another order, float rounding alone, for scale.
A text model's dropout draws differ with the micro-batches, so its runs are different samples of the
same training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TK = [sys.executable, "-m", "transferkit.cli"]


def sst2_subset(folder: Path, rows: int) -> tuple[Path, Path]:
    lines = (SHARED / "text" / "sst2" / "train.tsv").read_text().splitlines()
    dev = (SHARED / "text" / "sst2" / "test.tsv").read_text().splitlines()
    tr, va = folder / "train.tsv", folder / "val.tsv"
    tr.write_text("\n".join(lines[: rows + 1]) + "\n")
    va.write_text("\n".join(dev) + "\n")
    return tr, va


def setups(tmp: Path, only: str | None) -> dict[str, list[str]]:
    out = {}
    if only in (None, "image"):
        # full fine-tuning of every layer for one epoch (so the kept weights are that epoch's, not the
        # probe's), BatchNorm statistics frozen as lp_ft's fine-tuning phase has them
        image = ["--data", str(SHARED / "hymenoptera"), "--strategy", "full", "--bn-stats", "frozen", "--epochs", "1", "--batch-size", "32"]
        out["image: efficientnet_lite0 full (AdamW), BatchNorm statistics frozen, 1 epoch, batch 32, hymenoptera"] = image
        out["image: the same with SGD (lr 0.01)"] = image + ["--optimizer", "sgd", "--lr", "0.01"]
    if only in (None, "text"):
        tr, _ = sst2_subset(tmp, 2000)
        out["text: minilm_l6 full, 1 epoch, batch 32, SST-2 first 2,000 rows"] = [
            "--data", str(tr), "--model", "minilm_l6", "--strategy", "full", "--epochs", "1", "--batch-size", "32", "--max-length", "64"]
    return out


def run(args: list[str], out: Path, threads: int | None = None) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    p = subprocess.run(["/usr/bin/time", "-f", "TIME %M %e"] + TK + ["fit", *args, "--out", str(out), "--quiet"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    rss_kb, _ = p.stderr.strip().splitlines()[-1].split()[1:]
    m = json.loads((out / "metrics.json").read_text())
    return {"peak_rss_mib": int(rss_kb) // 1024, "wall_s": round(time.perf_counter() - t0, 1), "accuracy": round(100 * m["accuracy"], 2),
            "finetune_s": round(m["timing"].get("finetune_s", 0.0), 1), "train_images_per_s": m["train_images_per_s"],
            "micro_batches": m["micro_batches"], "optimizer_steps": m["optimizer_steps"]}


def held_out(name: str) -> tuple[str, list]:
    """What the kept models are compared on: hymenoptera's 153 validation images, SST-2's 872 test sentences."""
    if name.startswith("image"):
        return "image", sorted(str(p) for p in (SHARED / "hymenoptera" / "val").rglob("*.jpg"))
    rows = (SHARED / "text" / "sst2" / "test.tsv").read_text().splitlines()[1:]
    return "text", [r.split("\t")[0] for r in rows]


def probabilities(run_dir: Path, kind: str, items: list) -> np.ndarray:
    from transferkit import ImageClassifier, TextClassifier

    return (ImageClassifier if kind == "image" else TextClassifier).load(run_dir).predict_proba(items)


def adapt_rows(tmp: Path) -> None:
    """`transferkit adapt` (masked-LM pretraining of MiniLM on SST-2's first 1,000 training sentences,
    1 epoch, batch 32, 64 tokens) plain, in micro-batches, with checkpointing and with both: peak
    memory, time, the losses, and the largest weight difference to the plain run. MiniLM's dropout
    draws differ with the micro-batches (a test with dropout off finds the same weights to 1e-5)."""
    from safetensors.torch import load_file

    tr, _ = sst2_subset(tmp, 1000)
    base = ["adapt", "--data", str(tr), "--model", "minilm_l6", "--epochs", "1", "--batch-size", "32", "--max-length", "64", "--quiet"]
    print("\n## adapt: minilm_l6 masked-LM, 1 epoch, batch 32, 64 tokens, SST-2 first 1,000 sentences\n")
    print("| adapt options | peak RSS MiB | whole command s | masked-LM s | loss first 20 steps -> last 20 | largest weight difference to the plain run |")
    print("|---|---|---|---|---|---|")
    first = None
    for i, extra in enumerate([[], ["--accumulate", "4"], ["--grad-checkpointing"], ["--accumulate", "4", "--grad-checkpointing"]]):
        out = tmp / f"adapt{i}"
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "TIME %M %e"] + TK + base + extra + ["--out", str(out)], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        rss_kb = int(p.stderr.strip().splitlines()[-1].split()[1])
        info = json.loads((out / "adapt.json").read_text())
        w = load_file(str(out / "model.safetensors"))
        first = w if first is None else first
        diff = max(float((w[k].float() - first[k].float()).abs().max()) for k in first if first[k].numel())  # the head has 0 classes
        print(f"| {' '.join(extra) or '(plain)'} | {rss_kb // 1024} | {time.perf_counter() - t0:.1f} | {info['seconds']} | "
              f"{info['first_loss']:.3f} -> {info['last_loss']:.3f} | {diff:.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["image", "text"])
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--checkpointing", action="store_true", help="rows: plain, --grad-checkpointing, and with --accumulate 4")
    ap.add_argument("--adapt", action="store_true", help="rows of `transferkit adapt` (masked-LM) instead of `fit`")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if a.adapt:
            return adapt_rows(tmp)
        for name, args in setups(tmp, a.only).items():
            print(f"\n## {name}\n")
            kind, items = held_out(name)
            print(f"| --accumulate | examples a forward pass | peak RSS MiB | fine-tuning s | training images/s | whole command s | accuracy % | "
                  f"largest probability difference to --accumulate 1 ({len(items)} held-out {kind}s) | predictions that differ |")
            print("|---|---|---|---|---|---|---|---|---|")
            first = None
            if a.checkpointing:  # --grad-checkpointing, alone and with micro-batches
                rows = [("1", ["--accumulate", "1"], None, 32), ("1, --grad-checkpointing", ["--grad-checkpointing"], None, 32),
                        ("4, --grad-checkpointing", ["--accumulate", "4", "--grad-checkpointing"], None, 8)]
            else:  # the last row: --accumulate 1 again on one thread (other sums, in another order): float rounding alone
                rows = [(str(p), ["--accumulate", str(p)], None, -(-32 // p)) for p in a.parts] + [("1 (1 thread)", ["--accumulate", "1"], 1, 32)]
            for i, (label, extra, threads, per_pass) in enumerate(rows):
                out = tmp / f"{abs(hash(name))}_{i}"
                r = run(args + extra, out, threads)
                proba = probabilities(out, kind, items)
                first = proba if first is None else first
                diff, flips = float(np.abs(proba - first).max()), int((proba.argmax(1) != first.argmax(1)).sum())
                print(f"| {label} | {per_pass} | {r['peak_rss_mib']} | {r['finetune_s']} | {r['train_images_per_s']} | {r['wall_s']} | "
                      f"{r['accuracy']} | {diff:.1e} | {flips} |", flush=True)


if __name__ == "__main__":
    main()
