"""`run:RUN_DIR`: the backbone of an earlier transferkit run (a model trained on a source task).

The architecture and weights come from the run's `model.json` and `model.safetensors`; the run's
head travels along as `source_run`, so `create_model` keeps it when the target has the same classes
(and the same head shape) and rebuilds it otherwise, and ranking can use it as the source classifier
(LEEP, NCE). The new run records the source architecture as its own, so it reloads without the
source run being present.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import UserError


def run_meta(path: str) -> dict:
    """model.json of a finished run, or a UserError saying what is missing."""
    from ..rundir import require_finished

    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"--model run:{path}: no such directory (give the run directory of an earlier `transferkit fit`)")
    require_finished(p, f"--model run:{path}")
    try:
        return json.loads((p / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p / 'model.json'} cannot be read ({e})") from None


def run_backbone(path: str, *, pretrained: bool = True):
    from ..fit import load_model
    from .base import Preprocess

    meta = run_meta(path)
    model, meta = load_model(path)
    bb = model.backbone
    head = model.head
    bb.spec = dict(meta["backbone"])  # the architecture, so the new run reloads on its own
    h = hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()[:16]
    bb.weights_id = f"run:{h}"
    if meta.get("modality", "image") == "image" and "preprocess" in meta:
        bb.preprocess = Preprocess.from_dict(meta["preprocess"])
    bb.source_run = {"path": str(path), "classes": list(meta["classes"]), "head": head, "head_meta": meta["head"]}
    lin = [m for m in head.modules() if m.__class__.__name__ == "Linear"]
    if len(lin) == 1 and len(meta["classes"]) >= 2:  # a linear head is the source task's classifier: LEEP and NCE can use it
        bb.set_source_head(lin[0].weight.detach(), lin[0].bias.detach())
    if not pretrained:  # the architecture only (reloading a run trained from this one)
        import torch

        with torch.no_grad():
            for p in bb.parameters():
                p.normal_(0, 0.02)
    return bb
