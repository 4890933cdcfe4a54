"""Running out of device memory need not end a run: work done in batches is done again in smaller
ones. (Training steps keep their batch and split it instead: `trainer.gradients_in_memory`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

T = TypeVar("T")


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
