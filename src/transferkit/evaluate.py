"""Evaluating a trained model on labelled data, outside of `fit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import RunConfig
from .data import ImageSet, decode_images, load_image_data, _read_csv, _read_folder
from .errors import UserError
from .metrics import classification_metrics


def eval_set(spec: str, classes: list[str], config: RunConfig | None = None) -> tuple[ImageSet, str]:
    """The labelled images to evaluate on: a data root's test/ split, else its val/ split, else every
    image of a class folder or CSV; `digits` gives the validation split the run was trained with."""
    cfg = config or RunConfig()
    if spec == "digits":
        s = load_image_data("digits", val_fraction=cfg.data.val_fraction, seed=cfg.train.seed)
        return s.val, "digits (validation split)"
    p = Path(spec)
    if not p.exists():
        raise UserError(f"data not found: {spec}")
    if p.is_file():
        s, where = _read_csv(p), str(p)
    else:
        sub = next((p / n for n in ("test", "val") if (p / n).is_dir()), p)
        s, where = _read_folder(sub), str(sub)
    unknown = sorted(set(s.classes) - set(classes))
    if unknown:
        raise UserError(f"{where} has classes the model does not know: {', '.join(unknown)} (model classes: {', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[s.classes[y]] for y in s.labels], dtype=int)
    return ImageSet(s.sources, labels, list(classes)), where


def evaluate_model(model, classes, preprocess, spec: str, config: RunConfig | None = None) -> dict:
    from .fit import proba_of_images

    s, where = eval_set(spec, classes, config)
    u8, s, _ = decode_images(s, preprocess.resize_size, preprocess.interpolation)
    proba = proba_of_images(model, preprocess, u8)
    m = classification_metrics(s.labels, proba, classes)
    m["data"] = where
    return m
