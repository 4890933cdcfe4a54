"""The validation examples a run got wrong, the most confidently wrong first (fastai's `top_losses`),
and why: for images where the model looked when it chose the wrong class (Grad-CAM), for texts which
words pushed it there (word occlusion).

Grad-CAM (Selvaraju et al. 2017) is written here rather than taken from `grad-cam` (pytorch-grad-cam):
that package pulls in OpenCV and ttach, and asks for the target layer by name per architecture. The
method itself is a weighted sum of one feature map, about twenty lines; the layer is found the same
way for every backbone (`_feature_maps`): a CNN's last spatial map, a vision transformer's grid of
patch tokens (the reshaping pytorch-grad-cam asks its users to write per model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REPORT_IMAGES = 16  # images drawn in mistakes.jpg
EXPLAINED_TEXTS = 10  # texts whose words are weighed in metrics.json and report.html
MAX_WORDS = 128  # words weighed per text (each costs one forward pass)


@dataclass
class Mistakes:
    rows: list[dict]  # every wrong example, most confidently wrong first
    thumbs: np.ndarray | None = None  # images: (n, R, R, 3) uint8, what the model saw (centre crop), first REPORT_IMAGES rows
    cams: np.ndarray | None = None  # (n, R, R) in [0, 1], Grad-CAM toward the predicted class; None where not available
    cam_note: str = ""


def top_mistakes(labels, proba: np.ndarray, classes: list[str], sources: list | None = None, rows: list | None = None, name=None) -> list[dict]:
    """Every example whose most probable class is not its label, the most confidently wrong first:
    by the probability of the class said, ties by loss (-log p(true class)), then by position. (By
    loss alone, with more than two classes a mistake said at 0.62 was listed, and printed, as "the
    most confident" above one said at 0.99.) `sources` are file paths or texts; in-memory images are
    named by position. `name(source or row)`: what a wrong example is called instead (fit(X, y)'s and
    evaluate(X, y)'s temporary files as X[i])."""
    name = name or (lambda v: v)
    y = np.asarray(labels)
    pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y)
    loss = -np.log(np.clip(proba[wrong, y[wrong]], 1e-12, None))
    said = proba[wrong, pred[wrong]]
    out = []
    for i in wrong[np.lexsort((-loss, -said))]:  # lexsort: the last key first; stable, so ties keep their position
        src = sources[i] if sources is not None else None
        row = {
            "index": int(i),
            "source": name(src) if isinstance(src, str) else f"#{i}",
            "true": classes[y[i]],
            "predicted": classes[pred[i]],
            "p_predicted": round(float(proba[i, pred[i]]), 4),
            "p_true": round(float(proba[i, y[i]]), 4),
        }
        if rows:
            row["row"] = name(rows[i])
        out.append(row)
    return out


def to_csv(rows: list[dict]) -> str:
    """mistakes.csv: one row per wrong example, in `top_mistakes` order."""
    import csv
    import io

    buf = io.StringIO()
    cols = ["index", "source", "true", "predicted", "p_predicted", "p_true"] + (["row"] if rows and "row" in rows[0] else [])
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")  # word evidence: in metrics.json and the report
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def summary(rows: list[dict], n: int = 10) -> dict:
    """What metrics.json keeps: the count and the `n` most confident, long texts cut to 300 characters."""
    clip = lambda s: s if len(s) <= 300 else s[:297] + "..."  # noqa: E731
    return {"count": len(rows), "most_confident": [{**r, "source": clip(r["source"])} for r in rows[:n]]}


TOKEN_CANDIDATES = 12  # token outputs, from the last, tried for a transformer's map (its last block's are among them)


def _to_nchw(out: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return out.permute(0, 3, 1, 2) if nhwc else out


def _token_grid(length: int, prefix: int | None) -> tuple[int, int] | None:
    """(prefix tokens, side) when `length` tokens are `prefix` class / distillation / register tokens
    followed by a square grid of patch tokens. `prefix` None (a model that does not say, as timm's
    `num_prefix_tokens` does): none, or one class token (torchvision's ViT)."""
    for p in [prefix] if prefix is not None else (0, 1):
        side = math.isqrt(max(length - p, 0))
        if side >= 2 and side * side == length - p:
            return p, side
    return None


def _feature_maps(outputs: list[torch.Tensor], nhwc: bool, prefix: int | None) -> list[tuple[torch.Tensor, Callable]]:
    """Where a backbone's spatial evidence can be read, from the outputs of its modules in the order
    they finished: (tensor, view as (B, C, H, W)) pairs, the preferred first.

    A CNN: its last 4-D map with H, W >= 2 (channels-last where timm says so, Swin). A transformer,
    whose last output before pooling is tokens (B, L, D): the grid of patch tokens of its last token
    outputs of that shape. With class-token pooling the final ones carry no gradient at the patches
    (only the class token is read after the last attention), so several are offered, and `gradcam`
    takes the last one that has such a gradient: the last block's input norm, as pytorch-grad-cam's
    ViT recipe chooses by hand (`blocks[-1].norm1`)."""
    for i in range(len(outputs) - 1, -1, -1):
        out = outputs[i]
        if out.dim() == 4:
            view = _to_nchw(out, nhwc)
            if view.shape[2] >= 2 and view.shape[3] >= 2:
                return [(out, lambda t: _to_nchw(t, nhwc))]
        elif out.dim() == 3:
            grid = _token_grid(out.shape[1], prefix)
            if grid is None:
                return []
            p, side = grid

            def view(t, p=p, side=side):
                return t[:, p:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

            same, seen = [], set()
            for o in reversed(outputs[: i + 1]):
                if o.shape == out.shape and id(o) not in seen:
                    seen.add(id(o))
                    same.append((o, view))
                    if len(same) == TOKEN_CANDIDATES:
                        break
            return same
    return []


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input's resolution, toward class `target[b]` for each
    prepared input `x[b]`, on `model.backbone`'s last spatial feature map, or for a transformer (ViT,
    DeiT, LeViT) on its grid of patch tokens (see `_feature_maps`); None when there is neither."""
    backbone = model.backbone
    inner = getattr(backbone, "model", None)
    nhwc = getattr(inner, "output_fmt", "NCHW") == "NHWC"
    prefix = getattr(inner, "num_prefix_tokens", None)
    outputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: outputs.append(out) if isinstance(out, torch.Tensor) else None)
        for name, m in backbone.named_modules()
        if name
    ]
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            maps = _feature_maps(outputs, nhwc, prefix)
            if not maps:
                return None
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            grads = torch.autograd.grad(score, [t for t, _ in maps], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for (t, view), g in zip(maps, grads):
        if g is not None and bool(view(g).abs().amax() > 0):
            a, grad = view(t.detach()), view(g)
            break
    else:
        return None
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().float()
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()


def explain(model, x_u8: torch.Tensor, target, input_size: int, transform, device, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(crops, maps, note) for encoded images `x_u8`: each image as the model sees it (the centre
    crop, (n, R, R, 3) uint8) and its Grad-CAM map toward class `target[i]`, ((n, R, R) in [0, 1]);
    the maps are None, and `note` says why, when the backbone has no spatial feature map. Out of
    memory, the batch is halved and tried again (as a training step)."""
    from .memory import in_batches
    from .transforms import center_crop

    crops = center_crop(x_u8, input_size)
    seen = crops.permute(0, 2, 3, 1).contiguous().numpy()
    target = torch.as_tensor(target)

    def one(i: int, j: int) -> torch.Tensor:
        cam = gradcam(model, transform(crops[i:j].to(device)), target[i:j])
        if cam is None:
            raise _NoMap
        return cam

    try:
        maps = in_batches(len(crops), batch_size, one)  # halved when out of memory
    except _NoMap:
        return seen, None, "Grad-CAM not available for this backbone (no spatial feature map or grid of patch tokens before pooling)"
    except RuntimeError as e:  # an in-place operation on the feature map, a backbone that will not give gradients, memory at 1 image
        return seen, None, f"Grad-CAM not available for this backbone ({str(e).splitlines()[0][:120]})"
    return seen, torch.cat(maps).numpy() if maps else None, ""


class _NoMap(Exception):
    """gradcam found no map for a batch (so for none of them)."""


def image_mistakes(model, x_u8: torch.Tensor, rows: list[dict], classes: list[str], input_size: int, transform, device,
                   batch_size: int = 32) -> Mistakes:
    """The first REPORT_IMAGES mistakes as the model saw them, with their Grad-CAM maps."""
    top = rows[:REPORT_IMAGES]
    if not top:
        return Mistakes(rows)
    idx = torch.as_tensor([r["index"] for r in top])
    thumbs, cams, note = explain(model, x_u8[idx], [classes.index(r["predicted"]) for r in top], input_size, transform, device, batch_size)
    return Mistakes(rows, thumbs, cams, note)


def word_evidence(proba_fn, texts: list[str], targets) -> list[list[tuple[str, float]]]:
    """Word occlusion: for each text, its whitespace words with p(target | text) - p(target | the text
    without that word). Positive: the word pushed toward `target`; negative: away from it. Model-agnostic
    (`proba_fn(list of texts) -> (n, classes)` probabilities) and exact about what it measures, where
    gradient saliency on a transformer's embeddings is noisy and hard to read. The first MAX_WORDS
    words of a text are weighed; one forward pass per word."""
    variants, spans = [], []
    for t in texts:
        words = t.split()[:MAX_WORDS]
        rest = t.split()[MAX_WORDS:]
        start = len(variants)
        variants.append(" ".join(words + rest))
        variants += [" ".join(words[:i] + words[i + 1 :] + rest) for i in range(len(words))]
        spans.append((start, words))
    p = np.asarray(proba_fn(variants))
    out = []
    for (start, words), target in zip(spans, targets):
        full = p[start, target]
        out.append([(w, round(float(full - p[start + 1 + i, target]), 4)) for i, w in enumerate(words)])
    return out


def add_text_evidence(rows: list[dict], texts: list[str], classes: list[str], proba_fn, n: int = EXPLAINED_TEXTS) -> None:
    """Weigh the words of the first `n` mistakes toward the class each was given (`row["evidence"]`)."""
    top = rows[:n]
    if not top:
        return
    ev = word_evidence(proba_fn, [texts[r["index"]] for r in top], [classes.index(r["predicted"]) for r in top])
    for r, e in zip(top, ev):
        r["evidence"] = e
