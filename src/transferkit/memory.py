"""Running out of device memory need not end a run: work done in batches is done again in smaller
ones. (Training steps keep their batch and split it instead: `trainer.gradients_in_memory`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

T = TypeVar("T")

# Images a forward pass on a CPU. A CPU computes a batch of images faster in small passes whose
# activations stay in its caches. EfficientNet-Lite0 at 224 px on the 2-core EPYC, fp32
# (bench/cpu_passes.py): inference 40-44 images/s at 32 a pass, 77 at 8; a training step of 32 took
# 2.1 s in one pass, 1.3 s in passes of 8. In the whole default fit, alternating runs: fine-tuning
# 37.1 -> 28.2 s (bench/results/accumulate.md; and full fine-tuning's peak memory in passes of 8:
# 3.5 -> 2.4 GB). Texts are short passes already.
CPU_IMAGES_A_PASS = 8


def token_lengths(x: torch.Tensor) -> torch.Tensor | None:
    """Each row's length when `x` holds token rows (integers, padded with negative ids, as text
    backbones take them); None for anything else (images, features)."""
    if x.dim() != 2 or x.is_floating_point():
        return None
    return (x >= 0).sum(1)


def longest_first(x: torch.Tensor) -> torch.Tensor | None:
    """For token rows, the row indices longest first (stable), so that consecutive batches pad to
    similar lengths: a batch is cut to its longest text, and random batches of short texts are about
    three times their real tokens (SST-2, SMS spam). None for anything else."""
    lens = token_lengths(x)
    return None if lens is None else lens.argsort(descending=True, stable=True)


def images_a_pass(x: torch.Tensor, batch_size: int, device=None) -> int:
    """`batch_size`, or at most CPU_IMAGES_A_PASS when `x` holds images (N, C, H, W) computed on a CPU."""
    dev = torch.device(device) if device is not None else x.device
    return min(batch_size, CPU_IMAGES_A_PASS) if dev.type == "cpu" and x.dim() == 4 else batch_size


def in_batches(n: int, batch_size: int, run: Callable[[int, int], T]) -> list[T]:
    """[run(i, j) for consecutive slices [i, j) of range(n), `batch_size` long]. A slice that runs out
    of memory (accelerate's `should_reduce_batch_size`: CUDA, MPS, XPU or the CPU allocator) is tried
    again at half its size, and the slices after it keep the smaller size; at size 1 the error stands."""
    out: list[T] = []
    i = 0
    while i < n:
        j = min(n, i + batch_size)
        try:
            out.append(run(i, j))
            i = j
            continue
        except RuntimeError as e:
            if j - i == 1 or not should_reduce_batch_size(e):
                raise
        clear_device_cache(garbage_collection=True)  # out of the `except`: what the failed slice held can go
        batch_size = max(1, (j - i) // 2)
    return out
