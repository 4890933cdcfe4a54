"""The backbone protocol every model in the registry answers.

A backbone maps a normalised image batch (B, 3, H, W) to pooled features (B, num_features). It carries
what the rest of transferkit needs to know about it:

- `preprocess`: its own input size and normalisation, used unless the user overrides them;
- `weights_id`: a stable identity of its weights, part of the feature-cache key;
- `spec`: what `create_backbone(**spec, pretrained=False)` needs to rebuild the architecture when a
  saved run is loaded (the weights then come from the run's `model.safetensors`);
- `block_groups()`: its parameters as ordered groups from the input to the output (stem, blocks, ...),
  which strategies use to freeze, unfreeze and scale learning rates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for a backbone: resize the shorter side to `resize_size`, centre-crop
    `input_size` (for evaluation; training uses a random resized crop), then normalise."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
        )


class Backbone(nn.Module):
    """Base class: subclasses set `num_features`, `preprocess`, `weights_id`, `spec` and implement
    `forward` (pooled features) and `block_groups`."""

    num_features: int
    preprocess: Preprocess
    weights_id: str
    spec: dict
    modality: str = "image"

    def block_groups(self) -> list[tuple[str, list[str]]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Keep only each block's input during training and recompute the rest in the backward pass
        (gradient checkpointing: less memory, more compute). False when this backbone cannot."""
        return False

    def prepare(self, x: torch.Tensor, input_size: int) -> torch.Tensor:
        """Encoded inputs -> what `forward` takes, for evaluation and features (uint8 images: centre
        crop and normalise)."""
        from ..transforms import center_crop, normalize

        return normalize(center_crop(x, input_size), self.preprocess.mean, self.preprocess.std)

    def feature_ident(self, input_size: int) -> dict:
        """What the cached features of this backbone depend on besides each input itself."""
        p = self.preprocess
        return {"weights": self.weights_id, "spec": self.spec, "input_size": input_size, "mean": list(p.mean), "std": list(p.std)}

    # The classifier of the source task (ImageNet, CIFAR-10), when the weights came with one. It is kept
    # outside the module tree (not a parameter, not saved, never trained): transferability scores
    # such as LEEP and NCE need the source task's probabilities, fine-tuning does not.
    _source_head: tuple = ()

    @property
    def source_head(self) -> nn.Module | None:
        return self._source_head[0] if self._source_head else None

    def set_source_head(self, weight, bias) -> None:
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        head.requires_grad_(False)
        self._source_head = (head.eval(),)


class TimmBackbone(Backbone):
    """Any timm model, its classifier removed (`num_classes=0`), so `forward` returns pooled features."""

    def __init__(self, model: nn.Module, *, preprocess: Preprocess, weights_id: str, spec: dict):
        super().__init__()
        self.model = model
        # what forward returns: for models with a projection after the pooling (MobileNetV3 / V4,
        # GhostNet: `conv_head`) that is timm's `head_hidden_size`, not `num_features` (the pooled map)
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.spec = spec

    def forward(self, x):
        return self.model(x)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """timm's own (its blocks run under torch.utils.checkpoint, non-reentrant)."""
        try:
            self.model.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError, AttributeError):  # timm: "gradient checkpointing not supported"
            return False
        return True

    def block_groups(self) -> list[tuple[str, list[str]]]:
        """timm's own coarse `group_matcher` (stem, each block stage, head) when the model has one;
        otherwise one group per top-level child module."""
        names = [n for n, _ in self.model.named_parameters()]
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is not None:
            from timm.models import group_parameters

            grouped = group_parameters(self.model, matcher(coarse=True))
            out, used = [], {"head", "lora"}  # the names of the groups model_groups adds
            for gid, params in grouped.items():
                label = group_label(params, names)
                if label in used:  # timm's own `head.norm` (ConvNeXt): a name of its second level, then a number
                    label = "+".join(dict.fromkeys(".".join(n.split(".")[:2]) for n in params))
                label = label if label not in used else f"group{gid}"
                used.add(label)
                out.append((label, [f"model.{n}" for n in params]))
            return out
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(n.split(".")[0], []).append(f"model.{n}")
        return list(groups.items())


def group_label(params: list[str], every: list[str]) -> str:
    """A block group's name from what it holds (timm numbers its groups 0, 1, ..., which said nothing):
    its top-level modules, a numbered child by its number (`blocks.6`) unless the group holds all of
    its container (`layer1`), runs of numbers as a range (`blocks.0-2`): `conv_stem+bn1`,
    `blocks.6+conv_head+bn2`."""
    def key(n: str) -> tuple[str, int | None]:
        a = n.split(".")
        return (a[0], int(a[1])) if len(a) > 2 and a[1].isdigit() else (a[0], None)

    mine: dict[str, set] = {}
    for n in params:
        top, i = key(n)
        mine.setdefault(top, set()).add(i)
    whole: dict[str, set] = {}
    for n in every:
        top, i = key(n)
        whole.setdefault(top, set()).add(i)
    parts = []
    for top, idx in mine.items():
        if None in idx or idx == whole.get(top):
            parts.append(top)
            continue
        runs, seq = [], sorted(idx)
        start = prev = seq[0]
        for i in [*seq[1:], None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            if i is not None:
                start = prev = i
        parts.append(f"{top}.{','.join(runs)}")
    return "+".join(parts)


def preprocess_from_timm(model: nn.Module) -> Preprocess:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return Preprocess(
        input_size=int(size),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def strip_prefix(state_dict: dict, prefixes=("module.", "_orig_mod.")) -> dict:
    """Drop DataParallel / DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


