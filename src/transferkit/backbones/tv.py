"""torchvision's classification models by name: `tv:resnet18`, `tv:resnet50.IMAGENET1K_V2`,
`tv:vit_b_16.IMAGENET1K_SWAG_E2E_V1` (NAME, then optionally the weights' name; default: torchvision's
DEFAULT weights of that model), as the PyTorch tutorials build them.

The top comes off the way the tutorials do it by hand: the model's last linear layer (`fc`,
`classifier[-1]`, `heads.head`, ...) becomes an identity, so `forward` returns what fed it, and that
layer is kept as the source (ImageNet) classifier for the transferability scores. Preprocessing is the
weights' own (`weights.transforms()`: input size, resize, mean, std, interpolation).

Weights come through torch's hub cache (`torch.hub.get_dir()/checkpoints`, where torchvision itself
keeps them, so a file it downloaded before is used offline) or are downloaded there with the hash
check torchvision uses. They are read with `torch.load(weights_only=True)`, not through
`load_state_dict_from_url`, which unpickles without that restriction.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import UserError, did_you_mean
from .base import Backbone, Preprocess

_AUX = {"inception_v3", "googlenet"}  # auxiliary classifiers: off (their outputs are a tuple in training)


def parse(name: str) -> tuple[str, str | None]:
    """`resnet50.IMAGENET1K_V2` -> ("resnet50", "IMAGENET1K_V2"); `resnet50` -> ("resnet50", None)."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def check_name(arch: str) -> None:
    import torchvision.models
    from torchvision.models import list_models

    names = list_models(module=torchvision.models)
    if arch not in names:
        raise UserError(f"unknown torchvision model {arch!r}{did_you_mean(arch, names)}; `python -c \"import torchvision; "
                        "print(torchvision.models.list_models(module=torchvision.models))\"` lists them")


def weights_of(arch: str, tag: str | None):
    """The torchvision weights enum member for `arch` (its DEFAULT when `tag` is None), or None when
    torchvision has no weights for it."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError):
        enum = None
    if enum is None:
        if tag:
            raise UserError(f"torchvision has no pretrained weights for {arch}")
        return None
    if tag is None or tag == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise UserError(f"tv:{arch}.{tag}: torchvision's weights for {arch} are {', '.join(w.name for w in enum)}") from None


def preprocess_of(weights) -> Preprocess:
    if weights is None:
        return Preprocess(input_size=224, crop_pct=0.875, interpolation="bilinear")
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocess(input_size=crop, mean=tuple(t.mean), std=tuple(t.std), crop_pct=crop / resize, interpolation=str(t.interpolation.value))


def build(arch: str, *, tag: str | None = None, pretrained: bool = True) -> TorchvisionBackbone:
    """`tv:ARCH[.TAG]`: the architecture, with its pretrained weights when `pretrained`."""
    from torchvision.models import get_model

    check_name(arch)
    weights = weights_of(arch, tag)
    kwargs = {"aux_logits": False, "init_weights": not pretrained} if arch in _AUX else {}
    model = get_model(arch, weights=None, **kwargs)  # weights are loaded below, weights_only
    weights_id = "random"
    if pretrained:
        if weights is None:
            raise UserError(f"torchvision has no pretrained weights for {arch}; use random:tv:{arch} to train it from scratch")
        from ._weights import file_sha256, fit_state_dict, load_state_dict_file
        from . import hub_weights_file

        path = hub_weights_file(weights.url, f"the {weights} weights of torchvision", f"tv:{arch}")
        sd = load_state_dict_file(path)
        if arch.startswith("densenet"):
            sd = _densenet_keys(sd)
        # strict, as every checkpoint load here (num_batches_tracked may be absent from old files);
        # the auxiliary heads' tensors, built off, are dropped
        fit_state_dict(model, sd, source=str(path), drop_prefixes=("AuxLogits.", "aux1.", "aux2.") if arch in _AUX else ())
        weights_id = f"tv:{arch}.{weights.name}:sha256:{file_sha256(path)[:16]}"
    spec = {"name": f"tv:{arch}" + (f".{tag}" if tag else "")}
    return TorchvisionBackbone(model, arch=arch, preprocess=preprocess_of(weights), weights_id=weights_id, spec=spec)


def _densenet_keys(sd: dict) -> dict:
    """torchvision's DenseNet checkpoints predate its module names (`norm.1` for `norm1`); the same
    renaming torchvision applies when it loads them."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for k, v in sd.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


class TorchvisionBackbone(Backbone):
    """A torchvision classifier whose last linear layer is an identity: `forward` returns its features."""

    def __init__(self, model: nn.Module, *, arch: str, preprocess: Preprocess, weights_id: str, spec: dict):
        super().__init__()
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError(f"torchvision's {arch} ends in a convolution, not a linear classifier; transferkit needs one to replace (use another model)")
        path, last = linears[-1]
        parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
        setattr(parent, path.rpartition(".")[2], nn.Identity())
        self.model = model
        self.classifier_path = path  # where the source classifier was (a checkpoint's `fc.*` keys)
        self.num_features = int(last.in_features)
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.spec = spec
        if weights_id != "random":
            self.set_source_head(last.weight.detach(), last.bias.detach())

    def forward(self, x):
        return self.model(x).flatten(1)

    def block_groups(self) -> list[tuple[str, list[str]]]:
        return [(name, [f"model.{p}" for p in params]) for name, params in module_groups(self.model)]


def module_groups(model: nn.Module, min_groups: int = 4) -> list[tuple[str, list[str]]]:
    """The model's parameters as ordered groups from the input to the output: its top-level children
    that hold parameters, the largest one split into its own children until there are `min_groups`
    (a torchvision model's stages live in one `features` Sequential, a ResNet's in `layer1..4`, a ViT's
    in `encoder.layers`). Parameters a split module holds directly (a ViT's class token and position
    embedding) join the first of its parts, the input side."""

    def parts(path: str, m: nn.Module) -> list[tuple[str, list[str]]]:
        prefix = f"{path}." if path else ""
        out = [(f"{prefix}{n}", [f"{prefix}{n}.{p}" for p, _ in c.named_parameters()]) for n, c in m.named_children()]
        out = [(n, ps) for n, ps in out if ps]
        direct = [f"{prefix}{p}" for p, _ in m.named_parameters(recurse=False)]
        if out and direct:
            out[0] = (out[0][0], direct + out[0][1])
        elif direct:
            out = [(path or "model", direct)]
        return out

    groups = parts("", model)
    while len(groups) < min_groups:
        counts = {n: sum(model.get_parameter(p).numel() for p in ps) for n, ps in groups}
        split = None
        for n, ps in sorted(groups, key=lambda g: -counts[g[0]]):
            sub = parts(n, model.get_submodule(n)) if n != "model" else []
            if len(sub) > 1:
                inside = {p for _, sps in sub for p in sps}
                sub[0] = (sub[0][0], [p for p in ps if p not in inside] + sub[0][1])  # what joined this group earlier
                split = (n, sub)
                break
        if split is None:
            break
        i = [n for n, _ in groups].index(split[0])
        groups = groups[:i] + split[1] + groups[i + 1 :]
    return groups
