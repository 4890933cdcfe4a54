"""LoRA (Hu et al. 2021) through PEFT: low-rank adapters injected into the named modules of a
backbone, which itself stays frozen; after training they are merged back into the weights, so a saved
run is a plain backbone that loads without PEFT.

PEFT is asked to adapt exactly the modules named; a name that matches no module is an error here
(PEFT itself may accept it silently, peft#1959), and the message lists the names that would match.
"""

from __future__ import annotations

from torch import nn

from .errors import UserError

ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Embedding)
# Attention projections to adapt when --lora-targets is not given (the LoRA paper's choice: query and
# value), tried in order; the first whose names all exist is taken. PEFT's own table, keyed by the
# transformers model_type, is asked first; these cover the families it leaves out (DistilBERT,
# MPNet, ModernBERT's fused Wqkv) and timm's vision transformers (a fused qkv).
FALLBACK_TARGETS = (
    ["query", "value"],  # BERT, RoBERTa, ELECTRA, ALBERT
    ["query_proj", "value_proj"],  # DeBERTa-v2/v3
    ["q_proj", "v_proj"],  # Llama, Qwen, Mistral, BART
    ["q_lin", "v_lin"],  # DistilBERT
    ["q", "v"],  # T5, MPNet
    ["Wqkv"],  # ModernBERT
    ["c_attn"],  # GPT-2
    ["qkv"],  # timm ViT, DeiT, BEiT, Swin
)


def _adaptable() -> tuple[type, ...]:
    try:  # GPT-2's projections are transformers' Conv1D (a transposed Linear), which PEFT adapts too
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return ADAPTABLE
    return (*ADAPTABLE, Conv1D)


def _can_adapt(m: nn.Module, kinds: tuple[type, ...]) -> bool:
    """A layer LoRA can adapt and merge back: not a grouped (depthwise) convolution, whose rank PEFT
    needs to be a multiple of its groups and whose adapter it cannot merge."""
    return isinstance(m, kinds) and getattr(m, "groups", 1) == 1


def short_name(name: str) -> str:
    """The name --lora-targets takes for a module: its last name part (query), or its whole path where
    that part is only a position in a Sequential (conv1.0, not 0)."""
    last = name.rsplit(".", 1)[-1]
    return name if last.isdigit() else last


def _matches(name: str, target: str) -> bool:
    """Whether a --lora-targets entry names a module, as PEFT matches target_modules: the whole name, or its last parts."""
    return name == target or name.endswith("." + target)


def _short_names(module: nn.Module) -> list[str]:
    """The names --lora-targets can take: a short name that also names a grouped convolution somewhere
    (RegNet's `conv`) would be refused, so it is left out (the full paths of its adaptable layers stay)."""
    kinds = _adaptable()
    named = [(n, m) for n, m in module.named_modules() if n and isinstance(m, kinds)]
    blocked = {short_name(n) for n, m in named if not _can_adapt(m, kinds)}
    return sorted({short_name(n) if short_name(n) not in blocked else n for n, m in named if _can_adapt(m, kinds)})


def default_targets(inner: nn.Module) -> list[str]:
    """The query and value projections of `inner` by its family, or [] when none is known."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    names = set(_short_names(inner))
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    candidates = [PEFT_TARGETS[model_type]] if model_type in PEFT_TARGETS else []
    for targets in [*candidates, *FALLBACK_TARGETS]:
        if targets and all(t in names for t in targets):
            return list(targets)
    return []


def apply_lora(backbone, cfg) -> list[str]:
    """Inject adapters into `backbone.model` as `cfg` (StrategyConfig) says; return the adapted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    inner = backbone.model if hasattr(backbone, "model") else backbone
    targets = list(cfg.lora_targets) or default_targets(inner)
    available = _short_names(inner)
    if not targets:
        raise UserError(f"strategy lora needs --lora-targets for this backbone; module names that can be adapted: {', '.join(available[:30])}")
    kinds = _adaptable()
    names = [n for n, m in inner.named_modules() if n and _can_adapt(m, kinds)]

    def targeted(n: str) -> bool:
        return any(_matches(n, t) for t in targets)

    for t in targets:
        grouped = [n for n, m in inner.named_modules() if _matches(n, t) and isinstance(m, kinds) and not _can_adapt(m, kinds)]
        if grouped:  # PEFT failed with a ValueError traceback (rank not a multiple of the groups) and cannot merge them
            m = inner.get_submodule(grouped[0])
            kind = "a depthwise convolution" if m.groups == m.in_channels else "a grouped convolution"
            raise UserError(f"--lora-targets {t!r} names grouped convolutions ({grouped[0]}: groups={m.groups}, {kind}), "
                            f"which LoRA cannot adapt and merge; names that can be adapted: {', '.join(available[:30])}")
        if not any(_matches(n, t) for n in names):
            raise UserError(f"--lora-targets {t!r} matches no module of {backbone.spec.get('name')}; names that match: {', '.join(available[:30])}")
        other = [n for n, m in inner.named_modules() if _matches(n, t) and not isinstance(m, kinds)]
        if other:  # PEFT would try to adapt those too, and fail (`0` names conv1.0 and a Flatten at dense.0)
            raise UserError(f"--lora-targets {t!r} also matches {other[0]} ({type(inner.get_submodule(other[0])).__name__}), which LoRA cannot adapt; "
                            f"name the layers by path: {', '.join(available[:30])}")
    # A rank at or above a layer's smaller side is not low rank: the adapter then has as many
    # parameters as the update it stands for, or more (PEFT accepts it silently)
    for n, m in inner.named_modules():
        if targeted(n) and isinstance(m, kinds) and getattr(m, "weight", None) is not None:
            w = m.weight
            side = min(w.shape[0], w[0].numel())
            if cfg.lora_r >= side:
                raise UserError(f"--lora-r {cfg.lora_r} is not low rank for {n} ({' x '.join(map(str, w.shape))}): use a rank below {side} "
                                f"(LoRA's usual ranks are 4 to 64), or --strategy full to train the whole layer")
    # GPT-2's Conv1D stores its weight transposed; PEFT must be told (it would warn and correct it)
    transposed = any(type(m).__name__ == "Conv1D" for n, m in inner.named_modules() if targeted(n))
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, bias="none",
                        fan_in_fan_out=transposed)
    inject_adapter_in_model(config, inner)
    adapted = [n for n, m in inner.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    if not adapted:  # pragma: no cover - guarded above
        raise UserError(f"LoRA adapted no module for targets {targets}")
    return adapted


def merge_lora(backbone) -> int:
    """Fold every adapter into its base weight and put the plain layer back; returns how many."""
    inner = backbone.model if hasattr(backbone, "model") else backbone
    merged = 0
    for name, m in list(inner.named_modules()):
        if hasattr(m, "lora_A") and hasattr(m, "base_layer") and hasattr(m, "merge"):
            m.merge()
            parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
            setattr(parent, name.rsplit(".", 1)[-1], m.get_base_layer())
            merged += 1
    return merged
