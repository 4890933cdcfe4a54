"""Time-to-accuracy on hymenoptera: the PyTorch tutorial loop against transferkit's default `fit`,
plus the synthetic ceiling (training images/s on random data already on the device).

    .venv/bin/python bench/gpu.py                      # on a GPU machine: everything, 3 seeds each
    .venv/bin/python bench/gpu.py --device cpu         # the CPU figures (slow: the tutorial loop takes minutes)
    .venv/bin/python bench/gpu.py --only fit --seeds 0 # just transferkit's default
    .venv/bin/python bench/gpu.py --only scale          # seconds per 1,000 training images at 3 dataset sizes

On the project's device machine (no internet, no ../shared): bench/device/prepare.sh here, then
`bash bench/device/run.sh` there with `.gpu_bundle` carried (see README, Benchmarks).

Data: ../shared/data/hymenoptera, or --data. The tutorial loop is re-implemented here as the anchor:
torchvision ImageFolder + RandomResizedCrop(224) / flip, batch 4, 4 loader workers, SGD(lr 1e-3,
momentum 0.9), StepLR(7, 0.1), 25 epochs, best validation accuracy, same backbone (EfficientNet-Lite0).

The fit rows also split the default lp_ft into its parts from metrics.json: the backbone's feature pass
(cold cache on the first seed, memory-mapped hits after), the linear probe on those cached features,
and the fine-tuning phase. `scale` runs 1 epoch of full fine-tuning (default augmentation) on CSVs that
list hymenoptera's images again and again, and prints seconds per 1,000 training images at each size:
cost should grow linearly with the number of images (accuracy there means nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def tutorial_loop(data: Path, device: str, seed: int, epochs: int = 25) -> dict:
    from torch import nn
    from torchvision import datasets, transforms

    from transferkit.backbones import create_backbone

    torch.manual_seed(seed)
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)  # the backbone's own normalisation
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm]),
    }
    t0 = time.perf_counter()
    sets = {k: datasets.ImageFolder(str(data / k), tf[k]) for k in ("train", "val")}
    loaders = {k: torch.utils.data.DataLoader(sets[k], batch_size=4, shuffle=k == "train", num_workers=4) for k in sets}
    bb = create_backbone("efficientnet_lite0")
    model = nn.Sequential(bb, nn.Linear(bb.num_features, len(sets["train"].classes))).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    best, train_s, n_img = 0.0, 0.0, 0
    for _ in range(epochs):
        model.train()
        te = time.perf_counter()
        for x, y in loaders["train"]:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            n_img += len(x)
        sched.step()
        if device == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - te
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        best = max(best, correct / len(sets["val"]))
    return {"accuracy": 100 * best, "wall_s": time.perf_counter() - t0, "train_images_per_s": n_img / train_s}


def transferkit_fit(data: Path, device: str, seed: int) -> dict:
    """The whole command, Python start-up and model load included, and its own wall time (data
    loading to final evaluation) from metrics.json."""
    out = Path(tempfile.mkdtemp(prefix="tk-bench-gpu-")) / f"fit-seed{seed}"
    cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", str(data), "--out", str(out), "--overwrite", "--seed", str(seed), "--quiet"]
    if device == "cpu":
        cmd.append("--cpu")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    total = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    t = m["timing"]
    return {"accuracy": 100 * m["accuracy"], "wall_s": m["wall_s"], "command_s": total, "train_images_per_s": m["train_images_per_s"],
            "feature_cache_hit": int(bool(m["feature_cache_hit"])), "features_s": t["features_s"], "probe_train_s": t["probe_s"] - t["features_s"], "finetune_s": t["finetune_s"]}


def scaling(data: Path, device: str, sizes: list[int], batch: int) -> list[dict]:
    """1 epoch of full fine-tuning on `n` rows listing `data`'s images again and again."""
    files = sorted(data.rglob("*.jpg"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-bench-scale-") as tmp:
        for n in sizes:
            csv = Path(tmp) / f"rows-{n}.csv"
            csv.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in (files * (n // len(files) + 1))[:n]))
            out = Path(tmp) / f"run-{n}"
            cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", str(csv), "--out", str(out), "--quiet",
                   "--strategy", "full", "--epochs", "1", "--val-fraction", "0.1", "--batch-size", str(batch)] + (["--cpu"] if device == "cpu" else [])
            subprocess.run(cmd, check=True)
            m = json.loads((out / "metrics.json").read_text())
            t = m["timing"]
            rows.append({"rows": n, "train_images": t["train_images"], "train_s": t["train_seconds"], "wall_s": m["wall_s"],
                         "train_s_per_1k": 1000 * t["train_seconds"] / t["train_images"], "wall_s_per_1k": 1000 * m["wall_s"] / n,
                         "train_images_per_s": m["train_images_per_s"]})
            print(json.dumps({"run": "scale", **{k: round(v, 2) for k, v in rows[-1].items()}}), flush=True)
    return rows


def synthetic_ceiling(device: str, batch: int = 256, steps: int = 30) -> float:
    from transferkit.backbones import create_backbone
    from torch import nn

    bb = create_backbone("efficientnet_lite0")
    model = nn.Sequential(bb, nn.Linear(bb.num_features, 2)).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4, foreach=True)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    from transferkit.fit import resolve_precision

    bf16 = resolve_precision("auto", cpu=device == "cpu") == "bf16"  # the precision `fit` trains in on this device
    for i in range(steps + 5):
        if i == 5:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", choices=["tutorial", "fit", "synthetic", "scale"], nargs="+", default=["tutorial", "fit", "synthetic", "scale"])
    ap.add_argument("--tutorial-seeds", nargs="+", type=int, help="seeds of the tutorial loop (default: --seeds)")
    ap.add_argument("--scale-sizes", nargs="+", type=int, help="rows for `scale` (default: 2,000 / 10,000 / 20,000 on a GPU, 500 / 1,000 / 2,000 on a CPU)")
    ap.add_argument("--scale-batch", type=int, help="batch size of `scale` and of the synthetic ceiling beside it (default: 256 on a GPU, 32 on a CPU)")
    ap.add_argument("--tutorial-epochs", type=int, default=25)
    args = ap.parse_args()
    data = Path(args.data)
    os.environ.setdefault("TRANSFERKIT_CACHE_DIR", str(ROOT / ".cache"))
    print(f"device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({os.cpu_count()} cores)"), flush=True)
    rows = {}
    if "tutorial" in args.only:
        rows["PyTorch tutorial loop"] = [tutorial_loop(data, args.device, s, args.tutorial_epochs) for s in (args.tutorial_seeds or args.seeds)]
    if "fit" in args.only:
        rows["transferkit fit (default)"] = [transferkit_fit(data, args.device, s) for s in args.seeds]
    for name, rs in rows.items():
        for r in rs:
            print(json.dumps({"run": name, **{k: round(v, 2) for k, v in r.items()}}), flush=True)
    if rows or "synthetic" in args.only:
        print("\n| run | accuracy % (mean, min-max) | wall s (mean) | whole command s | training images/s |\n|---|---|---|---|---|")
    for name, rs in rows.items():
        acc = [r["accuracy"] for r in rs]
        cmd = f"{statistics.mean(r['command_s'] for r in rs):.1f}" if "command_s" in rs[0] else "-"
        print(f"| {name} | {statistics.mean(acc):.2f} ({min(acc):.1f}-{max(acc):.1f}) | {statistics.mean(r['wall_s'] for r in rs):.1f} | {cmd} | {statistics.mean(r['train_images_per_s'] for r in rs):.0f} |")
    if "synthetic" in args.only:
        b = 256 if args.device == "cuda" else 32  # batch 256 on a 2-core CPU: < 10 images/s and 19 GB
        from transferkit.fit import resolve_precision

        mp = resolve_precision("auto", cpu=args.device == "cpu")
        print(f"| synthetic on-device data, batch {b}, {mp if mp != 'no' else 'fp32'}, channels_last | - | - | - | {synthetic_ceiling(args.device, batch=b):.0f} |")
    fits = rows.get("transferkit fit (default)")
    if fits:
        print("\n| seed | feature pass s (cache) | linear probe on cached features s | fine-tuning phase s |\n|---|---|---|---|")
        for s, r in zip(args.seeds, fits):
            print(f"| {s} | {r['features_s']:.2f} ({'hit' if r['feature_cache_hit'] else 'computed'}) | {r['probe_train_s']:.3f} | {r['finetune_s']:.1f} |")
    if "scale" in args.only:
        sizes = args.scale_sizes or ([2000, 10000, 20000] if args.device == "cuda" else [500, 1000, 2000])
        batch = args.scale_batch or (256 if args.device == "cuda" else 32)
        sc = scaling(data, args.device, sizes, batch)
        ceiling = synthetic_ceiling(args.device, batch=batch)
        print("\n| rows | training images (1 epoch) | training s | training s per 1,000 images | whole fit s | whole fit s per 1,000 rows |\n|---|---|---|---|---|---|")
        for r in sc:
            print(f"| {r['rows']} | {r['train_images']} | {r['train_s']:.1f} | {r['train_s_per_1k']:.2f} | {r['wall_s']:.1f} | {r['wall_s_per_1k']:.2f} |")
        best = max(r["train_images_per_s"] for r in sc)
        print(f"\nfull fine-tuning, batch {batch}: real data {best:.0f} training images/s (largest of the sizes), synthetic on-device data "
              f"{ceiling:.0f} images/s: ratio {best / ceiling:.2f}")


if __name__ == "__main__":
    main()
