"""Time-to-accuracy on hymenoptera: the PyTorch tutorial loop against transferkit's default `fit`,
plus the synthetic ceiling (training images/s on random data already on the device).

    .venv/bin/python bench/gpu.py                      # on a GPU machine: everything, 3 seeds each
    .venv/bin/python bench/gpu.py --device cpu         # the CPU figures (slow: the tutorial loop takes minutes)
    .venv/bin/python bench/gpu.py --only fit --seeds 0 # just transferkit's default

Data: ../shared/data/hymenoptera, or --data. The tutorial loop is re-implemented here as the anchor:
torchvision ImageFolder + RandomResizedCrop(224) / flip, batch 4, 4 loader workers, SGD(lr 1e-3,
momentum 0.9), StepLR(7, 0.1), 25 epochs, best validation accuracy, same backbone (EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
    out = ROOT / "bench" / "results" / f"gpu_fit_seed{seed}"
    cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", str(data), "--out", str(out), "--overwrite", "--seed", str(seed), "--quiet"]
    if device == "cpu":
        cmd.append("--cpu")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    total = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {"accuracy": 100 * m["accuracy"], "wall_s": m["wall_s"], "command_s": total, "train_images_per_s": m["train_images_per_s"]}


def synthetic_ceiling(device: str, batch: int = 256, steps: int = 30) -> float:
    from transferkit.backbones import create_backbone
    from torch import nn

    bb = create_backbone("efficientnet_lite0")
    model = nn.Sequential(bb, nn.Linear(bb.num_features, 2)).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4, foreach=True)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for i in range(steps + 5):
        if i == 5:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
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
    ap.add_argument("--only", choices=["tutorial", "fit", "synthetic"], nargs="+", default=["tutorial", "fit", "synthetic"])
    ap.add_argument("--tutorial-epochs", type=int, default=25)
    args = ap.parse_args()
    data = Path(args.data)
    os.environ.setdefault("TRANSFERKIT_CACHE_DIR", str(ROOT / ".cache"))
    print(f"device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({os.cpu_count()} cores)"), flush=True)
    rows = {}
    if "tutorial" in args.only:
        rows["PyTorch tutorial loop"] = [tutorial_loop(data, args.device, s, args.tutorial_epochs) for s in args.seeds]
    if "fit" in args.only:
        rows["transferkit fit (default)"] = [transferkit_fit(data, args.device, s) for s in args.seeds]
    for name, rs in rows.items():
        for r in rs:
            print(json.dumps({"run": name, **{k: round(v, 2) for k, v in r.items()}}), flush=True)
    print("\n| run | accuracy % (mean, min-max) | wall s (mean) | whole command s | training images/s |\n|---|---|---|---|---|")
    for name, rs in rows.items():
        acc = [r["accuracy"] for r in rs]
        cmd = f"{statistics.mean(r['command_s'] for r in rs):.1f}" if "command_s" in rs[0] else "-"
        print(f"| {name} | {statistics.mean(acc):.2f} ({min(acc):.1f}-{max(acc):.1f}) | {statistics.mean(r['wall_s'] for r in rs):.1f} | {cmd} | {statistics.mean(r['train_images_per_s'] for r in rs):.0f} |")
    if "synthetic" in args.only:
        print(f"| synthetic on-device data, batch 256{', bf16' if args.device == 'cuda' else ''}, channels_last | - | - | - | {synthetic_ceiling(args.device):.0f} |")


if __name__ == "__main__":
    main()
