"""Images a forward pass on a CPU: EfficientNet-Lite0 at 224 px, channels_last, fp32.

    .venv/bin/python bench/cpu_passes.py

Inference: images/s at 64, 32, 16, 8 and 4 images a pass (the same 64 images). Training: one step of
32 images (BatchNorm statistics frozen, as lp_ft fine-tunes) in 1, 2, 4 and 8 passes whose gradients
add up (`--accumulate`). Each is timed after one warm-up, then again in the other order, as this
machine's timings drift. What `memory.CPU_IMAGES_A_PASS` rests on.
"""

import time

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


if __name__ == "__main__":
    main()
