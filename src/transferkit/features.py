"""Backbone features computed once per image and cached on disk.

One feature store per backbone and preprocessing: its key covers the weights (`weights_id`), the
architecture (`spec`), the input size, mean and std. Inside a store, each row belongs to one image,
identified by the sha256 of its decoded pixels, so any subset of images seen before (a
cross-validation fold, a ranking after a fit) is served without running the backbone, and any change
to an image or its resizing misses. Labels play no part: features do not depend on them. Stores are
safetensors files, written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np
import torch

from .backbones import Backbone
from .cache import cache_dir, enforce_limit, mark_used

FORMAT_VERSION = 2


def feature_key(backbone: Backbone, input_size: int, precision: str = "no") -> str:
    ident = {**backbone.feature_ident(input_size), "version": FORMAT_VERSION}
    if precision not in (None, "no"):  # bf16 / fp16 features are a store of their own (fp32 keys unchanged)
        ident["precision"] = precision
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def image_digests(images: torch.Tensor) -> np.ndarray:
    """(N, 16) uint8: the first 16 bytes of each input's sha256: an image's pixels (shape included),
    or a text's token ids without their padding (so a text hashes alike in any batch)."""
    out = np.empty((len(images), 16), dtype=np.uint8)
    arr = images.cpu().numpy()
    if images.dtype == torch.int64:
        for i in range(len(arr)):
            row = arr[i][arr[i] >= 0]
            out[i] = np.frombuffer(hashlib.sha256(b"tokens" + row.tobytes()).digest()[:16], dtype=np.uint8)
        return out
    shape = str(tuple(images.shape[1:])).encode()
    for i in range(len(arr)):
        out[i] = np.frombuffer(hashlib.sha256(shape + arr[i].tobytes()).digest()[:16], dtype=np.uint8)
    return out


@torch.no_grad()
def compute_features(backbone: Backbone, images: torch.Tensor, input_size: int, *, rows=None, batch_size: int = 32, device="cpu", autocast=None,
                     progress=None) -> torch.Tensor:
    """Pooled features of centre-cropped images (of `rows` of them, if given), in eval mode, as float32
    on the CPU. Rows are gathered one batch at a time: `images` may be a memory-mapped cache far larger
    than memory, and a whole-set gather would copy it into the heap."""
    from .memory import images_a_pass, in_batches, longest_first

    rows = list(range(len(images))) if rows is None else list(rows)
    order = longest_first(images[torch.as_tensor(rows, dtype=torch.long)]) if images.dim() == 2 and rows else None
    if order is not None:  # texts: batches of similar lengths pad less; the rows come back in their order
        rows = [rows[i] for i in order.tolist()]

    def one(i: int, j: int) -> torch.Tensor:
        part = rows[i:j]
        batch = images[part[0] : part[-1] + 1] if part == list(range(part[0], part[-1] + 1)) else images[torch.as_tensor(part)]
        x = backbone.prepare(batch.to(device, non_blocking=True), input_size)
        with autocast() if autocast is not None else contextlib.nullcontext():
            f = backbone(x)
        if progress is not None:
            progress(len(x))
        return f.float().cpu()

    was_training = backbone.training
    backbone.eval()
    out = in_batches(len(rows), images_a_pass(images, batch_size, device), one)  # halved when out of memory
    backbone.train(was_training)
    if not out:
        return torch.zeros(0, backbone.num_features)
    f = torch.cat(out)
    return f if order is None else f[order.argsort()]


def cached_features(backbone: Backbone, images: torch.Tensor, input_size: int, *, precision: str = "no", **kw) -> tuple[torch.Tensor, bool]:
    """(features, hit): rows for images seen before come from the store; the rest are computed and
    added. `hit` is True when the backbone did not run at all. `precision` names the autocast that
    `kw["autocast"]` applies ("no": fp32), so features of one precision never stand in for another's."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / "features" / f"{feature_key(backbone, input_size, precision)}.safetensors"
    digests = image_digests(images)
    stored_f = torch.zeros(0, backbone.num_features)
    stored_d = np.zeros((0, 16), dtype=np.uint8)
    if path.is_file():
        try:
            st = load_file(str(path))
            stored_f, stored_d = st["features"], st["digests"].numpy()
        except Exception:  # a damaged store is rebuilt, never trusted
            pass
    index = {bytes(d): i for i, d in enumerate(stored_d)}
    rows = [index.get(bytes(d), -1) for d in digests]
    missing = [i for i, r in enumerate(rows) if r < 0]
    if not missing:
        mark_used(path)
        return stored_f[torch.as_tensor(rows, dtype=torch.long)].clone(), True
    new = compute_features(backbone, images, input_size, rows=missing, **kw)
    feats = torch.empty(len(images), new.shape[1])
    have = [i for i, r in enumerate(rows) if r >= 0]
    if have:
        feats[have] = stored_f[torch.as_tensor([rows[i] for i in have], dtype=torch.long)]
    feats[missing] = new
    # Add the new rows to the store (one copy per image, even if it appears twice in this batch).
    fresh = {}
    for j, i in enumerate(missing):
        fresh.setdefault(bytes(digests[i]), j)
    add = list(fresh.values())
    all_f = torch.cat([stored_f, new[add]])
    all_d = np.concatenate([stored_d, digests[[missing[j] for j in add]]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    ident = {"model": backbone.spec.get("name", ""), "input_size": input_size, "precision": precision,  # for `transferkit cache` to say
             "texts": images.dtype == torch.int64}
    save_file({"features": all_f.contiguous(), "digests": torch.from_numpy(np.ascontiguousarray(all_d))}, str(tmp), metadata={"ident": json.dumps(ident)})
    os.replace(tmp, path)
    enforce_limit(keep=(path,))
    return feats, False
