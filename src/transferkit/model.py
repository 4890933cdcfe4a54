"""Backbone + new head, and the parameter groups built from them once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import Backbone, create_backbone
from .config import ModelConfig


def create_head(kind: str, in_features: int, num_classes: int, *, hidden: int = 512, dropout: float = 0.0) -> nn.Module:
    """`linear`: (dropout) + Linear. `mlp`: Linear -> GELU -> dropout -> Linear."""
    if kind == "linear":
        if num_classes == 0:  # an adapted backbone's placeholder (adapt.py): no classes, no weights
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return nn.Sequential(nn.Linear(in_features, 0))
        layers = ([nn.Dropout(dropout)] if dropout > 0 else []) + [nn.Linear(in_features, num_classes)]
        return nn.Sequential(*layers)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    raise ValueError(f"unknown head {kind!r}")


class TransferModel(nn.Module):
    """A pretrained backbone (its top dropped) with a freshly initialised head."""

    head_note: str | None = None  # run: backbones: whether the source run's head was kept

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def create_model(cfg: ModelConfig, num_classes: int, *, pretrained: bool = True, classes: list[str] | None = None) -> TransferModel:
    """Backbone + a new head. From a `run:` backbone, the source run's head is kept when `classes` are
    the source's classes (same names, same order) and the head settings match; `model.head_note` says
    which happened."""
    backbone = create_backbone(cfg.name, arch=cfg.arch, pretrained=pretrained)
    if getattr(backbone, "modality", "image") == "text" and not cfg.name.startswith("run:"):
        backbone.pooling = cfg.pooling
        backbone.spec = {**backbone.spec, "pooling": cfg.pooling}
    head = create_head(cfg.head, backbone.num_features, num_classes, hidden=cfg.head_hidden, dropout=cfg.head_dropout)
    note = None
    src = getattr(backbone, "source_run", None)
    if src is not None:
        same_head = src["head_meta"] == {"kind": cfg.head, "hidden": cfg.head_hidden, "dropout": cfg.head_dropout}
        if classes is not None and list(classes) == src["classes"] and same_head and pretrained:
            head.load_state_dict(src["head"].state_dict())
            note = f"head kept from {src['path']} (same classes: {', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})"
        elif not src["classes"]:
            note = f"new head: {src['path']} is an adapted backbone without classes"
        elif classes is not None and list(classes) != src["classes"]:
            note = f"head rebuilt: the classes differ from {src['path']}'s ({', '.join(src['classes'][:6])}{', ...' if len(src['classes']) > 6 else ''})"
        else:
            note = f"head rebuilt: the head settings differ from {src['path']}'s ({src['head_meta']})"
        del backbone.source_run  # not a module attribute to carry further
    model = TransferModel(backbone, head)
    model.head_note = note
    return model


@dataclass
class Group:
    """A named block of parameters (stem, a block, ..., head) with its learning-rate scale."""

    name: str
    params: list[tuple[str, nn.Parameter]]
    lr_scale: float = 1.0
    no_decay: frozenset[str] = frozenset()  # names its model exempts from weight decay besides biases and norms (a ViT's pos_embed)


def model_groups(model: TransferModel) -> list[Group]:
    """The backbone's ordered block groups followed by the head: every parameter in exactly one group."""
    named = dict(model.named_parameters())
    groups, seen = [], set()
    # LoRA adapters (strategy lora) form their own group, trained while the blocks they sit in stay frozen.
    lora = [(n, p) for n, p in named.items() if n.startswith("backbone.") and ".lora_" in n]
    seen.update(n for n, _ in lora)
    for gname, pnames in model.backbone.block_groups():
        # a layer LoRA wraps keeps its weight one level down (conv1.weight is conv1.base_layer.weight)
        full = [f"backbone.{n}" if f"backbone.{n}" in named else _base_layer(f"backbone.{n}") for n in pnames]
        params = [(n, named[n]) for n in full if n in named and n not in seen]
        seen.update(n for n, _ in params)
        groups.append(Group(gname, params))
    leftover = [(n, p) for n, p in model.backbone.named_parameters(prefix="backbone") if n not in seen]
    if leftover:  # parameters a backbone's grouping forgot still train with the top block (not with LoRA's adapters)
        groups[-1].params.extend(leftover)
    if lora:
        groups.append(Group("lora", lora))
    groups.append(Group("head", list(model.head.named_parameters(prefix="head"))))
    skip = no_weight_decay_names(model)
    if skip:
        groups = [dataclasses.replace(g, no_decay=frozenset(n for n, _ in g.params if n in skip)) for g in groups]
    return groups


def _base_layer(name: str) -> str:
    """`a.conv1.weight` as PEFT's LoRA wrapper holds it: `a.conv1.base_layer.weight`."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.base_layer.{leaf}"


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters a module exempts from weight decay through timm's `no_weight_decay()` (a ViT's
    pos_embed and cls_token), as full names: the second half of timm's rule, beside "fewer than 2
    dimensions" (timm.optim.param_groups_weight_decay)."""
    out = set()
    for prefix, m in model.named_modules():
        fn = getattr(m, "no_weight_decay", None)
        if callable(fn) and isinstance(m, nn.Module):
            try:
                names = fn()
            except TypeError:  # pragma: no cover - a method of another meaning
                continue
            out |= {f"{prefix}.{n}" if prefix else n for n in names}
    return out


BN_STATS = ("frozen", "trainable", "all")


def set_trainable(model: TransferModel, groups: list[Group], unfrozen: set[str], *, bn_stats: str = "trainable", always_frozen: set[str] = frozenset()) -> None:
    """requires_grad on for `unfrozen` groups (except parameters in `always_frozen`), off for the rest.
    Then BatchNorm running statistics, by `bn_stats`:
      frozen     every BatchNorm layer in eval mode: statistics never move (its affine weights still
                 train where unfrozen); the Keras fine-tuning guide's advice for small data;
      trainable  layers whose parameters train update their statistics, frozen ones do not;
      all        every BatchNorm layer updates its statistics, frozen or not.
    Call after `model.train()`."""
    for g in groups:
        for n, p in g.params:
            p.requires_grad_(g.name in unfrozen and n not in always_frozen)
    if bn_stats == "all":
        return
    for m in model.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if bn_stats == "frozen" or not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def enable_grad_checkpointing(model: TransferModel, name: str) -> None:
    """`--grad-checkpointing`: on for the backbone, or a UserError when it cannot."""
    from .errors import UserError

    if not model.backbone.set_grad_checkpointing(True):
        raise UserError(f"--grad-checkpointing: --model {name} ({type(model.backbone).__name__}) cannot recompute its activations "
                        "(timm and Hugging Face models can); --accumulate lowers the memory of any model")
