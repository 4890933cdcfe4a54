"""Backbone features computed once and cached on disk.

The cache key covers everything the features depend on: the backbone's weights (`weights_id`) and
architecture (`spec`), the preprocessing (input size, mean, std) and the decoded pixels themselves
(their sha256, which changes whenever the data or its resizing does). Labels are not part of it:
features do not depend on them. Files are safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .backbones import Backbone
from .transforms import center_crop, normalize


def cache_dir() -> Path:
    return Path(os.environ.get("TRANSFERKIT_CACHE_DIR") or Path.home() / ".cache" / "transferkit")


def feature_key(backbone: Backbone, input_size: int, pixels_sha256: str) -> str:
    ident = {
        "weights": backbone.weights_id,
        "spec": backbone.spec,
        "input_size": input_size,
        "mean": list(backbone.preprocess.mean),
        "std": list(backbone.preprocess.std),
        "pixels": pixels_sha256,
        "version": 1,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def compute_features(backbone: Backbone, images: torch.Tensor, input_size: int, *, batch_size: int = 32, device="cpu", autocast=None, progress=None) -> torch.Tensor:
    """Pooled features of centre-cropped images, in eval mode, as float32 on the CPU."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(center_crop(images[i : i + batch_size].to(device, non_blocking=True), input_size), backbone.preprocess.mean, backbone.preprocess.std)
        if autocast is not None:
            with autocast():
                f = backbone(x)
        else:
            f = backbone(x)
        out.append(f.float().cpu())
        if progress is not None:
            progress(len(x))
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, backbone.num_features)


def cached_features(backbone: Backbone, images: torch.Tensor, input_size: int, pixels_sha256: str, **kw) -> tuple[torch.Tensor, bool]:
    """(features, hit): from the cache when present, else computed and stored."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / "features" / f"{feature_key(backbone, input_size, pixels_sha256)}.safetensors"
    if path.is_file():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape[0] == images.shape[0]:
                return feats, True
        except Exception:  # a damaged cache entry is recomputed, never trusted
            pass
    feats = compute_features(backbone, images, input_size, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": feats.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return feats, False
