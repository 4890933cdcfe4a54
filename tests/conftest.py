"""Shared fixtures: a private feature cache per test session, tiny image folders, a tiny checkpoint."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tk-cache"))
    monkeypatch.setenv("CI", "1")  # no progress bars in test output


def make_folder(root: Path, n: int = 8, size: int = 20, seed: int = 0) -> Path:
    """Two colour classes, `n` noisy images each."""
    rng = np.random.default_rng(seed)
    for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from transferkit.backbones.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("ckpt") / "r20.safetensors"
    save_file(CifarResNet(20).state_dict(), str(p))
    return p


def tiny_args(ckpt: Path) -> list[str]:
    return ["--model", f"file:{ckpt}", "--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "4"]


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (development data) is not on this machine")


# Tiny models on a small shared machine: one thread per process avoids OpenMP oversubscription, which
# made tiny training steps up to 100x slower when other work ran beside the tests.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the CLI subprocesses some tests start
